"""Shipping the result: `export-model` retrains the best trial (or an ensemble of the K best)
and saves it with its preprocessing and a model card; `predict` applies it to new files."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
import yaml

from conftest import TINY_SPACE, deep_update, run_in
from dlboost_search.data import prepare, read_for_prediction
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import space_of
from dlboost_search.testing import synthetic_study

pytestmark = pytest.mark.slow  # real studies, retrained models, a CLI process per command


def run(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return run_in(cwd, *args, timeout=600)


@pytest.fixture(scope="module")
def tumours(tmp_path_factory) -> dict[str, Path | str]:
    """A finished study on a CSV with text labels and a categorical column, with its own
    validation file, shared by the tests of this module (they only read it)."""
    from sklearn.datasets import load_breast_cancer

    folder = tmp_path_factory.mktemp("tumours")
    frame = load_breast_cancer(as_frame=True).frame.iloc[:, [0, 1, 2, 20, 21, 30]]
    frame["clinic"] = np.where(np.arange(len(frame)) % 3 == 0, "north", "south")
    frame["target"] = frame["target"].map({0: "malignant", 1: "benign"})
    frame.iloc[:400].to_csv(folder / "train.csv", index=False)
    frame.iloc[400:].to_csv(folder / "validation.csv", index=False)
    space = {
        "name": "tumours",
        "data": {"path": "train.csv", "validation_path": "validation.csv", "target": "target"},
        "training": {"max_epochs": 6, "batch_size": 32, "early_stopping": {"patience": 3}},
        "search": {"trials": 4, "pruner": "none", "seed": 0},
        "params": {"units": {"type": "int", "low": 4, "high": 16},
                   "learning_rate": {"type": "float", "low": 3e-3, "high": 3e-2, "log": True}},
    }  # fmt: skip
    (folder / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{folder / 'studies.db'}"
    done = run(folder, "start", "space.yaml", "--storage", storage, "--quiet")
    assert done.returncode == 0, done.stderr
    return {"folder": folder, "storage": storage}


def ranked(storage: str) -> list[optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="tumours", storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return sorted(complete, key=lambda t: (t.value, t.number))  # val_loss: lower is better


def prepared_of(storage: str, name: str = "tumours"):
    """The study's data prepared as its trials had it (the stored space has absolute paths)."""
    return prepare(space_of(optuna.load_study(study_name=name, storage=storage)).data, 0)


def test_the_exported_model_predicts_new_rows_as_it_was_validated(tumours):
    import keras

    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "model")
    assert done.returncode == 0, done.stderr
    assert {p.name for p in (folder / "model").iterdir()} == {
        "model.keras", "dlboost_model.json", "model_card.md"}  # fmt: skip
    meta = json.loads((folder / "model" / "dlboost_model.json").read_text())
    best = ranked(storage)[0]
    assert [m["trial"] for m in meta["members"]] == [best.number]
    assert meta["members"][0]["epochs"] == best.user_attrs["best_epoch"]
    card = (folder / "model" / "model_card.md").read_text()
    assert "# Model card: tumours" in card and f"trial {best.number}" in card
    assert f"| units | {best.params['units']} |" in card

    # The validation file, target column included (ignored), gives the rows the score was
    # measured on: the predictions must be the model's on the prepared rows, and reproduce
    # the exported validation loss.
    done = run(folder, "predict", "model", "validation.csv", "--out", "predictions.csv")
    assert done.returncode == 0, done.stderr
    predicted = pd.read_csv(folder / "predictions.csv")
    assert list(predicted.columns) == ["prediction", "probability_malignant"]
    model = keras.saving.load_model(folder / "model" / "model.keras")
    prepared = prepared_of(storage)
    expected = model.predict(prepared.x_val, verbose=0)[:, 0]
    assert np.allclose(predicted["probability_malignant"], expected, atol=1e-6)
    labels = np.where(expected >= 0.5, "malignant", "benign")
    assert (predicted["prediction"] == labels).all()
    y = (pd.read_csv(folder / "validation.csv")["target"] == "malignant").to_numpy()
    q = np.clip(predicted["probability_malignant"].to_numpy(), 1e-7, 1 - 1e-7)
    loss = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
    assert loss == pytest.approx(meta["validation_score"], rel=1e-4)


