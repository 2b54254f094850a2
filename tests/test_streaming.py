"""Data larger than memory (issue 17): `training.engine: auto` streams a CSV or Parquet file
or an image folder above the size threshold through tf.data. The threshold is lowered here
(DLBOOST_STREAM_ABOVE_BYTES, or the module's constants in this process) so that small files
stream: the recipe matches the in-memory one, the split is a hash of the row number, and a CSV,
a Parquet file and an image folder go through the real CLI (start, export-model, predict)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from test_families import write_images

from conftest import cli_command, cli_env, load
from dlboost_search import streams
from dlboost_search.data import StreamedData, prepare, prepare_streamed
from dlboost_search.spaces import DataSpec
from dlboost_search.training import choose_engine


def messy(n: int, seed: int = 0) -> pd.DataFrame:
    """Numbers with holes, text with holes, ISO dates, a binary target."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5.0, 2.0, n).round(3),
            "c": rng.choice(["red", "green", "blue", None], n),
            "day": pd.date_range("2024-01-01", periods=n, freq="D").astype(str),
            "y": rng.choice(["no", "yes"], n),
        }
    )
    frame.loc[rng.choice(n, n // 10, replace=False), "a"] = None
    return frame


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of 32 rows, so that a file of a few hundred rows is read in many."""
    monkeypatch.setattr(streams, "CHUNK_ROWS", 32)
    prepare_streamed.cache_clear()
    yield
    prepare_streamed.cache_clear()


def test_the_streamed_recipe_and_rows_are_the_in_memory_ones(tmp_path, small_chunks):
    frame = messy(300)
    frame.iloc[:200].to_csv(tmp_path / "train.csv", index=False)
    frame.iloc[200:].to_csv(tmp_path / "val.csv", index=False)
    spec = DataSpec(path=str(tmp_path / "train.csv"), validation_path=str(tmp_path / "val.csv"),
                    target="y")  # fmt: skip
    held, streamed = prepare(spec), prepare_streamed(spec)
    assert isinstance(streamed, StreamedData)
    # The sample is the whole training file: the same medians, categories, dates, scaling.
    assert streamed.preprocessing == held.preprocessing
    assert streamed.preprocessing["fill"]["a"] == held.preprocessing["fill"]["a"]
    assert "fitted on all 200 training rows" in streamed.notes[0]
    batches = list(streamed.reader.dataset(("train",), 50, None, streamed.n_train))
    x = np.concatenate([b[0].numpy() for b in batches])
    assert [len(b[0]) for b in batches] == [50] * 4  # chunks of 32 rebatched to 50
    np.testing.assert_array_equal(x, held.x_train)
    np.testing.assert_array_equal(streamed.y_val, held.y_val)
    assert (streamed.n_train, streamed.n_val, streamed.class_labels) == (200, 100, ["no", "yes"])


def test_a_larger_file_is_fitted_on_a_stated_sample(tmp_path, small_chunks, monkeypatch):
    monkeypatch.setattr(streams, "SAMPLE_ROWS", 60)
    messy(400).to_parquet(tmp_path / "t.parquet")
    streamed = prepare_streamed(DataSpec(path=str(tmp_path / "t.parquet"), target="y"))
    assert streamed.n_train + streamed.n_val == 400
    assert f"fitted on a sample of 60 of the {streamed.n_train} training rows" in streamed.notes[0]
    assert sum(streamed.class_counts) == streamed.n_train


def test_validation_rows_never_reach_training_in_any_epoch(tmp_path, small_chunks):
    n = 500
    rows = pd.DataFrame({"x": np.arange(n) % 7, "y": np.arange(n, dtype="float64")})
    rows.to_csv(tmp_path / "t.csv", index=False)
    spec = DataSpec(path=str(tmp_path / "t.csv"), target="y", target_transform="none")
    data = prepare_streamed(spec)

    def row_numbers(batches) -> np.ndarray:  # the target is the row number, standardized
        y = np.concatenate([b[1].numpy() for b in batches])
        return np.rint(y * data.target_std + data.target_mean).astype(int)

    pipeline = data.training_batches(64, seed=3)
    epochs = [row_numbers(pipeline), row_numbers(pipeline)]
    validation = row_numbers(data.validation_batches(64))
    assert not np.array_equal(epochs[0], epochs[1])  # reshuffled each epoch
    assert set(epochs[0]) == set(epochs[1]) and not set(epochs[0]) & set(validation)
    assert len(epochs[0]) + len(validation) == n and 70 < len(validation) < 130
    # The side of a row is a hash of its number and the seed: the same in any process.
    expected = np.flatnonzero(streams.held_out(np.arange(n), 0.2, 0))
    np.testing.assert_array_equal(np.sort(validation), expected)
    assert not np.array_equal(streams.held_out(np.arange(n), 0.2, 1), streams.held_out(
        np.arange(n), 0.2, 0))  # fmt: skip


def test_auto_streams_above_the_threshold_only(tmp_path, monkeypatch):
    messy(50).to_csv(tmp_path / "t.csv", index=False)
    spec = DataSpec(path=str(tmp_path / "t.csv"), target="y")
    size = (tmp_path / "t.csv").stat().st_size
    monkeypatch.setenv(streams.THRESHOLD_VARIABLE, str(size))
    assert choose_engine("auto", spec).engine == "epoch_loop"
    monkeypatch.setenv(streams.THRESHOLD_VARIABLE, str(size - 1))
    streamed = choose_engine("auto", spec)
    assert (streamed.engine, streamed.streamed) == ("fit", True)
    assert "above the streaming threshold of" in streamed.line()
    assert choose_engine("fit", spec).streamed is False  # as asked: in memory
    assert choose_engine("auto", DataSpec(builtin="diabetes")).streamed is False


def test_streamed_images_are_the_in_memory_pixels(tmp_path):
    write_images(tmp_path / "pets", {"cat": 6, "dog": 6})
    spec = DataSpec(images=str(tmp_path / "pets"), image_size=(6, 5))
    held, streamed = prepare(spec), prepare_streamed(spec)
    assert streamed.preprocessing == held.preprocessing
    pixels = [np.concatenate([b[0].numpy() for b in streamed.reader.dataset((side,), 4, None, 0)])
              for side in ("train", "validation")]  # fmt: skip
    ours, theirs = np.concatenate(pixels), np.concatenate([held.x_train, held.x_val])
    assert ours.shape == theirs.shape == (12, 6, 5, 3)
    by_sum = lambda x: np.sort(x.reshape(len(x), -1).sum(axis=1))  # noqa: E731
    np.testing.assert_allclose(by_sum(ours), by_sum(theirs), rtol=1e-5)


def streamed_cli(folder: Path, *args: str, threshold: str = "100"):
    env = {**cli_env(), streams.THRESHOLD_VARIABLE: threshold}
    return subprocess.run(cli_command(*args), cwd=folder, env=env, capture_output=True,
                          text=True, timeout=600, stdin=subprocess.DEVNULL)  # fmt: skip


def write_space(folder: Path, data: dict, **changes) -> None:
    space = {
        "name": "streamed",
        "data": data,
        "training": {"max_epochs": 2, "batch_size": 32, "early_stopping": {"patience": 2}},
        "search": {"trials": 2, "pruner": "none", "seed": 0},
        "params": {"units": 8, "layers": 1},
        **changes,
    }
    (folder / "space.yaml").write_text(yaml.safe_dump(space))


def engines(folder: Path) -> list[str]:
    study = load(f"sqlite:///{folder / 's.db'}", "streamed")
    return [(t.state.name, t.user_attrs.get("engine")) for t in study.trials]


@pytest.mark.slow
def test_a_streamed_csv_end_to_end(tmp_path):
    frame = messy(300)
    frame.to_csv(tmp_path / "t.csv", index=False)
    frame.drop(columns="y").iloc[:5].to_csv(tmp_path / "new.csv", index=False)
    write_space(tmp_path, {"path": "t.csv", "target": "y"},
                training={"max_epochs": 2, "class_weight": "balanced"})  # fmt: skip
    validated = streamed_cli(tmp_path, "validate", "space.yaml")
    assert validated.returncode == 0, validated.stderr
    assert "training engine: fit, the data streamed through tf.data" in validated.stdout
    started = streamed_cli(tmp_path, "start", "space.yaml", "--storage", "sqlite:///s.db")
    assert started.returncode == 0, started.stderr
    assert "training engine: fit, the data streamed" in started.stdout
    assert "fitted on all" in started.stdout
    assert engines(tmp_path) == [("COMPLETE", "fit")] * 2
    exported = streamed_cli(tmp_path, "export-model", "streamed", "--storage", "sqlite:///s.db",
                            "--out", "model")  # fmt: skip
    assert exported.returncode == 0, exported.stderr
    meta = json.loads((tmp_path / "model" / "dlboost_model.json").read_text())
    assert "held out by a hash of each row's number" in meta["validation"]["from"]
    assert meta["preprocessing"]["fill"]["a"] == pytest.approx(frame["a"].median(), abs=0.5)
    predicted = streamed_cli(tmp_path, "predict", "model", "new.csv", "--out", "p.csv")
    assert predicted.returncode == 0, predicted.stderr
    assert len(pd.read_csv(tmp_path / "p.csv")) == 5


@pytest.mark.slow
def test_a_streamed_parquet_file_and_image_folder_through_start(tmp_path):
    messy(300, seed=1).to_parquet(tmp_path / "t.parquet")
    write_space(tmp_path, {"path": "t.parquet", "target": "y"})
    started = streamed_cli(tmp_path, "start", "space.yaml", "--storage", "sqlite:///s.db")
    assert started.returncode == 0, started.stderr
    assert "training engine: fit, the data streamed" in started.stdout
    assert engines(tmp_path) == [("COMPLETE", "fit")] * 2
    write_images(tmp_path / "pets", {"cat": 12, "dog": 12})
    images = {"images": "pets", "image_size": [8, 8], "color_mode": "grayscale"}
    write_space(tmp_path, images, name="streamed", model={"family": "cnn"},
                params={"filters": 4, "blocks": 1, "units": 8})  # fmt: skip
    (tmp_path / "s.db").unlink()
    started = streamed_cli(tmp_path, "start", "space.yaml", "--storage", "sqlite:///s.db")
    assert started.returncode == 0, started.stderr
    assert "images decoded in batches each epoch (streamed)" in started.stdout
    assert engines(tmp_path) == [("COMPLETE", "fit")] * 2


@pytest.mark.slow
def test_a_streamed_csv_on_the_hyperband_backend(tmp_path):
    """keras-tuner's schedule over streamed rows: every trial trains through fit on the
    pipelines, and the configuration promoted to the second round goes on from its parent."""
    messy(300, seed=2).to_csv(tmp_path / "t.csv", index=False)
    write_space(tmp_path, {"path": "t.csv", "target": "y"},
                training={"max_epochs": 3, "batch_size": 32, "early_stopping": {"patience": 3}},
                search={"backend": "hyperband", "factor": 3, "seed": 0},
                params={"units": {"type": "int", "low": 4, "high": 32}, "layers": 1})  # fmt: skip
    started = streamed_cli(tmp_path, "start", "space.yaml", "--storage", "sqlite:///s.db")
    assert started.returncode == 0, started.stderr
    assert "training engine: fit, the data streamed" in started.stdout
    assert engines(tmp_path) == [("COMPLETE", "fit")] * 6  # two brackets: 3 + 1 + 2 trials
    trials = load(f"sqlite:///{tmp_path / 's.db'}", "streamed").trials
    (continued,) = [t for t in trials if t.user_attrs["continues"] is not None]
    assert sorted(continued.intermediate_values) == [1, 2]  # epochs 2-3, after its parent's
    assert continued.user_attrs["initial_epoch"] == 1


def test_a_threshold_that_is_no_number_is_refused(tmp_path):
    messy(50).to_csv(tmp_path / "t.csv", index=False)
    write_space(tmp_path, {"path": "t.csv", "target": "y"})
    refused = streamed_cli(tmp_path, "validate", "space.yaml", threshold="2GB")
    assert refused.returncode == 2
    assert "DLBOOST_STREAM_ABOVE_BYTES='2GB'" in refused.stderr.replace("\n", " ")
    assert "whole number of bytes" in refused.stderr.replace("\n", " ")


def test_a_streamed_trial_goes_on_from_its_checkpoint(tmp_path, small_chunks):
    """Keras fit over streamed data, resumed at epoch 2 from a checkpoint: the epochs go on
    from there, to a value close to the uninterrupted run's (fit reshuffles afresh)."""
    import keras

    from dlboost_search.models import mlp
    from dlboost_search.training import Checkpointing, TrainingRecord, TrainingState, train

    messy(300).to_csv(tmp_path / "t.csv", index=False)
    data = prepare_streamed(DataSpec(path=str(tmp_path / "t.csv"), target="y"))
    params = {"units": 8, "layers": 1, "dropout": 0.2, "learning_rate": 0.01, "batch_size": 32,
              "optimizer": "adam", "activation": "relu", "batch_norm": False, "l1": 0.0,
              "l2": 0.0, "clipvalue": None, "clipnorm": None}  # fmt: skip

    def run(resume=None):
        keras.utils.set_random_seed(3)
        record, saved = TrainingRecord(), []
        model = mlp.build(params, data.input_shape, data.task, data.n_outputs)
        value = train(
            model, params, data, max_epochs=6, patience=6, min_delta=0.0, monitor="val_loss",
            direction="minimize", seed=3, record=record, engine="fit", resume=resume,
            checkpointing=Checkpointing(lambda state: saved.append(state.dumps()), epochs=2),
        )  # fmt: skip
        keras.backend.clear_session()
        return value, record, saved

    value, record, saved = run()
    resumed_value, resumed, _ = run(TrainingState.loads(saved[0]))
    assert (resumed.resumed_from_epoch, resumed.epochs_trained) == (2, 6)
    assert resumed.history[:2] == record.history[:2]
    assert resumed_value == pytest.approx(value, rel=0.1)
