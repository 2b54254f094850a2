"""Moving studies between storages (export / import) and merging two copies of one study,
between SQLite, PostgreSQL and MariaDB; and a storage written by another Optuna version."""

from __future__ import annotations

import json
import sqlite3

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from conftest import TINY_SPACE, call_wsgi, load, states, system_attrs
from dlboost_search.dashboard import dashboard_app
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import set_target
from dlboost_search.testing import synthetic_study


@pytest.fixture
def space():
    return space_from_dict(TINY_SPACE, "test")


def fingerprint(trial: optuna.trial.FrozenTrial) -> tuple:
    started = trial.datetime_start.replace(microsecond=0)  # MySQL keeps whole seconds
    return (trial.number, trial.state, trial.value, trial.params, trial.intermediate_values,
            trial.user_attrs, started)  # fmt: skip


def test_export_copies_everything_and_leaves_the_source_alone(space, storage, any_storage, run_cli):
    source = synthetic_study(space, storage, 30, seed=3)
    set_target(source, 42)
    optuna_dashboard.save_note(source, "# the report")
    before = [fingerprint(t) for t in source.get_trials(deepcopy=False)]
    result = run_cli("export", "tiny", "--storage", storage, "--to", any_storage)
    assert result.returncode == 0, result.stderr
    assert "copied study 'tiny' (30 trials)" in result.stdout
    copy = load(any_storage)
    assert [fingerprint(t) for t in copy.get_trials(deepcopy=False)] == before
    assert copy.user_attrs == source.user_attrs  # the target (42)
    # The stored space, and the notes optuna-dashboard keeps, are study system attributes.
    copied_attrs = system_attrs(any_storage)
    assert copied_attrs == system_attrs(storage)
    assert copied_attrs["dlboost_search"]["space"]["name"] == "tiny"
    assert "# the report" in "".join(str(v) for v in copied_attrs.values())
    assert [fingerprint(t) for t in load(storage).get_trials(deepcopy=False)] == before


def test_import_is_export_seen_from_the_destination(space, storage, tmp_path, run_cli):
    elsewhere = f"sqlite:///{tmp_path / 'laptop.db'}"
    synthetic_study(space, elsewhere, 5)
    result = run_cli("import", "tiny", "--from", elsewhere, "--storage", storage, "--as", "home")
    assert result.returncode == 0, result.stderr
    assert len(load(storage, "home").trials) == 5


def test_a_running_trial_is_closed_in_the_copy_only(space, storage, tmp_path, run_cli):
    source = synthetic_study(space, storage, 3)
    running = source.ask()
    destination = f"sqlite:///{tmp_path / 'copy.db'}"
    result = run_cli("export", "tiny", "--storage", storage, "--to", destination)
    assert result.returncode == 0, result.stderr
    copied = load(destination).trials[running.number]
    assert copied.state == TrialState.FAIL
    assert "was running in sqlite:///" in copied.user_attrs["fail_reason"]
    assert load(storage).trials[running.number].state == TrialState.RUNNING


def test_a_copy_never_overwrites_a_study(space, storage, tmp_path, run_cli):
    destination = f"sqlite:///{tmp_path / 'copy.db'}"
    synthetic_study(space, storage, 3)
    synthetic_study(space, destination, 2)
    result = run_cli("export", "tiny", "--storage", storage, "--to", destination)
    assert result.returncode == 2
    assert "already has a study named 'tiny'; nothing was copied" in result.stderr
    assert "--as" in result.stderr and "Traceback" not in result.stderr
    assert len(load(destination).trials) == 2


def test_exporting_a_missing_study_names_the_ones_there(space, storage, tmp_path, run_cli):
    synthetic_study(space, storage, 1)
    result = run_cli("export", "nope", "--storage", storage, "--to", f"sqlite:///{tmp_path}/x.db")
    assert result.returncode == 2
    assert "no study named 'nope'" in result.stderr and "tiny" in result.stderr


def test_merge_adds_each_trial_once(space, storage, any_storage, run_cli):
    synthetic_study(space, storage, 10, seed=1)
    assert run_cli("export", "tiny", "--storage", storage, "--to", any_storage).returncode == 0
    # The two copies go on apart: 4 more trials here, 6 there.
    synthetic_study(space, storage, 4, seed=2)
    synthetic_study(space, any_storage, 6, seed=3)
    result = run_cli("merge", "tiny", "--from", any_storage, "--storage", storage)
    assert result.returncode == 0, result.stderr
    assert "6 trials added, 10 already there" in result.stdout
    merged = load(storage).get_trials(deepcopy=False)
    assert len(merged) == 20
    assert len({(t.datetime_start, str(t.params)) for t in merged}) == 20
    result = run_cli("merge", "tiny", "--from", any_storage, "--storage", storage)
    assert "0 trials added, 16 already there" in result.stdout
    assert len(load(storage).trials) == 20