def test_an_ensemble_averages_the_k_best_trials(tumours):
    import keras

    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "ensemble",
               "--ensemble", "3")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "for the ensemble" in done.stdout and "for the best trial alone" in done.stdout
    meta = json.loads((folder / "ensemble" / "dlboost_model.json").read_text())
    assert [m["trial"] for m in meta["members"]] == [t.number for t in ranked(storage)[:3]]
    assert "The ensemble scores" in (folder / "ensemble" / "model_card.md").read_text()
    model = keras.saving.load_model(folder / "ensemble" / "model.keras")
    members = [layer for layer in model.layers if layer.name.startswith("trial_")]
    assert len(members) == 3
    x = prepared_of(storage).x_val
    mean = np.mean([member.predict(x, verbose=0) for member in members], axis=0)
    assert np.allclose(model.predict(x, verbose=0), mean, atol=1e-6)


def test_refit_all_trains_on_the_validation_rows_too(tumours):
    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "refit",
               "--refit-all")  # fmt: skip
    assert done.returncode == 0, done.stderr
    rows = len(pd.read_csv(folder / "train.csv")) + len(pd.read_csv(folder / "validation.csv"))
    assert f"on {rows} rows" in done.stderr
    assert json.loads((folder / "refit" / "dlboost_model.json").read_text())["refit_all"] is True
    assert "optimistic" in (folder / "refit" / "model_card.md").read_text()


def test_a_file_is_predicted_a_chunk_at_a_time_as_it_is_whole(tumours, monkeypatch):
    """A file larger than memory is read, predicted and written in chunks: with chunks of 50
    rows, the 169 rows give the predictions of the file read whole, also as Parquet."""
    from dlboost_search import shipping, streams

    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "chunked")
    assert done.returncode == 0, done.stderr
    rows = shipping.predict(folder / "chunked", folder / "validation.csv", folder / "whole.csv")
    monkeypatch.setattr(streams, "CHUNK_ROWS", 50)
    chunked = shipping.predict(
        folder / "chunked", folder / "validation.csv", folder / "chunked.parquet"
    )
    assert rows == chunked == 169
    whole, parts = pd.read_csv(folder / "whole.csv"), pd.read_parquet(folder / "chunked.parquet")
    assert list(parts.columns) == list(whole.columns)
    assert (parts["prediction"] == whole["prediction"]).all()
    assert np.allclose(parts["probability_malignant"], whole["probability_malignant"], atol=1e-6)
    assert not list(folder.glob(".*.partial"))  # moved into place once complete


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        (lambda f: f.drop(columns=["mean radius"]), "Missing: mean radius; extra: none"),
        (lambda f: f.assign(extra_col=1.0), "Missing: none; extra: extra_col"),
        (lambda f: f.assign(**{"mean texture": np.inf}), "has 169 rows with inf"),
        (lambda f: f.assign(**{"mean perimeter": "big"}), "columns mean perimeter were numbers"),
    ],
    ids=["missing", "extra", "inf", "text"],
)
def test_predict_refuses_rows_unlike_the_training_rows(tumours, change, fragment):
    folder = tumours["folder"]
    if not (folder / "model").exists():
        done = run(folder, "export-model", "tumours", "--storage", tumours["storage"],
                   "--out", "model")  # fmt: skip
        assert done.returncode == 0, done.stderr
    change(pd.read_csv(folder / "validation.csv")).to_csv(folder / "bad.csv", index=False)
    (folder / "out.csv").unlink(missing_ok=True)
    done = run(folder, "predict", "model", "bad.csv", "--out", "out.csv")
    assert done.returncode == 2, done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr
    assert not (folder / "out.csv").exists()


