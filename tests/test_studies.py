"""Real studies of real Keras trials, run through the CLI, checked in the SQLite storage: what
the Optuna backend does beyond the contract every backend keeps (test_backends.py)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.request
from datetime import datetime

import optuna
import pytest

from conftest import (
    TINY_SPACE,
    cli_command,
    cli_env,
    deep_update,
    interruptible,
    load,
    system_attrs,
    wait_for_running_trial,
)
from dlboost_search.errors import StudyError
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import create_or_check

pytestmark = pytest.mark.slow


def test_rerun_continues_to_the_target_and_resume_needs_no_yaml(write_space, storage, run_cli):
    space = str(write_space())
    assert run_cli("start", space, "--storage", storage, "--trials", "2", "-q").returncode == 0
    first = [t.params for t in load(storage).trials]

    result = run_cli("start", space, "--storage", storage, "--trials", "3", "-q")
    assert result.returncode == 0, result.stderr
    study = load(storage)
    assert [t.number for t in study.trials] == [0, 1, 2]
    assert [t.params for t in study.trials[:2]] == first  # nothing started over

    os.remove(space)  # resume works from the storage alone
    result = run_cli("resume", "tiny", "--storage", storage, "--trials", "4", "-q")
    assert result.returncode == 0, result.stderr
    assert len(load(storage).trials) == 4

    # A target already met starts no worker and adds nothing.
    assert run_cli("resume", "tiny", "--storage", storage, "--trials", "4", "-q").returncode == 0
    assert len(load(storage).trials) == 4


def test_a_different_space_under_the_same_name_is_refused(write_space, storage, run_cli):
    assert (
        run_cli(
            "start",
            str(
                write_space(),
            ),
            "--storage",
            storage,
            "--trials",
            "1",
            "-q",
        ).returncode
        == 0
    )
    changed = write_space("changed.yaml", training={"max_epochs": 7})

    result = run_cli("start", str(changed), "--storage", storage, "-q")

    assert result.returncode == 2
    assert "different search space" in result.stderr
    assert "training.max_epochs: 4 -> 7" in result.stderr
    assert f"resume tiny --storage {storage}" in result.stderr  # not the default storage
    assert "--study-name" in result.stderr
    study = load(storage)
    assert len(study.trials) == 1
    assert system_attrs(storage)["dlboost_search"]["space"]["training"]["max_epochs"] == 4
    # The suggested fix works: another name makes another study beside it.
    result = run_cli(
        "start", str(changed), "--storage", storage, "--study-name", "tiny-7", "--trials", "1", "-q"
    )
    assert result.returncode == 0, result.stderr
    assert sorted(optuna.get_all_study_names(storage)) == ["tiny", "tiny-7"]


def test_the_start_up_trials_may_change_between_runs(storage):
    # Studies made before the default became a share of the trials stored 20: starting them
    # again with the same YAML must not read as a changed space.
    before = deep_update(TINY_SPACE, {"search": {"startup_trials": 20}})
    create_or_check(space_from_dict(before, "test"), storage)
    create_or_check(space_from_dict(TINY_SPACE, "test"), storage)  # no StudyError
    with pytest.raises(StudyError, match=r"search.seed: 0 -> 3"):
        create_or_check(space_from_dict(deep_update(before, {"search": {"seed": 3}}), "t"), storage)


def test_the_halving_bootstrap_may_change_between_runs(storage):
    # It decides which trials go on, not what a trial's value means (like the start-up trials).
    halving = deep_update(TINY_SPACE, {"search": {"pruner": "successive_halving"}})
    create_or_check(space_from_dict(halving, "test"), storage)
    again = deep_update(halving, {"search": {"halving_bootstrap": 3}})
    create_or_check(space_from_dict(again, "test"), storage)  # no StudyError


def test_workers_are_recycled(write_space, storage, run_cli):
    space = write_space(search={"trials": 5})
    result = run_cli("start", str(space), "--storage", storage, "--recycle-every", "2", "-q")
    assert result.returncode == 0, result.stderr
    workers = [t.user_attrs["worker"] for t in load(storage).trials]
    assert len(workers) == 5
    assert len(set(workers)) == 3  # 2 + 2 + 1 trials
    # Recycled workers do not replay each other's random start-up points.
    assert len({json.dumps(t.params, sort_keys=True) for t in load(storage).trials}) == 5


def test_the_next_worker_starts_before_the_last_one_retires(write_space, storage, run_cli):
    """A standby successor imports TensorFlow while its predecessor still trains."""
    space = write_space(search={"trials": 8, "pruner": "none"})
    result = run_cli("start", str(space), "--storage", storage, "--recycle-every", "4", "-q")
    assert result.returncode == 0, result.stderr
    trials = load(storage).trials
    first, second = trials[:4], trials[4:]
    assert len({t.user_attrs["worker"] for t in first}) == 1
    assert len({t.user_attrs["worker"] for t in second}) == 1
    assert second[0].user_attrs["worker"] != first[0].user_attrs["worker"]
    successor_began = datetime.fromisoformat(second[0].user_attrs["worker_started"])
    assert successor_began < max(t.datetime_complete for t in first)
    assert max(t.datetime_complete for t in first) <= second[0].datetime_start  # one at a time


def test_start_serves_the_dashboard_beside_the_running_study(write_space, storage, tmp_path):
    space = write_space(training={"max_epochs": 400, "early_stopping": {"patience": 400}})
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage, "--dashboard", "0"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    url = process.stdout.readline().split(": ", 1)[1].strip()
    assert url.startswith("http://127.0.0.1:")
    wait_for_running_trial(storage)
    with urllib.request.urlopen(url.replace("/dashboard", "/api/studies"), timeout=10) as answer:
        summaries = json.load(answer)["study_summaries"]
    assert [s["study_name"] for s in summaries] == ["tiny"]
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=120)
    assert process.returncode == 130


def test_a_changed_data_file_is_refused_on_resume_unless_accepted(
    write_space, storage, run_cli, tmp_path
):
    """Trials scored on two versions of a file are not comparable: the study keeps the file's
    fingerprint, refuses to go on when it changed, and records it when told to go on."""
    rows = "\n".join(f"{i % 7},{(i * 3) % 11},{i % 5 + 0.5 * (i % 7)}" for i in range(60))
    (tmp_path / "d.csv").write_text("a,b,y\n" + rows + "\n")
    space = write_space(data={"path": "d.csv", "target": "y"}, search={"trials": 1})
    assert run_cli("start", str(space), "--storage", storage, "-q").returncode == 0
    with open(tmp_path / "d.csv", "a") as handle:
        handle.write("1,2,3.5\n")
    before = [(t.number, t.state) for t in load(storage).trials]
    refused = run_cli("resume", "tiny", "--storage", storage, "--trials", "2", "-q")
    assert refused.returncode == 2, refused.stderr
    assert "data.path" in refused.stderr and "d.csv" in refused.stderr
    assert "--accept-changed-data" in refused.stderr
    assert [(t.number, t.state) for t in load(storage).trials] == before
    accepted = run_cli("resume", "tiny", "--storage", storage, "--trials", "2", "-q",
                       "--accept-changed-data")  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    study = load(storage)
    assert len(study.trials) == 2
    (change,) = system_attrs(storage)["dlboost_data_changes"]
    assert change["before"]["path"] != change["after"]["path"]
    assert system_attrs(storage)["dlboost_data_sha256"] == change["after"]
    again = run_cli("resume", "tiny", "--storage", storage, "--trials", "2", "-q")
    assert again.returncode == 0, again.stderr  # the new file is the study's file now
