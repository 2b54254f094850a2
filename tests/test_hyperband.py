"""The Hyperband backend (hyperband.py): keras-tuner's schedule, every trial in the Optuna study;
what it shares with every backend is tested in test_backends.py."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import keras_tuner as kt
import pytest
import yaml

from conftest import TINY_SPACE, cli_command, cli_env, deep_update, load, worker_of
from dlboost_search.hyperband import hyperparameters, state_dir
from dlboost_search.spaces import distributions, load_space, space_from_dict
from dlboost_search.study import create_or_check

# max_epochs 3, factor 3: two brackets, six trials (three 1-epoch models, the best of them
# continued to epoch 3, two 3-epoch models).
HYPERBAND = {"training": {"max_epochs": 3}, "search": {"backend": "hyperband", "factor": 3}}
SCHEDULE = 6


def test_the_space_becomes_keras_tuner_hyperparameters():
    space = space_from_dict(
        deep_update(TINY_SPACE, {"params": {
            "units": {"type": "int", "low": 4, "high": 64, "log": True},
            "layers": {"type": "int", "low": 1, "high": 5, "step": 2},
            "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
            "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-1, "log": True},
            "optimizer": {"type": "categorical", "choices": ["adam", "sgd"]},
            "batch_norm": False,
        }}),
        "test",
    )  # fmt: skip
    hp = {p.name: p for p in hyperparameters(space).space}
    assert sorted(hp) == ["dropout", "layers", "learning_rate", "optimizer", "units"]  # not fixed
    assert isinstance(hp["units"], kt.engine.hyperparameters.Int)
    assert (hp["units"].min_value, hp["units"].max_value, hp["units"].sampling) == (4, 64, "log")
    assert (hp["layers"].step, hp["layers"].sampling) == (2, "linear")
    assert (hp["dropout"].max_value, hp["dropout"].step) == (0.5, 0.1)
    assert hp["learning_rate"].sampling == "log"
    assert hp["optimizer"].values == ["adam", "sgd"]


def test_choices_keras_tuner_cannot_take_are_refused_by_name(write_space, storage, run_cli):
    space = write_space(**deep_update(HYPERBAND, {
        "params": {**{k: v for k, v in TINY_SPACE["params"].items() if k != "clipvalue"},
                   "clipnorm": {"type": "categorical", "choices": [None, 1.0]}},
    }))  # fmt: skip
    refused = run_cli("start", str(space), "--storage", storage)
    assert refused.returncode == 2
    assert f"{space}: params.clipnorm.choices: keras-tuner" in refused.stderr
    assert "one type, without null" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(KeyError):  # refused before anything was stored
        load(storage)
    # The Optuna backend takes the same choices.
    assert space_from_dict(deep_update(yaml.safe_load(space.read_text()),
                                       {"search": {"backend": "optuna"}}), "test")  # fmt: skip


@pytest.mark.slow
def test_every_keras_tuner_trial_lands_in_the_study(write_space, storage, run_cli, tmp_path):
    done = run_cli("start", str(write_space(**HYPERBAND)), "--storage", storage)
    assert done.returncode == 0, done.stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert [t.state.name for t in trials] == ["COMPLETE"] * SCHEDULE
    assert sorted(int(t.user_attrs["hyperband_trial"]) for t in trials) == list(range(SCHEDULE))
    space = space_from_dict(deep_update(TINY_SPACE, HYPERBAND), "test")
    for t in trials:
        assert t.distributions == distributions(space)
        assert t.value == min(t.intermediate_values.values())
        assert {"bracket", "round", "engine", "epochs_trained"} <= set(t.user_attrs)
    # The promoted configuration trains epochs 2-3 from its parent's best weights.
    (continued,) = [t for t in trials if t.user_attrs["continues"] is not None]
    by_id = {t.user_attrs["hyperband_trial"]: t for t in trials}
    parent = by_id[continued.user_attrs["continues"]]
    assert continued.params == parent.params
    assert parent.value == min(t.value for t in trials if t.user_attrs["round"] == 0
                               and t.user_attrs["bracket"] == 1)  # fmt: skip
    assert sorted(continued.intermediate_values) == [1, 2]
    assert continued.user_attrs["initial_epoch"] == 1
    assert state_dir(storage, "tiny").is_dir()
    assert state_dir(storage, "tiny").parent == tmp_path  # beside the SQLite file
    # What reads the study works the same as for the Optuna backend.
    assert run_cli("report", "tiny", "--storage", storage, "--out", "r.html").returncode == 0
    best = run_cli("best", "tiny", "--storage", storage)
    assert best.returncode == 0, best.stderr
    shown = re.search(r"best val_loss (\S+) \(trial (\d+)\)", best.stdout)
    best_trial = min(trials, key=lambda t: t.value)
    assert float(shown[1]) == pytest.approx(best_trial.value, rel=1e-5)
    assert int(shown[2]) == best_trial.number
    # Run again: the schedule is done, nothing is added twice.
    again = run_cli("start", str(write_space(**HYPERBAND)), "--storage", storage)
    assert again.returncode == 0, again.stderr
    assert len(load(storage).get_trials(deepcopy=False)) == SCHEDULE
    # Elsewhere (here: the state folder moved away), a new schedule would reuse the trial ids.
    state_dir(storage, "tiny").rename(tmp_path / "moved")
    elsewhere = run_cli("resume", "tiny", "--storage", storage)
    assert elsewhere.returncode == 2, elsewhere.stderr
    assert "keras-tuner's state for it is not" in elsewhere.stderr
    assert len(load(storage).get_trials(deepcopy=False)) == SCHEDULE


@pytest.mark.slow
def test_a_killed_worker_is_replaced_and_keras_tuner_runs_its_trial_again(
    write_space, storage, tmp_path
):
    process = subprocess.Popen(
        cli_command("start", str(write_space(**HYPERBAND)), "--storage", storage, "-q"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:  # two trials done: the worker is in its third
        try:
            if len(load(storage).get_trials(deepcopy=False)) >= 2:
                break
        except KeyError:  # not created yet
            pass
        time.sleep(0.2)
    os.kill(worker_of(process.pid), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)

    assert process.returncode == 0, stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert sorted(int(t.user_attrs["hyperband_trial"]) for t in trials) == list(range(SCHEDULE))
    assert all(t.state.name == "COMPLETE" for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2  # the killed one and its successor


def test_hyperband_takes_one_worker(write_space, storage, run_cli):
    refused = run_cli("start", str(write_space(**HYPERBAND)), "--storage", storage, "-w", "2")
    assert refused.returncode == 2
    assert "one worker" in refused.stderr and "Traceback" not in refused.stderr
    with pytest.raises(KeyError):  # refused before the study was created
        load(storage)


def test_trials_from_the_command_line_are_refused_not_ignored(write_space, storage, run_cli):
    """keras-tuner's schedule sets the trials: a --trials that could not bound it is refused."""
    space = write_space(**HYPERBAND)
    refused = run_cli("start", str(space), "--storage", storage, "--trials", "3")
    assert refused.returncode == 2, refused.stderr
    assert "--trials 3 would not bound it" in refused.stderr and "--timeout" in refused.stderr
    with pytest.raises(KeyError):  # refused before the study was created
        load(storage)
    create_or_check(load_space(str(space)), storage)
    refused = run_cli("resume", "tiny", "--storage", storage, "--trials", "3")
    assert refused.returncode == 2 and "schedule sets the number of trials" in refused.stderr
    assert load(storage).get_trials(deepcopy=False) == []


