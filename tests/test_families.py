"""Model families beyond the MLP: cnn (with augmentation, built-in digits images and image
folders), rnn (LSTM/GRU on sequences, the built-in sunspots forecast), pretrained (a backbone
the test saves itself), and every shipped space through both backends."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import TINY_SPACE, cli_command, cli_env, deep_update, load
from dlboost_search.data import prepare, read_for_prediction, task_and_shape
from dlboost_search.errors import DataError, SpaceError
from dlboost_search.models import check_input, model_builder
from dlboost_search.spaces import space_from_dict
from dlboost_search.training import TrainingRecord, train

ROOT = Path(__file__).resolve().parents[1]


def space(**changes):
    return space_from_dict(deep_update(TINY_SPACE, changes), "space.yaml")


def train_briefly(model, params, prepared, epochs=2):
    return train(
        model, params, prepared, max_epochs=epochs, patience=epochs, min_delta=0.0,
        monitor="val_loss", direction="minimize", seed=0, record=TrainingRecord(),
    )  # fmt: skip


def test_builtin_images_and_sequences_have_the_shapes_their_families_take():
    digits = prepare(space(data={"builtin": "digits_images"}).data)
    assert digits.input_shape == (8, 8, 1) and digits.n_outputs == 10
    assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0  # pixels 0-16 scaled
    sunspots = prepare(space(data={"builtin": "sunspots"}).data)
    assert sunspots.task == "regression" and sunspots.input_shape == (24, 1)
    # Chronological: the validation windows are the last years, so each one's first 23 steps
    # are the previous window's last 23.
    assert np.allclose(sunspots.x_val[1:, :-1], sunspots.x_val[:-1, 1:])
    assert np.allclose(sunspots.x_val[0, :-1], sunspots.x_train[-1, 1:])


@pytest.mark.parametrize(
    ("family", "data", "fragment"),
    [
        ("cnn", {"builtin": "diabetes"}, "cnn models take images, rows shaped (height, width, "
                                         "channels); this data's rows are shaped (10,)"),
        ("rnn", {"builtin": "digits_images"}, "rnn models take sequences, rows shaped (steps, "
                                              "features); this data's rows are shaped (8, 8, 1)"),
    ],
)  # fmt: skip
def test_a_family_given_data_it_cannot_take_is_refused(family, data, fragment):
    wrong = space(data=data, model={"family": family}, params={})
    _, shape = task_and_shape(wrong.data)
    with pytest.raises(SpaceError, match=re.escape(fragment)):
        check_input(wrong.model, shape, "space.yaml")


def test_augmentation_changes_training_images_only():
    cnn = space(
        data={"builtin": "digits_images"},
        model={"family": "cnn"},
        params={"rotation": 0.2, "zoom": 0.3, "translation": 0.2, "flip": "horizontal",
                "contrast": 0.5, "blocks": 1},
    )  # fmt: skip
    prepared = prepare(cnn.data)
    model = model_builder(cnn, prepared, "space.yaml")(cnn.resolve({}))
    augmenting = [layer.name for layer in model.layers if layer.name.startswith("random_")]
    assert len(augmenting) == 5, augmenting
    x = prepared.x_val[:16]
    predicted = np.asarray(model(x, training=False))
    assert np.allclose(predicted, np.asarray(model(x, training=False)))
    assert not np.allclose(predicted, np.asarray(model(x, training=True)), atol=1e-4)


def test_an_rnn_trains_on_a_users_npz_sequences(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 7, 3)).astype("float32")
    y = x[:, :, 0].sum(axis=1)  # something a recurrent layer can learn
    np.savez(tmp_path / "sequences.npz", x=x, y=y)
    for cell in ("lstm", "gru"):
        rnn = space(
            data={"path": str(tmp_path / "sequences.npz"), "task": "regression"},
            model={"family": "rnn"},
            params={"cell": cell, "units": 8, "layers": 2, "clipnorm": 1.0},
        )
        prepared = prepare(rnn.data)
        assert prepared.input_shape == (7, 3)
        model = model_builder(rnn, prepared, "space.yaml")(rnn.resolve({}))
        assert {type(layer).__name__ for layer in model.layers} >= {cell.upper()}
        assert np.isfinite(train_briefly(model, rnn.resolve({}), prepared))


def write_images(folder: Path, classes: dict[str, int], size=(10, 12)) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            pixels = rng.integers(0, 256, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / name / f"{i}.png")


def test_an_image_folder_is_read_with_one_class_per_subfolder(tmp_path):
    write_images(tmp_path / "pets", {"cat": 10, "dog": 10, "owl": 10})
    images = space(
        data={"images": str(tmp_path / "pets"), "image_size": [6, 5], "color_mode": "grayscale"},
        model={"family": "cnn"},
        params={"filters": 4},
    )
    assert task_and_shape(images.data) == ("multiclass", (6, 5, 1))
    prepared = prepare(images.data)
    assert prepared.class_labels == ["cat", "dog", "owl"] and prepared.input_shape == (6, 5, 1)
    assert len(prepared.x_train) + len(prepared.x_val) == 30
    assert 0.0 <= prepared.x_train.min() and prepared.x_train.max() <= 1.0
    model = model_builder(images, prepared, "space.yaml")(images.resolve({}))
    assert np.isfinite(train_briefly(model, images.resolve({}), prepared))
    # predict takes the images as users keep them: a file, or a folder (sub-folders included),
    # decoded, resized and scaled as in training.
    rows = np.concatenate([prepared.x_train, prepared.x_val])
    x, names, _ = read_for_prediction(prepared.preprocessing, tmp_path / "pets" / "owl" / "3.png")
    assert names == ["3.png"] and x.shape == (1, 6, 5, 1)
    assert np.abs(rows - x[0]).max(axis=(1, 2, 3)).min() < 1e-6
    x, names, _ = read_for_prediction(prepared.preprocessing, tmp_path / "pets")
    assert len(names) == 30 and names[0] == "cat/0.png"
    assert sorted(np.round(x.sum(axis=(1, 2, 3)), 3)) == sorted(
        np.round(rows.sum(axis=(1, 2, 3)), 3)
    )


@pytest.mark.parametrize(
    ("classes", "fragment"),
    [
        (None, "image folder not found"),
        ({"cat": 3}, "needs at least 2 sub-folders (one per class)"),
        ({"cat": 3, "dog": 0}, "empty class folders: dog"),
    ],
)
def test_a_bad_image_folder_is_explained(tmp_path, classes, fragment):
    folder = tmp_path / "pets"
    if classes is not None:
        write_images(folder, {k: v for k, v in classes.items() if v})
        for empty in (k for k, v in classes.items() if not v):
            (folder / empty).mkdir()
    images = space(data={"images": str(folder)}, model={"family": "cnn"}, params={})
    with pytest.raises(DataError, match=re.escape(fragment)):
        task_and_shape(images.data)


@pytest.fixture
def backbone(tmp_path) -> Path:
    """A small backbone for the diabetes rows (10 features), saved as a user would."""
    import keras

    inputs = keras.Input(shape=(10,), name="rows")
    h = keras.layers.Dense(8, activation="relu", name="first")(inputs)
    h = keras.layers.Dense(6, activation="relu", name="features")(h)
    model = keras.Model(inputs, keras.layers.Dense(1, name="old_head")(h))
    path = tmp_path / "backbone.keras"
    model.save(path)
    return path


def pretrained(path: Path, **params):
    model = {"family": "pretrained", "backbone": str(path), "backbone_layer": "features"}
    return space(model=model, params=params)


def test_a_frozen_backbone_keeps_its_weights_and_unfrozen_layers_train(backbone):
    prepared = prepare(pretrained(backbone).data)
    for unfrozen, changed in ((0, set()), (1, {"features"}), (2, {"first", "features"})):
        chosen = pretrained(backbone, unfrozen_layers=unfrozen, units=4)
        model = model_builder(chosen, prepared, "space.yaml")(chosen.resolve({}))
        inner = model.get_layer("backbone")
        assert "old_head" not in [layer.name for layer in inner.layers]  # cut at `features`
        before = {layer.name: layer.get_weights()[0].copy() for layer in inner.layers
                  if layer.weights}  # fmt: skip
        train_briefly(model, chosen.resolve({}), prepared)
        after = {layer.name: layer.get_weights()[0] for layer in inner.layers if layer.weights}
        assert {n for n in before if not np.allclose(before[n], after[n])} == changed


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"backbone": "missing.keras"}, "model.backbone: no such file"),
        ({"backbone_layer": "nope"}, "model.backbone_layer: {path} has no layer 'nope'; its "
                                     "layers: rows, first, features, old_head"),
        ({"data": {"builtin": "digits"}}, "model.backbone: {path} takes rows shaped (10,), but "
                                          "this data's rows are shaped (64,)"),
        ({"not_a_model": True}, "is not a Keras model file"),
    ],
)  # fmt: skip
def test_a_backbone_that_cannot_serve_is_refused_before_anything_is_stored(
    backbone, tmp_path, storage, change, fragment
):
    raw = deep_update(TINY_SPACE, {"model": {"family": "pretrained", "backbone": str(backbone),
                                             "backbone_layer": "features"}})  # fmt: skip
    raw["params"] = {"units": {"type": "int", "low": 2, "high": 8}}
    if "data" in change:
        raw["data"] = change["data"]
    for key in ("backbone", "backbone_layer"):
        if key in change:
            raw["model"][key] = change[key]
    if "not_a_model" in change:
        backbone.write_text("not a zip")
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(raw))
    done = subprocess.run(cli_command("start", str(path), "--storage", storage), cwd=tmp_path,
                          env=cli_env(), capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert fragment.format(path=backbone) in done.stderr and "Traceback" not in done.stderr
    with pytest.raises(KeyError):  # refused before the study was created
        load(storage)


def test_family_specific_settings_are_checked_in_the_space():
    with pytest.raises(SpaceError, match="the pretrained family needs backbone: PATH"):
        space(model={"family": "pretrained"}, params={})
    with pytest.raises(SpaceError, match="only the pretrained family takes a backbone"):
        space(model={"family": "mlp", "backbone": "b.keras"}, params={})
    with pytest.raises(SpaceError, match=re.escape("params.cell.choices: recurrent cell must")):
        space(model={"family": "rnn"}, params={"cell": {"type": "categorical",
                                                        "choices": ["lstm", "rnn"]}})  # fmt: skip
    with pytest.raises(SpaceError, match="give exactly one of `builtin`"):
        space(data={"builtin": "digits_images", "images": "pets"}, params={})


SHIPPED = ["digits_cnn", "sunspots_rnn", "digits_pretrained", "diabetes_custom"]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["optuna", "hyperband"])
@pytest.mark.parametrize("shipped", SHIPPED)
def test_each_shipped_family_space_runs_on_both_backends(tmp_path, shipped, backend):
    """The shipped space as it is, made short: 3 epochs, 2 trials (or one Hyperband pass)."""
    raw = yaml.safe_load((ROOT / "search_spaces" / f"{shipped}.yaml").read_text())
    raw["training"]["max_epochs"] = 3
    raw["search"] = {**raw["search"], "trials": 2}
    if backend == "hyperband":
        raw["search"] = {"backend": "hyperband", "factor": 3, "seed": 0}
    path = tmp_path / f"{shipped}.yaml"
    path.write_text(yaml.safe_dump(raw))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    done = subprocess.run(  # from the repository root, as the README runs them
        cli_command("start", str(path), "--storage", storage, "--quiet"),
        cwd=ROOT, env=cli_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import optuna

    study = optuna.load_study(study_name=raw["name"], storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert trials and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    assert all(t.user_attrs["n_params"] > 0 for t in trials)
    searched = {k for k, v in raw["params"].items() if isinstance(v, dict)}
    assert set(trials[0].params) == searched