def test_export_and_predict_explain_what_they_cannot_do(tumours):
    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "no-such-study", "--storage", storage, "--out", "x")
    assert done.returncode == 2 and "no-such-study" in done.stderr
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "x",
               "--ensemble", "99")  # fmt: skip
    assert done.returncode == 2 and "has only 4 complete trials" in done.stderr
    (folder / "notes").mkdir(exist_ok=True)
    (folder / "notes" / "todo.txt").write_text("mine")
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "notes")
    assert done.returncode == 2 and "is not an exported model" in done.stderr
    assert (folder / "notes" / "todo.txt").read_text() == "mine"
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "train.csv")
    assert done.returncode == 2 and "train.csv is a file, not a folder" in done.stderr
    done = run(folder, "predict", "notes", "validation.csv")
    assert done.returncode == 2 and "export-model STUDY --out notes" in done.stderr


def test_an_export_replaces_only_the_files_it_writes(tumours):
    """Predictions written beside a model, a user's notes, a thesis in a folder that only
    looks like an export: a new export replaces its three files and nothing else."""
    folder, storage = tumours["folder"], tumours["storage"]
    done = run(folder, "export-model", "tumours", "--storage", storage, "--out", "kept")
    assert done.returncode == 0, done.stderr
    done = run(folder, "predict", "kept", "validation.csv", "--out", "kept/predictions.csv")
    assert done.returncode == 0, done.stderr
    (folder / "kept" / "notes.txt").write_text("why this model")
    (folder / "looks").mkdir()
    (folder / "looks" / "dlboost_model.json").write_text("{}")
    (folder / "looks" / "thesis.tex").write_text("\\chapter{Results}")
    for out in ("kept", "looks"):
        done = run(folder, "export-model", "tumours", "--storage", storage, "--out", out,
                   "--ensemble", "2")  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert json.loads((folder / out / "dlboost_model.json").read_text())["members"][1]
        assert (folder / out / "model.keras").is_file()
    assert (folder / "kept" / "notes.txt").read_text() == "why this model"
    assert len(pd.read_csv(folder / "kept" / "predictions.csv")) == 169
    assert (folder / "looks" / "thesis.tex").read_text() == "\\chapter{Results}"
    assert sorted(p.name for p in (folder / "looks").iterdir()) == [
        "dlboost_model.json", "model.keras", "model_card.md", "thesis.tex"
    ]  # fmt: skip
    assert not list(folder.glob("*.partial")) and not list(folder.glob(".export-*"))


def test_an_array_model_predicts_raw_npz_rows_in_the_targets_units(tmp_path):
    import keras

    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, size=(120, 6, 2))
    y = 100 + 10 * x[:, :, 0].mean(axis=1)
    np.savez(tmp_path / "series.npz", x_train=x[:90], y_train=y[:90], x_val=x[90:], y_val=y[90:])
    space = {
        "name": "series",
        "data": {"path": "series.npz", "task": "regression"},
        "model": {"family": "rnn"},
        "training": {"max_epochs": 3, "batch_size": 16},
        "search": {"trials": 2, "pruner": "none"},
        "params": {"units": {"type": "int", "low": 4, "high": 8}},
    }
    (tmp_path / "space.yaml").write_text(yaml.safe_dump(space))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    assert run(tmp_path, "start", "space.yaml", "--storage", storage, "-q").returncode == 0
    done = run(tmp_path, "export-model", "series", "--storage", storage, "--out", "model")
    assert done.returncode == 0, done.stderr
    np.savez(tmp_path / "new.npz", x=x[90:])
    done = run(tmp_path, "predict", "model", "new.npz", "--out", "predicted.csv")
    assert done.returncode == 0, done.stderr
    prepared = prepared_of(storage, "series")
    model = keras.saving.load_model(tmp_path / "model" / "model.keras")
    expected = model.predict(prepared.x_val, verbose=0)[:, 0] * prepared.target_std
    expected += prepared.target_mean
    predicted = pd.read_csv(tmp_path / "predicted.csv")["prediction"]
    assert np.allclose(predicted, expected, rtol=1e-5)
    np.savez(tmp_path / "wrong.npz", x=x[:5, :4])
    done = run(tmp_path, "predict", "model", "wrong.npz", "--out", "predicted.csv")
    assert done.returncode == 2 and "this model takes numeric rows shaped (6, 2)" in done.stderr


