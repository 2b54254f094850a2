"""The stored format is a promise: the studies and the exported model that release 0.1.0 wrote
(tests/fixtures/stored-0.1.0, made once by tests/fixtures/make_stored_0_1_0.sh) are read by
this version: status, best, report, export, resume on both backends, export-model, predict."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from conftest import run_in

pytestmark = pytest.mark.slow  # resume and export-model train real models

FIXTURE = Path(__file__).parent / "fixtures" / "stored-0.1.0"
NAMES = ("pinned-optuna", "pinned-hyperband")


@pytest.fixture
def stored(tmp_path) -> Path:
    """A copy of the fixture (the tests write to it), with the study's storage URL."""
    folder = tmp_path / "stored"
    shutil.copytree(FIXTURE, folder)
    return folder


def url(folder: Path) -> str:
    return f"sqlite:///{folder / 'studies.db'}"


def study(folder: Path, name: str) -> optuna.Study:
    storage = optuna.storages.RDBStorage(url(folder))
    return optuna.load_study(study_name=name, storage=storage)


def test_status_best_and_report_read_both_studies(stored):
    done = run_in(stored, "status", "--storage", url(stored))
    assert done.returncode == 0, done.stderr
    assert all(name in done.stdout for name in NAMES)
    for name in NAMES:
        best = study(stored, name).best_trial
        done = run_in(stored, "best", name, "--storage", url(stored), "--format", "json")
        assert done.returncode == 0, done.stderr
        shown = json.loads(done.stdout)["best"]
        assert (shown["trial"], shown["value"]) == (best.number, best.value)
        done = run_in(stored, "report", name, "--storage", url(stored), "--format", "json")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["best"]["trial"] == best.number


def test_export_copies_every_trial(stored):
    done = run_in(stored, "export", "pinned-optuna", "--storage", url(stored),
                  "--to", f"sqlite:///{stored / 'copy.db'}")  # fmt: skip
    assert done.returncode == 0, done.stderr
    storage = optuna.storages.RDBStorage(f"sqlite:///{stored / 'copy.db'}")
    copied = optuna.load_study(study_name="pinned-optuna", storage=storage).trials
    assert [t.params for t in copied] == [t.params for t in study(stored, "pinned-optuna").trials]


def test_resume_fails_the_trial_0_1_0_left_running_and_goes_on(stored):
    """0.1.0 left a trial RUNNING without a heartbeat when its worker died too early."""
    orphan = study(stored, "pinned-optuna").trials[-1]
    assert orphan.state == TrialState.RUNNING
    done = run_in(stored, "resume", "pinned-optuna", "--storage", url(stored), "--trials", "5",
                  "-q")  # fmt: skip
    assert done.returncode == 0, done.stderr
    trials = study(stored, "pinned-optuna").trials
    assert trials[orphan.number].state == TrialState.FAIL
    assert "lost: no heartbeat" in trials[orphan.number].user_attrs["fail_reason"]
    assert len([t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]) == 5


def test_the_hyperband_schedule_resumes_from_its_stored_state(stored):
    before = [(t.number, t.value) for t in study(stored, "pinned-hyperband").trials]
    done = run_in(stored, "resume", "pinned-hyperband", "--storage", url(stored), "-q")
    assert done.returncode == 0, done.stderr
    # The schedule was complete: keras-tuner's state says so, and nothing is run twice.
    assert [(t.number, t.value) for t in study(stored, "pinned-hyperband").trials] == before


def test_export_model_reads_a_stored_study_and_predict_an_old_export(stored):
    from sklearn.datasets import load_diabetes

    load_diabetes(as_frame=True).data.to_csv(stored / "rows.csv", index=False)
    done = run_in(stored, "export-model", "pinned-optuna", "--storage", url(stored), "--out", "new")
    assert done.returncode == 0, done.stderr
    old = json.loads((stored / "model" / "dlboost_model.json").read_text())
    new = json.loads((stored / "new" / "dlboost_model.json").read_text())
    assert new["format"] == old["format"] == 1
    assert new["members"][0]["trial"] == old["members"][0]["trial"]
    for model in ("model", "new"):
        done = run_in(stored, "predict", model, "rows.csv", "--out", f"{model}.csv")
        assert done.returncode == 0, done.stderr
        predicted = pd.read_csv(stored / f"{model}.csv")["prediction"]
        # Disease progression a year on is 25-346 in this data: predictions in its units.
        assert len(predicted) == 442 and np.isfinite(predicted).all()
        assert 25 < predicted.median() < 346
