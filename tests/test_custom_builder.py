"""The custom model family: `model: {builder: "package.module:function"}`, the user's own
architecture with hyperparameters of its own, through both backends."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import optuna
import pytest

from conftest import TINY_SPACE, deep_update, load
from dlboost_search.errors import SpaceError
from dlboost_search.spaces import space_from_dict

BUILDER = """
import keras


def build(params, input_shape, task, n_outputs):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Dense(params["width"], activation=params["act"])(inputs)
    x = keras.layers.Dense(params["width"] // 2, activation=params["act"])(x)
    return keras.Model(inputs, keras.layers.Dense(n_outputs)(x))


def not_a_model(params, input_shape, task, n_outputs):
    return {"layers": 2}


def needs_width_over_8(params, input_shape, task, n_outputs):
    if params["width"] <= 8:
        raise ValueError("width must be over 8")
    return build(params, input_shape, task, n_outputs)


calls = 0


def refuses_second(params, input_shape, task, n_outputs):
    # The first model is the check before any trial; the second is the first trial's.
    global calls
    calls += 1
    if calls == 2:
        raise ValueError("no model today")
    return build(params, input_shape, task, n_outputs)
"""
CUSTOM = {
    "model": {"family": "custom", "builder": "my_models:build"},
    "params": {
        "width": {"type": "int", "low": 8, "high": 32, "step": 8},  # the builder's own
        "act": {"type": "categorical", "choices": ["relu", "tanh"]},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
    },
}


BOTH_BACKENDS = pytest.mark.parametrize(
    "search", [{"trials": 3}, {"backend": "hyperband", "factor": 3}], ids=["optuna", "hyperband"]
)


@pytest.fixture
def builder_module(tmp_path: Path) -> Path:
    (tmp_path / "my_models.py").write_text(textwrap.dedent(BUILDER))
    return tmp_path


def custom_space(**changes):
    return space_from_dict(deep_update(deep_update(TINY_SPACE, CUSTOM), changes), "space.yaml")


def test_a_builder_means_the_custom_family_and_its_own_hyperparameters():
    space = space_from_dict({**custom_space().to_dict(), "model": {"builder": "my_models:build"}},
                            "space.yaml")  # fmt: skip
    assert space.model.family == "custom"
    assert set(space.searched()) == {"width", "act", "learning_rate"}
    assert space.example_params()["width"] == 8 and space.example_params()["act"] == "relu"


@pytest.mark.parametrize(
    ("model", "params", "fragment"),
    [
        ({"family": "custom"}, {}, 'model.builder: the custom family needs builder: "package'),
        ({"family": "mlp", "builder": "my_models:build"}, {}, "only the custom family takes"),
        ({"builder": "my_models.build"}, {}, 'is not "package.module:function"'),
        ({"builder": "my_models:build"}, {"width": {"type": "int", "low": 32, "high": 8}},
         "params.width: low (32) is above high (8)"),
    ],
)  # fmt: skip
def test_bad_builder_settings_are_explained(model, params, fragment):
    raw = {**deep_update(TINY_SPACE, {"params": params}), "model": model}
    with pytest.raises(SpaceError, match=re.escape(fragment)):
        space_from_dict(raw, "space.yaml")


@pytest.mark.parametrize(
    ("builder", "fragment"),
    [
        ("no_such_module:build", "cannot import module 'no_such_module'"),
        (
            "my_models:nope",
            "has no function 'nope'. Its functions: build, needs_width_over_8, "
            "not_a_model, refuses_second",
        ),
        ("my_models:not_a_model", "returned dict, not a keras.Model"),
        (
            "my_models:needs_width_over_8",
            "raised ValueError: width must be over 8 (on the space's lowest values: {'width': 8",
        ),
    ],
)
def test_a_builder_that_cannot_work_stops_before_any_trial(
    builder_module, write_space, storage, run_cli, builder, fragment
):
    space = write_space(**deep_update(CUSTOM, {"model": {"builder": builder}}))
    done = run_cli("start", str(space), "--storage", storage)
    assert done.returncode == 2, done.stderr
    assert f"model.builder: {builder if 'not_a' in builder else ''}" in done.stderr
    assert fragment in done.stderr and "Traceback" not in done.stderr
    # Refused before the study was created, or by a worker after: then the trial-less study
    # is removed, so that the fixed space can start under the same name.
    assert not Path(storage.removeprefix("sqlite:///")).exists() or (
        optuna.get_all_study_names(storage) == []
    )


@pytest.mark.parametrize(
    ("builder", "fragment"),
    [
        ("no_such_module:build", "cannot import module 'no_such_module': there is no such module"),
        ("my_models:nope", "has no function 'nope'. Its functions: build, needs_width_over_8, "
         "not_a_model, refuses_second."),
        ("broken:build", "is not valid Python: '(' was never closed at line 1."),
    ],
)  # fmt: skip
def test_validate_checks_the_builders_file_without_importing_it(
    builder_module, write_space, run_cli, builder, fragment
):
    (builder_module / "broken.py").write_text("def build(params:\n")
    space = write_space(**deep_update(CUSTOM, {"model": {"builder": builder}}))
    done = run_cli("validate", str(space))
    assert done.returncode == 2, done.stderr
    assert f"{space}: model.builder: " in done.stderr and fragment in done.stderr


def test_validate_finds_a_builder_in_a_package_and_runs_none_of_it(write_space, run_cli, tmp_path):
    """Importing would run the package's __init__ and the module (and so TensorFlow)."""
    package = tmp_path / "lab" / "models"
    package.mkdir(parents=True)
    (tmp_path / "lab" / "__init__.py").write_text("raise SystemExit('lab/__init__.py ran')\n")
    (package / "wide.py").write_text(
        "raise SystemExit('wide.py ran')\n"
        "try:\n    from fast_models import build\nexcept ImportError:\n"
        "    def build(params, input_shape, task, n_outputs): ...\n"
    )
    space = write_space(**deep_update(CUSTOM, {"model": {"builder": "lab.models.wide:build"}}))
    done = run_cli("validate", str(space))
    assert done.returncode == 0, done.stderr
    assert "__init__.py ran" not in done.stderr and "wide.py ran" not in done.stderr


@pytest.mark.slow
def test_following_a_refused_builders_advice_starts_under_the_same_name(
    builder_module, write_space, storage, run_cli
):
    refused = deep_update(CUSTOM, {"model": {"builder": "my_models:needs_width_over_8"}})
    done = run_cli("start", str(write_space(**refused)), "--storage", storage, "-q")
    assert done.returncode == 2 and "narrow params" in done.stderr, done.stderr
    assert "had no trials and was not kept" in done.stderr
    narrowed = {**CUSTOM["params"], "width": {"type": "int", "low": 16, "high": 32, "step": 8}}
    fixed = {**refused, "params": narrowed, "search": {"trials": 1}}
    done = run_cli("start", str(write_space(**fixed)), "--storage", storage, "-q")
    assert done.returncode == 0, done.stderr
    assert load(storage).trials[0].params["width"] >= 16


@pytest.mark.slow
@BOTH_BACKENDS
def test_a_custom_model_searches_its_own_hyperparameters(
    builder_module, write_space, storage, run_cli, search
):
    space = write_space(**deep_update(CUSTOM, {"search": search, "training": {"max_epochs": 3}}))
    done = run_cli("start", str(space), "--storage", storage)
    assert done.returncode == 0, done.stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert trials and all(t.state.name in ("COMPLETE", "PRUNED") for t in trials)
    for t in trials:
        assert t.params["width"] in (8, 16, 24, 32) and t.params["act"] in ("relu", "tanh")
        # Dense(width) + Dense(width // 2) + Dense(1) on the 10 diabetes features.
        width = t.params["width"]
        expected = 10 * width + width + width * (width // 2) + width // 2 + width // 2 + 1
        assert t.user_attrs["n_params"] == expected


@pytest.mark.slow
@BOTH_BACKENDS
def test_a_builder_that_raises_fails_its_trial_and_the_search_goes_on(
    builder_module, write_space, storage, run_cli, search
):
    changes = {"model": {"builder": "my_models:refuses_second"}, "search": search,
               "training": {"max_epochs": 3}}  # fmt: skip
    space = write_space(**deep_update(CUSTOM, changes))
    done = run_cli("start", str(space), "--storage", storage)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    first, *others = load(storage).get_trials(deepcopy=False)
    assert first.state.name == "FAIL"
    assert first.user_attrs["fail_reason"] == (
        "model.builder: my_models:refuses_second raised ValueError: no model today"
    )
    assert others and all(t.state.name in ("COMPLETE", "PRUNED") for t in others)
    assert len({t.user_attrs["worker"] for t in [first, *others]}) == 1  # no worker restart
    # export-model's process: its second model is the best trial's retraining (--refit-all:
    # without it, export-model takes the model the trial stored and builds none).
    out = builder_module / "model"
    exported = run_cli(
        "export-model", "tiny", "--storage", storage, "--out", str(out), "--refit-all"
    )
    assert exported.returncode == 2, exported.stderr
    assert "retraining trial" in exported.stderr and "raised ValueError: no model today" in (
        exported.stderr
    )
    assert "Traceback" not in exported.stderr and not out.exists()