def test_the_card_gives_the_validation_error_in_the_targets_units(tmp_path):
    """RMSE and MAE of the exported model, recomputed here from what `predict` writes for the
    raw diabetes rows that validated the study, against their raw target: a card that left
    the error standardized, or unstandardized it wrongly, would not match."""
    from sklearn.datasets import load_diabetes

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    synthetic_study(space_from_dict(TINY_SPACE, "test"), storage, 3)  # retraining is the cost
    done = run(tmp_path, "export-model", "tiny", "--storage", storage, "--out", "model")
    assert done.returncode == 0, done.stderr
    summary = done.stdout
    meta = json.loads((tmp_path / "model" / "dlboost_model.json").read_text())
    validation = meta["validation"]

    raw = load_diabetes(as_frame=True).frame
    raw.to_csv(tmp_path / "all.csv", index=False)
    done = run(tmp_path, "predict", "model", "all.csv", "--out", "predicted.csv")
    assert done.returncode == 0, done.stderr
    predicted = pd.read_csv(tmp_path / "predicted.csv")["prediction"].to_numpy()
    # The validation rows among the raw ones: each prepared row is one raw row, preprocessed.
    x_all, _, _ = read_for_prediction(meta["preprocessing"], tmp_path / "all.csv")
    x_val = prepared_of(storage, "tiny").x_val
    distances = np.linalg.norm(x_val[:, np.newaxis, :] - x_all[np.newaxis, :, :], axis=2)
    rows = distances.argmin(axis=1)
    assert np.allclose(distances.min(axis=1), 0, atol=1e-5)
    assert len(set(rows)) == validation["rows"] == len(x_val) == 89  # 20% of 442, rounded up

    error = predicted[rows] - raw["target"].to_numpy()[rows]
    assert validation["rmse"] == pytest.approx(np.sqrt(np.mean(error**2)), rel=1e-5)
    assert validation["mae"] == pytest.approx(np.mean(np.abs(error)), rel=1e-5)
    card = (tmp_path / "model" / "model_card.md").read_text()
    figures = f"RMSE {validation['rmse']:.5g}, MAE {validation['mae']:.5g} (in the target's units)"
    assert figures in card and figures in summary
    assert (
        "the 89 rows the study scored its trials on: built-in dataset 'diabetes', held out at "
        "random by `data.validation_split: 0.2` (seed 0)"
    ) in card


def test_the_card_gives_a_classifiers_validation_accuracy(tmp_path):
    import keras

    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    space = deep_update(TINY_SPACE, {"data": {"builtin": "breast_cancer"}})
    synthetic_study(space_from_dict(space, "test"), storage, 3)
    done = run(tmp_path, "export-model", "tiny", "--storage", storage, "--out", "model")
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "model" / "dlboost_model.json").read_text())
    validation = meta["validation"]

    model = keras.saving.load_model(tmp_path / "model" / "model.keras")
    prepared = prepared_of(storage, "tiny")
    second_class = model.predict(prepared.x_val, verbose=0)[:, 0] >= 0.5
    assert 0 <= validation["accuracy"] <= 1
    assert validation["accuracy"] == pytest.approx(np.mean(second_class == prepared.y_val))
    assert validation["loss"] == pytest.approx(meta["validation_score"])  # the objective's
    figures = f"accuracy {validation['accuracy']:.4f}, loss {validation['loss']:.5g}"
    assert figures in (tmp_path / "model" / "model_card.md").read_text()
    assert figures in done.stdout