@pytest.mark.slow
def test_two_sqlite_files_side_by_side_never_share_a_schedule(write_space, tmp_path, run_cli):
    """keras-tuner's state folder is named by the study: a same-named study in another SQLite
    file of the folder used to reload the first one's finished schedule and copy its trials
    as its own, untrained. It is refused, and deleting it leaves the first one's state."""
    space = write_space(**HYPERBAND)
    first, second = (f"sqlite:///{tmp_path / name}" for name in ("first.db", "second.db"))
    assert run_cli("start", str(space), "--storage", first, "-q").returncode == 0
    trials = [(t.number, t.value) for t in load(first).trials]
    refused = run_cli("start", str(space), "--storage", second)
    assert refused.returncode == 2, refused.stderr
    assert "belongs to another study named 'tiny'" in refused.stderr
    assert "Traceback" not in refused.stderr
    with pytest.raises(KeyError):  # the study start made for it was not kept
        load(second)
    assert (state_dir(first, "tiny") / "hyperband" / "oracle.json").is_file()
    assert [(t.number, t.value) for t in load(first).trials] == trials
    # The first study goes on with its own state, which deleting it removes.
    assert run_cli("resume", "tiny", "--storage", first, "-q").returncode == 0
    assert run_cli("delete", "tiny", "--storage", first, "--yes").returncode == 0
    assert not state_dir(first, "tiny").exists()