def dashboard_note(url: str, name: str) -> str:
    """The study's note as optuna-dashboard serves it."""
    app = dashboard_app(url, None)
    listed = json.loads(call_wsgi(app, "/api/studies")[2])["study_summaries"]
    study_id = next(s["study_id"] for s in listed if s["study_name"] == name)
    return json.loads(call_wsgi(app, f"/api/studies/{study_id}")[2])["note"]["body"]


def test_merge_takes_a_copy_import_renamed_and_writes_its_note_again(
    space, storage, tmp_path, run_cli
):
    laptop = f"sqlite:///{tmp_path / 'laptop.db'}"
    synthetic_study(space, laptop, 10, seed=1)
    imported = run_cli("import", "tiny", "--from", laptop, "--storage", storage, "--as", "home")
    assert imported.returncode == 0, imported.stderr
    published = run_cli("report", "home", "--storage", storage, "--format", "md", "--publish")
    assert published.returncode == 0, published.stderr
    before = dashboard_note(storage, "home")
    synthetic_study(space, laptop, 5, seed=2)  # the laptop goes on
    result = run_cli("merge", "tiny", "--from", laptop, "--storage", storage, "--as", "home")
    assert result.returncode == 0, result.stderr
    assert "into 'home' in sqlite:///" in result.stdout
    assert "5 trials added, 10 already there" in result.stdout
    assert "dashboard note now reports the merged study" in result.stdout
    merged = states(load(storage, "home"))
    assert len(merged) == 15
    counts = (merged.count("COMPLETE"), merged.count("PRUNED"), merged.count("FAIL"))
    note = dashboard_note(storage, "home")
    assert "Trials: {} complete, {} pruned, {} failed".format(*counts) in note
    assert note != before


def test_merge_names_the_copy_it_lacks_and_refuses_a_study_that_is_no_copy(
    space, storage, tmp_path, run_cli
):
    laptop = f"sqlite:///{tmp_path / 'laptop.db'}"
    synthetic_study(space, laptop, 3)
    run_cli("import", "tiny", "--from", laptop, "--storage", storage, "--as", "home")
    result = run_cli("merge", "tiny", "--from", laptop, "--storage", storage)
    assert result.returncode == 2
    assert "no study named 'tiny'" in result.stderr and "(studies there: home)" in result.stderr
    assert "pass it with --as" in result.stderr and "Traceback" not in result.stderr
    # A study of another space, under the name given, is no copy of this one.
    seeded = {**TINY_SPACE, "name": "other", "search": {**TINY_SPACE["search"], "seed": 7}}
    synthetic_study(space_from_dict(seeded, "t"), storage, 2)
    result = run_cli("merge", "tiny", "--from", laptop, "--storage", storage, "--as", "other")
    assert result.returncode == 2
    assert "study 'other' in sqlite:///" in result.stderr and "study 'tiny' in" in result.stderr
    assert "search.seed: 7 -> 0" in result.stderr
    assert "not copies of one study; nothing was merged" in result.stderr
    assert len(load(storage, "other").trials) == 2
    assert len(load(storage, "home").trials) == 3


def test_merging_studies_of_different_spaces_is_refused(space, storage, tmp_path, run_cli):
    other = f"sqlite:///{tmp_path / 'other.db'}"
    synthetic_study(space, storage, 3)
    wider = space_from_dict({**TINY_SPACE, "search": {**TINY_SPACE["search"], "seed": 7}}, "t")
    synthetic_study(wider, other, 3)
    result = run_cli("merge", "tiny", "--from", other, "--storage", storage)
    assert result.returncode == 2
    assert "different search spaces (search.seed: 0 -> 7)" in result.stderr
    assert "nothing was merged" in result.stderr
    assert len(load(storage).trials) == 3


def test_a_storage_of_another_optuna_version_is_refused_untouched(space, tmp_path, run_cli):
    path = tmp_path / "old.db"
    url = f"sqlite:///{path}"
    synthetic_study(space, url, 2)
    with sqlite3.connect(path) as connection:  # as an Optuna 3.0 storage would read
        connection.execute("UPDATE alembic_version SET version_num = 'v3.0.0.a'")
    with sqlite3.connect(path) as connection:
        before = list(connection.iterdump())
    result = run_cli("status", "--storage", url)
    assert result.returncode == 3
    assert "written by another Optuna version" in result.stderr
    assert "optuna storage upgrade" in result.stderr and "Traceback" not in result.stderr
    with sqlite3.connect(path) as connection:
        assert list(connection.iterdump()) == before


@pytest.mark.slow
def test_an_exported_study_resumes_in_its_new_storage(write_space, storage, any_storage, run_cli):
    result = run_cli("start", str(write_space(search={"trials": 2})), "--storage", storage, "-q")
    assert result.returncode == 0, result.stderr
    assert run_cli("export", "tiny", "--storage", storage, "--to", any_storage).returncode == 0
    result = run_cli("resume", "tiny", "--storage", any_storage, "--trials", "3", "-q")
    assert result.returncode == 0, result.stderr
    assert (
        states(load(any_storage)).count("COMPLETE") + states(load(any_storage)).count("PRUNED") == 3
    )
    assert len(load(storage).trials) == 2  # the source is untouched
