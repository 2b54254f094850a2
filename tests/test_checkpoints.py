"""Mid-trial checkpoints (training.checkpoint_every): a trial whose worker is killed goes on
from its last checkpoint, on either backend, and ends as the uninterrupted run does."""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import time

import pytest
from optuna.trial import TrialState

from conftest import cli_command, cli_env, interruptible, load, worker_of
from dlboost_search.hyperband import state_dir
from dlboost_search.storage import models_dir

pytestmark = pytest.mark.slow

# One fixed configuration, dropout included (its random state must carry over), trained long
# enough to be killed in the middle: 300 epochs of about 20 ms, a checkpoint every 10.
FIXED = {"units": 16, "layers": 2, "learning_rate": 0.003, "dropout": 0.2, "l2": 1e-4,
         "clipvalue": 1.0}  # fmt: skip
LONG = {
    "max_epochs": 300,
    "batch_size": 16,
    "early_stopping": {"patience": 300},
    "checkpoint_every": 10,
}


def start(space, url, cwd) -> subprocess.Popen:
    return subprocess.Popen(
        cli_command("start", str(space), "--storage", url, "-q"),
        cwd=cwd, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def run_uninterrupted(space, tmp_path) -> str:
    """The same space run to its end, the reference: in a folder of its own, since
    keras-tuner's state goes beside the SQLite file, named by the study. Its storage URL."""
    folder = tmp_path / "reference"
    folder.mkdir()
    url = f"sqlite:///{folder / 'studies.db'}"
    done = subprocess.run(
        cli_command("start", str(space), "--storage", url, "-q"),
        cwd=folder, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return url


def wait_for(condition, process: subprocess.Popen) -> None:
    """Until `condition()` holds, while `process` runs."""
    deadline = time.monotonic() + 240
    while not condition():
        assert time.monotonic() < deadline and process.poll() is None, "no checkpoint in time"
        time.sleep(0.02)


def checkpoint_of(url: str, number: int) -> dict | None:
    try:
        trials = load(url).get_trials(deepcopy=False)
    except KeyError:  # the study is not created yet
        return None
    if len(trials) <= number:
        return None
    return trials[number].system_attrs.get("dlboost_checkpoint")


def test_a_killed_workers_trial_goes_on_from_its_checkpoint(write_space, tmp_path):
    space = write_space(training=LONG, search={"pruner": "none", "trials": 1}, params=FIXED)
    reference = run_uninterrupted(space, tmp_path)
    (uninterrupted,) = load(reference).get_trials(deepcopy=False)
    assert "resumed_from_epoch" not in uninterrupted.user_attrs or (
        uninterrupted.user_attrs["resumed_from_epoch"] is None
    )

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    process = start(space, url, tmp_path)
    wait_for(lambda: (checkpoint_of(url, 0) or {}).get("epoch", 0) >= 50, process)
    lost = load(url).trials[0]
    os.kill(int(lost.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr

    trials = load(url).get_trials(deepcopy=False)
    assert trials[0].state == TrialState.FAIL
    assert 0 < len(trials[0].intermediate_values) < 300  # killed in the middle
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == 0]
    resumed_from = retry.user_attrs["resume_from"]["epoch"]
    assert resumed_from >= 50 and resumed_from % 10 == 0
    assert retry.user_attrs["resumed_from_epoch"] == resumed_from
    assert retry.state == TrialState.COMPLETE
    # The epochs before the checkpoint are the lost trial's; the rest were trained again from
    # its state, and are the uninterrupted run's: the epoch loop's shuffle depends on the
    # epoch alone, so to float rounding (1e-5 relative).
    assert retry.intermediate_values == {
        epoch: trials[0].intermediate_values[epoch] for epoch in range(resumed_from)
    } | {epoch: retry.intermediate_values[epoch] for epoch in range(resumed_from, 300)}
    assert sorted(retry.intermediate_values) == list(range(300))
    for epoch, value in uninterrupted.intermediate_values.items():
        assert retry.intermediate_values[epoch] == pytest.approx(value, rel=1e-5), epoch
    assert retry.value == pytest.approx(uninterrupted.value, rel=1e-5)
    assert retry.user_attrs["epochs_trained"] == 300
    # No checkpoint outlives the trials that needed it; the retry's model is kept.
    store = models_dir(url)
    assert not [p.name for p in store.iterdir() if "checkpoint" in p.name]
    assert "dlboost_checkpoint" not in retry.system_attrs


HYPERBAND_LONG = {
    # max_epochs 4, factor 3: three 2-epoch models, the best continued to epoch 4, and two
    # 4-epoch models. One row per step makes an epoch last about 0.3 s, so a 4-epoch model
    # can be killed after its first checkpoint, before its last epoch.
    "training": {"max_epochs": 4, "batch_size": 1, "early_stopping": {"patience": 4},
                 "checkpoint_every": 1},
    "search": {"backend": "hyperband", "factor": 3},
}  # fmt: skip


def test_a_killed_hyperband_workers_trial_goes_on_from_its_checkpoint(write_space, tmp_path):
    space = write_space(**HYPERBAND_LONG)
    reference = run_uninterrupted(space, tmp_path)
    expected = {t.user_attrs["hyperband_trial"]: t for t in load(reference).trials}
    # The first model trained 4 epochs from scratch: killed after its first checkpoint.
    killed_id = min(
        kt_id for kt_id, t in expected.items()
        if t.user_attrs["initial_epoch"] == 0 and t.user_attrs["epochs_trained"] == 4
    )  # fmt: skip

    url = f"sqlite:///{tmp_path / 'studies.db'}"
    process = start(space, url, tmp_path)
    checkpoint = state_dir(url, "tiny") / "checkpoints" / f"trial-{killed_id}.npz"
    wait_for(checkpoint.is_file, process)
    os.kill(worker_of(process.pid), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr

    trials = {t.user_attrs["hyperband_trial"]: t for t in load(url).trials}
    assert sorted(trials) == sorted(expected)
    resumed = trials[killed_id]
    assert resumed.state == TrialState.COMPLETE
    assert 1 <= resumed.user_attrs["resumed_from_epoch"] < 4
    # Every trial, the resumed one included, ends as in the uninterrupted run.
    for kt_id, trial in trials.items():
        want = expected[kt_id]
        assert trial.value == pytest.approx(want.value, rel=1e-5), kt_id
        assert sorted(trial.intermediate_values) == sorted(want.intermediate_values), kt_id
        for epoch, value in want.intermediate_values.items():
            assert trial.intermediate_values[epoch] == pytest.approx(value, rel=1e-5), kt_id
    assert not list(checkpoint.parent.iterdir())  # each deleted once its trial was copied


def test_a_trial_stopped_by_ctrl_c_after_a_checkpoint_goes_on_at_resume(
    write_space, storage, tmp_path, run_cli
):
    """Ctrl-C, or the SIGTERM of a pre-empted machine: the trial is closed as interrupted,
    and, having a checkpoint, queued to go on from it at the next run."""
    space = write_space(training=LONG, search={"pruner": "none", "trials": 1}, params=FIXED)
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage, "-q"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    wait_for(lambda: (checkpoint_of(storage, 0) or {}).get("epoch", 0) >= 20, process)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert "1 running trial(s) closed as failed (1 of them will go on from a mid-trial" in stderr
    stopped, queued = load(storage).get_trials(deepcopy=False)
    assert stopped.state == TrialState.FAIL and "interrupted" in stopped.user_attrs["fail_reason"]
    assert queued.state == TrialState.WAITING
    assert queued.user_attrs["resume_from"] == stopped.system_attrs["dlboost_checkpoint"]

    assert run_cli("resume", "tiny", "--storage", storage, "-q").returncode == 0
    _, resumed = load(storage).get_trials(deepcopy=False)
    assert resumed.state == TrialState.COMPLETE
    assert resumed.user_attrs["resumed_from_epoch"] == queued.user_attrs["resume_from"]["epoch"]
    assert sorted(resumed.intermediate_values) == list(range(300))
    assert not [p.name for p in models_dir(storage).iterdir() if "checkpoint" in p.name]


def test_checkpoints_no_trial_will_go_on_from_are_deleted(storage, tmp_path):
    """What `discard` keeps: only checkpoints a queued or running retry may still need."""
    import datetime

    import optuna
    from optuna.artifacts import FileSystemArtifactStore

    from dlboost_search.artifacts import Checkpoints

    (tmp_path / "store").mkdir()
    store = FileSystemArtifactStore(tmp_path / "store")
    for name in "abcde":
        store.write(f"checkpoint-{name}", io.BytesIO(b"state"))
    study = optuna.create_study(study_name="tiny", storage=storage)
    long_ago = datetime.datetime.now() - datetime.timedelta(minutes=5)

    def add(state, own, resumed=None, ended=long_ago):
        trial = optuna.trial.create_trial(
            state=state, value=0.5 if state == TrialState.COMPLETE else None,
            system_attrs={"dlboost_checkpoint": {"artifact_id": f"checkpoint-{own}", "epoch": 5}},
            user_attrs={"resume_from": {"artifact_id": f"checkpoint-{resumed}", "epoch": 5}}
            if resumed else {},
        )  # fmt: skip
        trial.datetime_start = trial.datetime_complete = ended
        study.add_trial(trial)

    add(TrialState.FAIL, "a")  # timed out long ago: nobody goes on from it
    add(TrialState.FAIL, "b")  # lost long ago, and its retry is queued (below)
    study.enqueue_trial({}, user_attrs={"resume_from": {"artifact_id": "checkpoint-b"}})
    add(TrialState.FAIL, "c", ended=datetime.datetime.now())  # its retry may be queued any moment
    add(TrialState.COMPLETE, "d", resumed="e")  # just ended, after going on from e
    Checkpoints(store, "the store").discard(study, study.trials[-1])

    kept = sorted(p.name for p in (tmp_path / "store").iterdir())
    assert kept == ["checkpoint-b", "checkpoint-c"]
    stored = optuna.load_study(study_name="tiny", storage=optuna.storages.RDBStorage(storage))
    pointers = [t.system_attrs.get("dlboost_checkpoint") for t in stored.trials]
    assert [p is not None for p in pointers] == [False, True, False, True, False]  # 2: queued


def test_a_store_that_fails_mid_trial_costs_the_checkpoint_not_the_trial(
    write_space, storage, tmp_path
):
    space = write_space(training=LONG, search={"pruner": "none", "trials": 1}, params=FIXED)
    process = subprocess.Popen(  # not quiet: the warning is part of the progress
        cli_command("start", str(space), "--storage", storage),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    wait_for(lambda: checkpoint_of(storage, 0) is not None, process)
    store = models_dir(storage)
    shutil.rmtree(store)
    store.write_text("no longer a folder")  # every later write there fails
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    said = " ".join((stdout + stderr).split())  # the console wraps long lines
    assert "trial 0's checkpoint at epoch" in said and "it trains on" in said, said
    (trial,) = load(storage).get_trials(deepcopy=False)
    assert trial.state == TrialState.COMPLETE
    assert sorted(trial.intermediate_values) == list(range(300))
