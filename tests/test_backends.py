"""The backend contract: every backend in runner.BACKENDS gives a study the same behaviour, so
each case here runs against each of them. Where a backend legitimately differs, the case
says so in its `Backend` entry or skips with the reason."""

from __future__ import annotations

import math
import signal
import subprocess
import time
from dataclasses import dataclass, field
from typing import Any

import optuna_dashboard
import pytest
from optuna.trial import TrialState

from conftest import (
    TINY_SPACE,
    cli_command,
    cli_env,
    deep_update,
    interruptible,
    load,
    states,
    system_attrs,
)
from dlboost_search import records
from dlboost_search.runner import BACKENDS

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Backend:
    name: str
    changes: dict[str, Any]  # what the tiny space needs to run on this backend
    target: int  # finished trials a study of the tiny space ends with
    # Changes that keep a study running long enough to interrupt it, and its target then.
    long_run: dict[str, Any]
    long_target: int
    # keras-tuner's trials land in the study only once finished: an interrupted one leaves
    # nothing to close, and runs again from its start on resume.
    stores_running_trials: bool = True
    # Changes that give a study far more trials than a few seconds run, and its target then.
    endless: dict[str, Any] = field(default_factory=dict)
    endless_target: int = 0
    # Optuna's target counts finished trials, so a failed one is replaced; a failed trial
    # in a Hyperband schedule is not, and its bracket promotes fewer.
    failed_trials_are_replaced: bool = True
    params: set[str] = field(default_factory=lambda: {"units", "learning_rate", "dropout",
                                                       "l2", "clipvalue"})  # fmt: skip


CASES = {
    "optuna": Backend(
        "optuna",
        {"search": {"trials": 3}},
        target=3,
        long_run={
            "training": {"max_epochs": 400, "early_stopping": {"patience": 400}},
            "search": {"trials": 1, "pruner": "none"},
        },
        long_target=1,
        endless={"search": {"trials": 1000}},
        endless_target=1000,
    ),
    # max_epochs 3, factor 3: two brackets, six trials (three 1-epoch models, the best of
    # them continued to epoch 3, two 3-epoch models).
    "hyperband": Backend(
        "hyperband",
        {"training": {"max_epochs": 3}, "search": {"backend": "hyperband", "factor": 3}},
        target=6,
        long_run={},  # six trials: the interrupt comes after the second
        long_target=6,
        endless={"search": {"hyperband_iterations": 50}},
        endless_target=300,
        stores_running_trials=False,
        failed_trials_are_replaced=False,
    ),
}


def test_every_backend_is_under_contract():
    assert set(CASES) == set(BACKENDS)


@pytest.fixture(params=sorted(CASES))
def backend(request) -> Backend:
    return CASES[request.param]


def diverging(backend: Backend, learning_rates: Any, **search: Any) -> dict[str, Any]:
    """Changes for a space whose learning rate 10 (sgd) turns the loss to NaN at once; the
    other parameters still vary (keras-tuner ends a search once it finds no new point)."""
    params = {
        **TINY_SPACE["params"],
        "learning_rate": learning_rates,
        "units": 64,
        "optimizer": "sgd",
        "clipvalue": None,
    }
    return deep_update(backend.changes, {"params": params, "search": search})


def test_trials_record_what_they_did_and_the_same_seed_repeats_them(
    backend, write_space, tmp_path, run_cli
):
    # One study run twice, apart (keras-tuner's state lives beside the database).
    space = str(write_space(**deep_update(backend.changes, {"search": {"pruner": "none"}})))
    runs = []
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
        url = f"sqlite:///{tmp_path / name / 'studies.db'}"
        result = run_cli("start", space, "--storage", url)
        assert result.returncode == 0, result.stderr
        assert "best val_loss" in result.stdout
        assert "oneDNN" not in result.stderr  # TensorFlow's start-up chatter stays out
        runs.append(load(url))
    study, again = runs

    trials = study.get_trials(deepcopy=False)
    assert len(trials) == backend.target
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert system_attrs(url)["dlboost_search"]["space"]["name"] == "tiny"
    for trial in trials:
        assert set(trial.params) == backend.params
        assert trial.user_attrs["epochs_trained"] == len(trial.intermediate_values) >= 1
        assert trial.user_attrs["n_params"] > 0
        # What the model costs (limits.py): float32 weights, and a one-row prediction timed.
        assert trial.user_attrs["size_mb"] == pytest.approx(4e-6 * trial.user_attrs["n_params"])
        assert trial.user_attrs["latency_ms"] > 0
        assert trial.user_attrs["train_seconds"] > 0
        assert trial.user_attrs["engine"] == "epoch_loop"
        assert trial.user_attrs["worker"]
        # The objective is the best epoch's value (early stopping restores it).
        assert trial.value == pytest.approx(min(trial.intermediate_values.values()))
        first_epoch = min(trial.intermediate_values)
        best_epoch = first_epoch + trial.user_attrs["best_epoch"] - 1
        assert trial.intermediate_values[best_epoch] == pytest.approx(trial.value)
    # The run ends by publishing its report into the dashboard.
    assert f"**Best val_loss: {study.best_value:.6g}**" in optuna_dashboard.get_note(study)

    repeated = again.get_trials(deepcopy=False)
    assert [t.params for t in trials] == [t.params for t in repeated]
    assert [t.value for t in trials] == pytest.approx([t.value for t in repeated], rel=1e-4)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_closes_the_running_trial_and_resume_reaches_the_target(
    backend, write_space, storage, tmp_path, signum
):
    space = write_space(**deep_update(backend.changes, backend.long_run))
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    trained = wait_for_an_epoch(storage, process, stored=backend.stores_running_trials)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)

    assert process.returncode == 130, stderr
    assert "resume tiny" in stderr
    study = load(storage)
    assert TrialState.RUNNING.name not in states(study)
    if backend.stores_running_trials:
        interrupted = study.trials[trained]
        assert interrupted.state == TrialState.FAIL
        assert "interrupted" in interrupted.user_attrs["fail_reason"]
        # Its record is complete although it stopped mid-way.
        assert interrupted.user_attrs["epochs_trained"] >= 1
        assert interrupted.user_attrs["train_seconds"] > 0
    stopped_at = len(study.trials)

    result = subprocess.run(
        cli_command("resume", "tiny", "--storage", storage, "-q"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Reloading Tuner" not in result.stdout  # keras-tuner's own print stays out
    study = load(storage)
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == backend.long_target
    assert len(study.trials) >= stopped_at  # nothing stored was lost


def test_a_time_budget_stops_the_search_and_resume_goes_on_with_what_is_left(
    backend, write_space, storage, run_cli
):
    changes = deep_update(backend.endless, {"search": {"timeout": "20s"}})
    space = write_space(**deep_update(backend.changes, changes))
    result = run_cli("start", str(space), "--storage", storage)

    assert result.returncode == 0, result.stderr
    assert "time budget spent" in result.stdout
    study = load(storage)
    assert TrialState.RUNNING.name not in states(study)  # the running trials finished
    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) < backend.endless_target
    assert study.user_attrs[records.TIMEOUT] == 20
    searched = study.user_attrs[records.SEARCHED_SECONDS]
    assert searched >= 20  # it stopped only once the budget was spent
    trials = len(study.trials)

    # Spent: resume says so and how to extend it, and starts nothing.
    result = run_cli("resume", "tiny", "--storage", storage)
    assert result.returncode == 0, result.stderr
    assert "time budget spent" in result.stdout
    assert "resume tiny --timeout" in result.stdout
    assert len(load(storage).trials) == trials

    # A larger total: it goes on from the time already searched, to the new budget.
    budget = math.ceil(searched) + 20
    result = run_cli("resume", "tiny", "--storage", storage, "--timeout", f"{budget}s", "-q")
    assert result.returncode == 0, result.stderr
    study = load(storage)
    assert study.user_attrs[records.TIMEOUT] == budget
    assert study.user_attrs[records.SEARCHED_SECONDS] >= budget
    assert len(study.trials) >= trials  # nothing stored was lost
    assert TrialState.RUNNING.name not in states(study)


def wait_for_an_epoch(url: str, process: subprocess.Popen, stored: bool, timeout=240) -> int:
    """Wait until a trial has trained an epoch; return its number (a running trial's when
    the backend stores running trials, else the number of trials already finished)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, process.communicate()[1]
        try:
            trials = load(url).get_trials(deepcopy=False)
        except KeyError:  # the study is not created yet
            trials = []
        if stored:
            running = [t for t in trials if t.state == TrialState.RUNNING]
            if running and running[0].intermediate_values:
                return running[0].number
        elif len(trials) >= 2:  # a third trial is under way
            return len(trials)
        time.sleep(0.2)
    raise AssertionError("no trial trained an epoch in time")


def test_a_nan_trial_fails_and_the_search_goes_on(backend, write_space, storage, run_cli):
    space = write_space(
        **diverging(
            backend,
            {"type": "categorical", "choices": [10.0, 0.001]},
            sampler="random", seed=1, max_consecutive_failures=10,
        )
    )  # fmt: skip
    result = run_cli("start", str(space), "--storage", storage)
    assert result.returncode == 0, result.stderr

    study = load(storage)
    failed = study.get_trials(states=(TrialState.FAIL,))
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert failed and any(t.state == TrialState.COMPLETE for t in finished)
    if backend.failed_trials_are_replaced:
        assert len(finished) == backend.target
    assert all(t.params["learning_rate"] == 10.0 for t in failed)
    assert all("became nan" in t.user_attrs["fail_reason"] for t in failed)


def test_failures_in_a_row_stop_the_search_with_exit_4(backend, write_space, storage, run_cli):
    space = write_space(**diverging(backend, 10.0, trials=5, max_consecutive_failures=2))
    result = run_cli("start", str(space), "--storage", storage, "-q")

    assert result.returncode == 4, result.stderr
    assert "failed in a row" in result.stderr
    assert "loss became nan" in result.stderr
    assert "Traceback" not in result.stderr
    assert states(load(storage)) == ["FAIL", "FAIL"]


HANGS_ONCE = """
import os
import time

import keras

calls = 0


def build(params, input_shape, task, n_outputs):
    # In each process the first call is the check before any trial, the second the first
    # trial's. The study's first trial hangs; a file remembers it across processes.
    global calls
    calls += 1
    if calls == 2 and not os.path.exists("hung"):
        open("hung", "w").close()
        time.sleep(600)
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Dense(params["units"], activation="relu")(inputs)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(x))
"""


def test_a_trial_past_its_time_limit_fails_and_fresh_workers_go_on(
    backend, write_space, storage, run_cli, tmp_path
):
    (tmp_path / "hangs.py").write_text(HANGS_ONCE)
    space = write_space(
        **deep_update(
            backend.changes,
            {
                "model": {"family": "custom", "builder": "hangs:build"},
                "params": {
                    "units": {"type": "int", "low": 4, "high": 16},
                    "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
                },
                "training": {"trial_timeout_seconds": 10},
            },
        )
    )
    result = run_cli("start", str(space), "--storage", storage, "--recycle-every", "2", "-q")

    assert result.returncode == 0, result.stderr
    trials = load(storage).get_trials(deepcopy=False)
    (failed,) = [t for t in trials if t.state == TrialState.FAIL]
    reason = failed.user_attrs["fail_reason"]
    assert "still running after training.trial_timeout_seconds (10 s)" in reason
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert finished
    if backend.failed_trials_are_replaced:
        assert len(finished) == backend.target
    # Workers retire after two trials: the finished ones ran in more than one process.
    assert len({t.user_attrs["worker"] for t in finished}) >= 2
