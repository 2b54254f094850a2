"""Search-space YAML files: the shipped ones load, every mistake gets a precise message
(file, key path, value received, fix), and sampling through a real Optuna trial stays in range.
No TensorFlow is imported here."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from pydantic import ValidationError

from dlboost_search.data import BUILTIN_TASKS
from dlboost_search.errors import SpaceError
from dlboost_search.hyperparams import TRAINING_PARAMS
from dlboost_search.models import family_params
from dlboost_search.models.mlp import PARAMS as MLP_PARAMS
from dlboost_search.spaces import (
    DEFAULT_TRIALS,
    CategoricalParam,
    FixedParam,
    FloatParam,
    IntParam,
    format_duration,
    load_space,
    parse_duration,
    space_from_dict,
    suggest,
)

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "search_spaces").glob("*.yaml"))

optuna.logging.set_verbosity(optuna.logging.WARNING)


def make(**changes: Any) -> dict[str, Any]:
    """A valid space; each keyword replaces that top-level key (None removes it)."""
    raw: dict[str, Any] = {
        "name": "t",
        "data": {"builtin": "diabetes"},
        "params": {"units": {"type": "int", "low": 8, "high": 64}},
    }
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    return raw


def write(
    tmp_path: Path, content: dict[str, Any] | list[Any] | str, name: str = "space.yaml"
) -> Path:
    path = tmp_path / name
    text = content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False)
    path.write_text(text, encoding="utf-8")
    return path


def load_error(tmp_path: Path, content: dict[str, Any] | list[Any] | str) -> str:
    """Write `content`, load it, and return the SpaceError message (which must name the file)."""
    path = write(tmp_path, content)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    return message


# ---------------------------------------------------------------------------------------------
# Shipped spaces


def test_search_spaces_are_shipped():
    assert len(SHIPPED) >= 3


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_loads_and_samples(path: Path):
    space = load_space(path)
    assert space.data.builtin in BUILTIN_TASKS
    space.check_task(BUILTIN_TASKS[space.data.builtin], str(path))
    assert space.searched()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    sampled = suggest(study.ask(), space)
    assert set(sampled) == set(space.searched())
    values = space.resolve(sampled)
    own = set(space.params) if space.model.family == "custom" else set()
    assert set(values) == set(TRAINING_PARAMS) | set(family_params(space.model.family)) | own


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_space_round_trips_through_to_dict(path: Path):
    """A study stores to_dict() and `resume` rebuilds the space from it."""
    space = load_space(path)
    assert space_from_dict(space.to_dict(), "stored") == space


def test_digits_space_fixes_optimizer_and_maximizes_accuracy():
    space = load_space(REPO / "search_spaces" / "digits_mlp.yaml")
    assert space.direction == "maximize"
    assert "optimizer" not in space.searched()
    assert space.resolve({})["optimizer"] == "adam"
    assert space.resolve({})["batch_size"] == 64


# ---------------------------------------------------------------------------------------------
# One mistake, one message: key path, value received, fix.

BAD_SPACES = [
    pytest.param(
        make(parms={"units": 8}),
        [
            "parms: unknown key 'parms'.",
            "Did you mean 'params'?",
            "Allowed here: name, description, data, model, objective, training, search, params.",
        ],
        id="unknown-top-level-key",
    ),
    pytest.param(
        make(training={"max_epoch": 5}),
        [
            "training.max_epoch: unknown key 'max_epoch'.",
            "Did you mean 'max_epochs'?",
            "Allowed here: max_epochs, batch_size, early_stopping, engine, trial_timeout_seconds, "
            "class_weight, mixed_precision, checkpoint_every.",
        ],
        id="unknown-nested-key",
    ),
    pytest.param(
        make(training={"early_stopping": {"patient": 3}}),
        [
            "training.early_stopping.patient: unknown key 'patient'.",
            "Did you mean 'patience'?",
            "Allowed here: patience, min_delta.",
        ],
        id="unknown-key-two-levels-down",
    ),
    pytest.param(
        make(data={"builtin": "diabetes", "validation_splt": 0.3}),
        ["data.validation_splt: unknown key", "Did you mean 'validation_split'?"],
        id="unknown-data-key",
    ),
    pytest.param(
        make(params={"units": {"type": "int", "low": "ten", "high": 64}}),
        ["params.units.low: Input should be a valid integer; got 'ten'."],
        id="low-is-a-string",
    ),
    pytest.param(
        make(training={"max_epochs": 1.5}),
        ["training.max_epochs: Input should be a valid integer; got 1.5."],
        id="max-epochs-float",
    ),
    pytest.param(
        make(search={"trials": True}),
        ["search.trials: Input should be a valid integer; got True."],
        id="trials-bool",
    ),
    pytest.param(
        make(training={"max_epochs": 0}),
        ["training.max_epochs: Input should be greater than or equal to 1; got 0."],
        id="max-epochs-zero",
    ),
    pytest.param(
        make(data={"builtin": "diabetes", "validation_split": 1.5}),
        ["data.validation_split: Input should be less than 1; got 1.5."],
        id="validation-split-above-1",
    ),
    pytest.param(
        make(params={"units": {"type": "int", "low": 64, "high": 8}}),
        ["params.units: low (64) is above high (8); swap them."],
        id="low-above-high",
    ),
    pytest.param(
        make(params={"l2": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}),
        [
            "params.l2.low: a log-scale range must start above 0, got 0.0; "
            "raise low or set log: false."
        ],
        id="log-with-low-zero",
    ),
    pytest.param(
        make(params={"learning_rate": {"type": "float", "low": -0.1, "high": 0.1, "log": True}}),
        [
            "params.learning_rate.low: a log-scale range must start above 0, got -0.1",
            "params.learning_rate.low: optimizer step size must be at least 1e-07; got -0.1.",
        ],
        id="log-with-negative-low",
    ),
    pytest.param(
        make(
            params={
                "learning_rate": {
                    "type": "float",
                    "low": 1e-4,
                    "high": 1e-2,
                    "step": 1e-4,
                    "log": True,
                }
            }
        ),
        ["params.learning_rate.step: step and log cannot be combined; remove one."],
        id="float-log-with-step",
    ),
    pytest.param(
        make(params={"units": {"type": "int", "low": 8, "high": 64, "step": 2, "log": True}}),
        ["params.units.step: step and log cannot be combined; remove one."],
        id="int-log-with-step",
    ),
    pytest.param(
        make(params={"activation": {"type": "categorical", "choices": []}}),
        ["params.activation.choices: List should have at least 1 item", "got []."],
        id="empty-choices",
    ),
    pytest.param(
        make(params={"units": {"type": "integer", "low": 8, "high": 64}}),
        [
            "params.units: a parameter is a plain value (fixed) or a mapping with type: int, "
            "float or categorical; got",
            "'type': 'integer'",
        ],
        id="unknown-param-type",
    ),
    pytest.param(
        make(params={"units": {"low": 8, "high": 64}}),
        [
            "params.units: a parameter is a plain value (fixed) or a mapping with type: int, "
            "float or categorical; got {'low': 8, 'high': 64}."
        ],
        id="param-type-missing",
    ),
    pytest.param(
        make(params={"unit": {"type": "int", "low": 8, "high": 64}}),
        [
            "params.unit: mlp models have no hyperparameter 'unit'.",
            "Did you mean 'units'?",
            "Known: learning_rate, optimizer, clipvalue, clipnorm, batch_size, units, layers, "
            "dropout, l1, l2, batch_norm, activation.",
        ],
        id="unknown-param-name",
    ),
    pytest.param(
        make(params={"dropout": {"type": "float", "low": 0.0, "high": 1.5}}),
        ["params.dropout.high: dropout rate after each hidden layer must be below 1; got 1.5."],
        id="dropout-high-1.5",
    ),
    pytest.param(
        make(params={"dropout": 1.0}),
        ["params.dropout: dropout rate after each hidden layer must be below 1; got 1.0."],
        id="fixed-dropout-1",
    ),
    pytest.param(
        make(params={"l2": -0.1}),
        ["params.l2: L2 penalty on hidden-layer weights must be at least 0; got -0.1."],
        id="negative-l2",
    ),
    pytest.param(
        make(params={"units": {"type": "int", "low": 0, "high": 64}}),
        ["params.units.low: units in each hidden layer must be at least 1; got 0."],
        id="units-low-0",
    ),
    pytest.param(
        make(params={"learning_rate": 0}),
        ["params.learning_rate: optimizer step size must be at least 1e-07; got 0."],
        id="learning-rate-0",
    ),
    pytest.param(
        make(params={"learning_rate": {"type": "float", "low": 1e-4, "high": 100.0}}),
        ["params.learning_rate.high: optimizer step size must be at most 10; got 100.0."],
        id="learning-rate-high-100",
    ),
    pytest.param(
        make(params={"units": {"type": "float", "low": 8.0, "high": 64.0}}),
        ["params.units.type: units in each hidden layer is a whole number; write type: int."],
        id="float-range-for-int-param",
    ),
    pytest.param(
        make(params={"units": 8.5}),
        [
            "params.units: units in each hidden layer must be a whole number, "
            "written without a decimal point; got 8.5."
        ],
        id="fixed-fractional-units",
    ),
    pytest.param(
        make(params={"optimizer": {"type": "int", "low": 0, "high": 3}}),
        [
            "params.optimizer: Keras optimizer is not numeric; search it with "
            "{type: categorical, choices: [adam, adamw, nadam, rmsprop, sgd]}."
        ],
        id="int-range-for-choice-param",
    ),
    pytest.param(
        make(params={"batch_norm": {"type": "float", "low": 0.0, "high": 1.0}}),
        [
            "params.batch_norm: batch normalization before each activation is not numeric; "
            "search it with {type: categorical, choices: [true, false]}."
        ],
        id="float-range-for-bool-param",
    ),
    pytest.param(
        make(params={"optimizer": {"type": "categorical", "choices": ["adam", "adamax"]}}),
        [
            "params.optimizer.choices: Keras optimizer must be one of adam, adamw, nadam, "
            "rmsprop, sgd; got 'adamax'."
        ],
        id="categorical-choice-not-allowed",
    ),
    pytest.param(
        make(params={"optimizer": "adamax"}),
        [
            "params.optimizer: Keras optimizer must be one of adam, adamw, nadam, rmsprop, sgd; "
            "got 'adamax'."
        ],
        id="fixed-choice-not-allowed",
    ),
    pytest.param(
        make(params={"batch_norm": "yes"}),
        [
            "params.batch_norm: batch normalization before each activation must be true or false; "
            "got 'yes'."
        ],
        id="fixed-bool-not-a-bool",
    ),
    pytest.param(
        make(params={"clipvalue": 1.0, "clipnorm": {"type": "float", "low": 0.5, "high": 2.0}}),
        ["params: clipvalue and clipnorm both clip gradients; keep one of them."],
        id="clipvalue-and-clipnorm",
    ),
    pytest.param(
        make(search={"heartbeat_seconds": 40}),
        [
            "search.stale_after_seconds: 60 is less than twice search.heartbeat_seconds (40), "
            "so one late heartbeat would fail a live trial. Make it at least 80."
        ],
        id="stale-before-two-heartbeats",
    ),
    pytest.param(
        make(search={"sampler": "bayes"}),
        ["search.sampler: Input should be 'tpe', 'random' or 'qmc'; got 'bayes'."],
        id="unknown-sampler",
    ),
    pytest.param(
        make(search={"startup_trials": -1}),
        ["search.startup_trials: Input should be greater than or equal to 0; got -1."],
        id="negative-start-up-trials",
    ),
    pytest.param(
        make(search={"halving_bootstrap": -1}),
        ["search.halving_bootstrap: Input should be greater than or equal to 0; got -1."],
        id="negative-halving-bootstrap",
    ),
    pytest.param(
        make(search={"pruner": "median", "halving_bootstrap": 2}),
        [
            "search.halving_bootstrap: only the successive_halving pruner takes it; got "
            "pruner: median. Remove halving_bootstrap or set pruner: successive_halving."
        ],
        id="halving-bootstrap-without-successive-halving",
    ),
    pytest.param(
        make(search={"pruner": "asha"}),
        [
            "search.pruner: Input should be 'hyperband', 'median', 'successive_halving', "
            "'patient' or 'none'; got 'asha'."
        ],
        id="unknown-pruner",
    ),
    pytest.param(
        make(model={"family": "mpl"}),
        [
            "model.family: unknown family 'mpl'. Did you mean 'mlp'? Families: mlp, cnn, rnn, "
            "pretrained, custom."
        ],
        id="unknown-family",
    ),
    pytest.param(
        make(data={"builtin": "diabetis"}),
        [
            "data.builtin: unknown dataset 'diabetis'. Did you mean 'diabetes'? "
            "Built-in datasets: diabetes, breast_cancer, digits, wine, iris, digits_images, "
            "sunspots."
        ],
        id="unknown-builtin",
    ),
    pytest.param(
        make(data={"builtin": "diabetes", "path": "train.csv", "target": "y"}),
        [
            "data: give exactly one of `builtin` (one of diabetes, breast_cancer, digits, wine, "
            "iris, digits_images, sunspots), `path` (a CSV, Parquet or NPZ file) or `images` (a "
            "folder with one sub-folder of images per class).",
            "data: a built-in dataset brings its own target and task; remove `target`, "
            "`validation_path` and `task`.",
        ],
        id="builtin-and-path",
    ),
    pytest.param(
        make(data={"validation_split": 0.3}),
        ["data: give exactly one of `builtin`", "`path` (a CSV, Parquet or NPZ file) or `images`"],
        id="neither-builtin-nor-path",
    ),
    pytest.param(
        make(data={"builtin": "iris", "task": "binary"}),
        [
            "data: a built-in dataset brings its own target and task; remove `target`, "
            "`validation_path` and `task`."
        ],
        id="builtin-with-task",
    ),
    pytest.param(
        make(data={"path": "train.csv"}),
        ["data.target: a CSV or Parquet file needs `target: COLUMN`, the column to predict."],
        id="csv-without-target",
    ),
    pytest.param(
        make(data={"path": "train.parquet"}),
        ["data.target: a CSV or Parquet file needs `target: COLUMN`"],
        id="parquet-without-target",
    ),
    pytest.param(
        make(objective={"metric": "val_accuracy"}),
        [
            "objective.metric: a regression model does not log 'val_accuracy'. "
            "Use one of: val_loss, loss, val_mae, mae (val_ metrics are measured on the "
            "validation split)."
        ],
        id="accuracy-on-regression",
    ),
    pytest.param(
        make(data={"builtin": "digits"}, objective={"metric": "val_auc"}),
        [
            "objective.metric: a multiclass model does not log 'val_auc'. "
            "Use one of: val_loss, loss, val_accuracy, accuracy"
        ],
        id="auc-on-multiclass",
    ),
    pytest.param(
        make(
            data={"path": "train.csv", "target": "y", "task": "regression"},
            objective={"metric": "val_auc"},
        ),
        ["objective.metric: a regression model does not log 'val_auc'."],
        id="auc-on-declared-regression-task",
    ),
    pytest.param(
        make(objective={"metric": "val_loss", "direction": "maximize"}),
        [
            "objective.direction: 'val_loss' gets better as it goes down, so it must be "
            "'minimize', got 'maximize'. Write direction: minimize or leave it out."
        ],
        id="direction-contradicts-loss",
    ),
    pytest.param(
        make(
            data={"builtin": "breast_cancer"},
            objective={"metric": "val_auc", "direction": "minimize"},
        ),
        [
            "objective.direction: 'val_auc' gets better as it goes up, so it must be "
            "'maximize', got 'minimize'. Write direction: maximize or leave it out."
        ],
        id="direction-contradicts-auc",
    ),
    pytest.param(
        make(objective={"metric": "val_loss", "direction": "down"}),
        ["objective.direction: Input should be 'minimize' or 'maximize'; got 'down'."],
        id="direction-not-a-direction",
    ),
    pytest.param(
        make(objective={"metric": "val_los"}),
        [
            "objective.metric: unknown metric 'val_los'. Did you mean 'val_loss'? "
            "Known: val_accuracy, val_auc, val_balanced_accuracy, val_loss, val_macro_f1, "
            "val_mae (and the same without val_, on the training data)."
        ],
        id="unknown-metric",
    ),
    pytest.param(
        make(name="my study"),
        ["name: String should match pattern '^[A-Za-z0-9][A-Za-z0-9._-]*$'; got 'my study'."],
        id="study-name-with-space",
    ),
    pytest.param(
        make(name="-leading-dash"),
        ["name: String should match pattern", "got '-leading-dash'."],
        id="study-name-leading-dash",
    ),
    pytest.param(
        make(name=None),
        ["name: required key is missing; add it."],
        id="study-name-missing",
    ),
    pytest.param(
        make(data=None),
        ["data: required key is missing; add it."],
        id="data-missing",
    ),
    pytest.param(
        make(params={"units": {"type": "float", "low": ".inf", "high": 64.0}}),
        ["params.units.low: Input should be a valid number"],
        id="bound-is-a-string",
    ),
]


@pytest.mark.parametrize(("raw", "fragments"), BAD_SPACES)
def test_bad_space_is_explained(tmp_path: Path, raw: dict[str, Any], fragments: list[str]):
    message = load_error(tmp_path, raw)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"


def test_infinite_bound_is_rejected(tmp_path: Path):
    message = load_error(
        tmp_path,
        "name: t\ndata: {builtin: diabetes}\n"
        "params:\n  learning_rate: {type: float, low: 1.0e-4, high: .inf}\n",
    )
    assert "params.learning_rate.high: must be a finite number, got inf." in message


def test_space_from_dict_names_the_given_source():
    with pytest.raises(SpaceError, match=r"^study 'old': model\.family: unknown family 'gan'\."):
        space_from_dict(make(model={"family": "gan"}), "study 'old'")


def test_space_from_dict_rejects_a_non_mapping():
    with pytest.raises(SpaceError, match=r"^src: \(top level\): Input should be a valid dict"):
        space_from_dict(["name", "t"], "src")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Files that are not search spaces


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(SpaceError) as info:
        load_space(path)
    message = str(info.value)
    assert message.startswith(f"{path}: no such file.")
    assert "search_spaces/diabetes_mlp.yaml" in message


def test_directory_is_not_a_space_file(tmp_path: Path):
    with pytest.raises(SpaceError, match="no such file"):
        load_space(tmp_path)


def test_invalid_yaml(tmp_path: Path):
    message = load_error(tmp_path, "name: t\ndata: {builtin: diabetes\nparams: [\n")
    assert "not valid YAML" in message
    assert "line" in message  # PyYAML's position of the problem


def test_yaml_list_is_not_a_space(tmp_path: Path):
    message = load_error(tmp_path, ["name", "data", "params"])
    assert "a search space is a YAML mapping with at least `name`, `data` and `params`" in message
    assert "got list." in message


def test_empty_yaml_is_not_a_space(tmp_path: Path):
    message = load_error(tmp_path, "")
    assert "a search space is a YAML mapping" in message
    assert "got NoneType." in message


# ---------------------------------------------------------------------------------------------
# Several problems at once


def test_several_schema_problems_are_all_listed(tmp_path: Path):
    message = load_error(
        tmp_path,
        make(
            name="bad name",
            parms={},
            training={"max_epochs": 0, "batch_size": "big"},
            search={"sampler": "bayes"},
        ),
    )
    assert "5 problems in the search space:" in message
    lines = message.splitlines()[1:]
    assert len(lines) == 5 and all(line.startswith("  - ") for line in lines)
    keys = ("name:", "parms:", "training.max_epochs:", "training.batch_size:", "search.sampler:")
    for key in keys:
        assert any(line.startswith(f"  - {key}") for line in lines), (key, message)


def test_several_semantic_problems_are_all_listed(tmp_path: Path):
    message = load_error(
        tmp_path,
        make(
            data={"builtin": "irs"},
            objective={"metric": "val_acc"},
            params={
                "unit": 8,
                "dropout": {"type": "float", "low": 0.0, "high": 1.5},
                "l2": -1.0,
                "optimizer": {"type": "categorical", "choices": ["adam", "adamax", "sgdd"]},
                "clipvalue": 1.0,
                "clipnorm": 1.0,
            },
        ),
    )
    assert "8 problems in the search space:" in message
    for fragment in (
        "data.builtin: unknown dataset 'irs'.",
        "objective.metric: unknown metric 'val_acc'.",
        "params.unit: mlp models have no hyperparameter 'unit'.",
        "params.dropout.high:",
        "params.l2:",
        "got 'adamax'.",
        "got 'sgdd'.",
        "params: clipvalue and clipnorm",
    ):
        assert fragment in message, (fragment, message)


def test_unknown_family_still_reports_the_other_problems(tmp_path: Path):
    message = load_error(tmp_path, make(model={"family": "mpl"}, objective={"metric": "r2"}))
    assert "2 problems" in message
    assert "model.family: unknown family 'mpl'." in message
    assert "objective.metric: unknown metric 'r2'." in message


# ---------------------------------------------------------------------------------------------
# What a valid space means


def test_plain_values_are_fixed_not_searched():
    space = space_from_dict(
        make(
            params={
                "units": {"type": "int", "low": 8, "high": 64},
                "optimizer": "adam",
                "batch_norm": True,
                "layers": 3,
                "clipvalue": None,
            }
        ),
        "src",
    )
    assert isinstance(space.params["optimizer"], FixedParam)
    assert set(space.searched()) == {"units"}
    values = space.resolve({"units": 16})
    assert values["optimizer"] == "adam"
    assert values["batch_norm"] is True
    assert values["layers"] == 3
    assert values["clipvalue"] is None
    assert values["units"] == 16


def test_resolve_fills_defaults_for_unspecified_params():
    space = space_from_dict(make(params=None, training={"batch_size": 48}), "src")
    assert space.params == {}
    assert space.searched() == {}
    expected = {name: rule.default for name, rule in {**TRAINING_PARAMS, **MLP_PARAMS}.items()}
    expected["batch_size"] = 48
    assert space.resolve({}) == expected


def test_searched_batch_size_overrides_training_batch_size():
    space = space_from_dict(
        make(
            params={"batch_size": {"type": "categorical", "choices": [16, 32]}},
            training={"batch_size": 64},
        ),
        "src",
    )
    assert space.resolve({})["batch_size"] == 64
    assert space.resolve({"batch_size": 16})["batch_size"] == 16


def test_sampled_values_override_fixed_ones():
    space = space_from_dict(make(params={"layers": 3}), "src")
    assert space.resolve({"layers": 1})["layers"] == 1


def test_defaults_fill_the_rest_of_the_space():
    space = space_from_dict({"name": "t", "data": {"builtin": "iris"}}, "src")
    assert space.model.family == "mlp"
    assert space.objective.metric == "val_loss"
    assert space.training.max_epochs == 100 and space.training.batch_size == 32
    assert space.training.early_stopping.patience == 10
    assert space.search.sampler == "tpe" and space.search.pruner == "successive_halving"
    # Neither a trial target nor a time budget: the run's target is DEFAULT_TRIALS.
    assert space.search.trials is None and space.search.timeout is None
    assert space.search.trial_target() == DEFAULT_TRIALS == 50 and space.search.seed == 0
    assert space.search.trial_target(timeout=60) is None  # a time budget alone ends it
    assert space.data.validation_split == 0.2


@pytest.mark.parametrize(
    ("builtin", "metric", "direction"),
    [
        ("diabetes", "val_loss", "minimize"),
        ("diabetes", "mae", "minimize"),
        ("digits", "val_accuracy", "maximize"),
        ("breast_cancer", "val_auc", "maximize"),
        ("breast_cancer", "accuracy", "maximize"),
    ],
)
def test_direction_is_inferred_from_the_metric(builtin: str, metric: str, direction: str):
    space = space_from_dict(make(data={"builtin": builtin}, objective={"metric": metric}), "src")
    assert space.direction == direction


def test_explicit_direction_is_kept():
    space = space_from_dict(
        make(
            data={"builtin": "digits"},
            objective={"metric": "val_accuracy", "direction": "maximize"},
        ),
        "src",
    )
    assert space.direction == "maximize"


def test_check_task_for_a_file_whose_task_is_known_only_after_loading():
    """With no `task`, a data file's metric is checked once the data is loaded."""
    space = space_from_dict(
        make(data={"path": "/data/train.csv", "target": "y"}, objective={"metric": "val_auc"}),
        "space.yaml",
    )
    space.check_task("binary", "space.yaml")
    with pytest.raises(SpaceError) as info:
        space.check_task("multiclass", "study 'x'")
    assert str(info.value).startswith(
        "study 'x': objective.metric: a multiclass model does not "
        "log 'val_auc'. Use one of: val_loss, loss, val_accuracy"
    )


def test_check_task_rejects_a_contradicting_direction():
    space = space_from_dict(
        make(
            data={"path": "/data/train.npz"},
            objective={"metric": "val_accuracy", "direction": "minimize"},
        ),
        "space.yaml",
    )
    with pytest.raises(SpaceError, match=r"must be 'maximize', got 'minimize'"):
        space.check_task("binary", "space.yaml")


def test_space_is_frozen():
    space = space_from_dict(make(), "src")
    with pytest.raises(ValidationError, match="frozen"):
        space.name = "other"  # type: ignore[misc]


def test_data_paths_are_stored_absolute(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.chdir(tmp_path)
    path = write(
        tmp_path,
        make(data={"path": "data/train.csv", "target": "y", "validation_path": "data/val.csv"}),
    )
    space = load_space(path.name)
    assert Path(space.data.path).is_absolute()
    assert Path(space.data.validation_path).is_absolute()
    assert space.data.path == str((tmp_path / "data" / "train.csv").resolve())
    assert space.data.validation_path == str((tmp_path / "data" / "val.csv").resolve())
    assert space.to_dict()["data"]["path"] == space.data.path


def test_npz_path_needs_no_target(tmp_path: Path):
    space = load_space(write(tmp_path, make(data={"path": "arrays.npz"})))
    assert space.data.target is None
    assert space.data.path.endswith("arrays.npz")


# ---------------------------------------------------------------------------------------------
# Sampling through a real Optuna trial

SAMPLED_PARAMS = {
    "units": {"type": "int", "low": 8, "high": 128, "log": True},
    "layers": {"type": "int", "low": 1, "high": 7, "step": 2},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5, "step": 0.1},
    "l2": {"type": "float", "low": 0.0, "high": 0.01},
    "batch_norm": {"type": "categorical", "choices": [True, False]},
    "activation": {"type": "categorical", "choices": ["relu", "tanh", "gelu"]},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
    "clipnorm": {"type": "float", "low": 0.5, "high": 5.0},
    "optimizer": "sgd",
}


def test_suggest_samples_within_ranges_and_types():
    space = space_from_dict(make(params=SAMPLED_PARAMS), "src")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen: dict[str, set[Any]] = {name: set() for name in space.searched()}
    for _ in range(30):
        trial = study.ask()
        values = suggest(trial, space)
        assert set(values) == set(space.searched())
        assert values == trial.params
        assert type(values["units"]) is int and 8 <= values["units"] <= 128
        assert type(values["layers"]) is int and values["layers"] in (1, 3, 5, 7)
        assert type(values["learning_rate"]) is float and 1e-4 <= values["learning_rate"] <= 1e-2
        assert type(values["dropout"]) is float and 0.0 <= values["dropout"] <= 0.5
        assert math.isclose(values["dropout"] * 10, round(values["dropout"] * 10), abs_tol=1e-9)
        assert type(values["l2"]) is float and 0.0 <= values["l2"] <= 0.01
        assert type(values["batch_norm"]) is bool
        assert values["activation"] in ("relu", "tanh", "gelu")
        assert type(values["batch_size"]) is int and values["batch_size"] in (16, 32, 64)
        assert type(values["clipnorm"]) is float and 0.5 <= values["clipnorm"] <= 5.0
        resolved = space.resolve(values)
        assert resolved["optimizer"] == "sgd"
        assert set(resolved) == set(TRAINING_PARAMS) | set(MLP_PARAMS)
        for name, value in values.items():
            seen[name].add(value)
        study.tell(trial, 0.0)
    # 30 random trials reach more than one value of every parameter.
    assert all(len(values) > 1 for values in seen.values()), seen


def test_suggest_is_reproducible_with_a_seeded_sampler():
    space = space_from_dict(make(params=SAMPLED_PARAMS), "src")

    def draw() -> list[dict[str, Any]]:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=7))
        return [suggest(study.ask(), space) for _ in range(5)]

    assert draw() == draw()


def test_suggest_with_only_fixed_params_samples_nothing():
    space = space_from_dict(make(params={"units": 32, "optimizer": "adam"}), "src")
    trial = optuna.create_study().ask()
    assert suggest(trial, space) == {}
    assert trial.params == {}


def test_param_spec_types():
    space = space_from_dict(make(params=SAMPLED_PARAMS), "src")
    assert isinstance(space.params["units"], IntParam)
    assert isinstance(space.params["learning_rate"], FloatParam)
    assert isinstance(space.params["activation"], CategoricalParam)
    assert isinstance(space.params["optimizer"], FixedParam)


# ---------------------------------------------------------------------------------------------
# No TensorFlow


def test_spaces_and_data_do_not_import_tensorflow():
    code = (
        "import sys, dlboost_search.spaces, dlboost_search.data, dlboost_search.models; "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
        "sorted(m for m in sys.modules if m.startswith(('tensorflow', 'keras')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------------------------
# Bugs found in review, fixed: kept as regression tests


def test_unknown_key_inside_a_param_lists_the_allowed_keys(tmp_path: Path):
    message = load_error(tmp_path, make(params={"units": {"type": "int", "lo": 8, "high": 64}}))
    assert "params.units.lo: unknown key 'lo'." in message
    assert "Did you mean 'low'?" in message
    assert "Allowed here: type, low, high, step, log." in message


@pytest.mark.parametrize(
    "params",
    [
        {"layers": 2.0},
        {"units": 8.0},
        {"layers": {"type": "categorical", "choices": [1.0, 2.0]}},
        {"units": {"type": "categorical", "choices": [16.0, 32.0]}},
    ],
    ids=["fixed-layers", "fixed-units", "categorical-layers", "categorical-units"],
)
def test_int_hyperparameter_given_as_float_is_rejected_or_made_int(params: dict[str, Any]):
    try:
        space = space_from_dict(make(params=params), "src")
    except SpaceError:
        return
    name = next(iter(params))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    value = space.resolve(suggest(study.ask(), space))[name]
    assert type(value) is int, f"{name} resolves to {value!r}"


def test_uppercase_npz_path_needs_no_target():
    space = space_from_dict(make(data={"path": "/data/ARRAYS.NPZ"}), "src")
    assert space.data.target is None


def test_non_utf8_file_is_a_space_error(tmp_path: Path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: t\ndescription: café\ndata: {builtin: diabetes}\n".encode("latin-1"))
    with pytest.raises(SpaceError, match=str(path)):
        load_space(path)


def test_list_as_param_value_points_to_categorical(tmp_path: Path):
    message = load_error(tmp_path, make(params={"activation": ["relu", "tanh"]}))
    assert "problems" not in message  # one problem, not four
    assert "params.activation" in message and "categorical" in message


def test_exponent_without_dot_is_accepted_or_explained(tmp_path: Path):
    path = write(
        tmp_path,
        "name: t\ndata: {builtin: diabetes}\n"
        "params:\n  learning_rate: {type: float, low: 1e-4, high: 1e-2, log: true}\n",
    )
    try:
        space = load_space(path)
    except SpaceError as exc:
        assert "1.0e-4" in str(exc), str(exc)
    else:
        assert space.params["learning_rate"].low == 1e-4


def test_step_that_does_not_divide_the_range_is_rejected():
    with pytest.raises(SpaceError, match=r"params\.units"):
        space_from_dict(
            make(params={"units": {"type": "int", "low": 1, "high": 10, "step": 4}}), "src"
        )


def test_categorical_may_offer_none_for_a_param_whose_default_is_none():
    """Searching whether to clip at all: clipnorm in [null, 1.0]."""
    space = space_from_dict(
        make(params={"clipnorm": {"type": "categorical", "choices": [None, 1.0]}}), "src"
    )
    assert space.params["clipnorm"].choices == [None, 1.0]


def test_yaml_anchors_that_expand_too_far_are_refused_at_once(tmp_path: Path):
    lines = ["name: bomb", "data: {builtin: diabetes}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["params:", "  activation: {type: categorical, choices: *a9}"]
    (tmp_path / "bomb.yaml").write_text("\n".join(lines) + "\n")
    with pytest.raises(SpaceError, match=r"expand to [\d,]+ values; a search space has a few"):
        load_space(tmp_path / "bomb.yaml")


def test_modest_anchors_still_work(tmp_path: Path):
    (tmp_path / "space.yaml").write_text(
        "name: anchors\n"
        "data: {builtin: diabetes}\n"
        "params:\n"
        "  learning_rate: &rate {type: float, low: 0.0001, high: 0.01, log: true}\n"
        "  l2: *rate\n"
    )
    space = load_space(tmp_path / "space.yaml")
    assert space.params["learning_rate"] == space.params["l2"]


def test_merge_keys_override_without_counting_as_duplicates(tmp_path: Path):
    (tmp_path / "space.yaml").write_text(
        "name: merged\n"
        "data: {builtin: diabetes}\n"
        "params:\n"
        "  units: {<<: {type: int, low: 4, high: 8}, high: 16}\n"
    )
    assert load_space(tmp_path / "space.yaml").params["units"].high == 16


def test_a_key_written_twice_is_refused_with_both_lines(tmp_path: Path):
    (tmp_path / "space.yaml").write_text(
        "name: twice\ndata: {builtin: diabetes}\ntraining:\n  max_epochs: 5\n  max_epochs: 50\n"
    )
    with pytest.raises(SpaceError, match=r"key 'max_epochs' appears twice .*lines 4 and 5"):
        load_space(tmp_path / "space.yaml")


def test_quoted_values_are_cut_short_in_every_message(tmp_path: Path):
    space = {"name": "long", "data": {"builtin": "x" * 100_000}, "model": {"family": "y" * 99}}
    with pytest.raises(SpaceError) as refused:
        space_from_dict(space, "space.yaml")
    assert len(str(refused.value)) < 1000 and "xxx..." in str(refused.value)


def test_a_study_name_must_not_climb_out_of_a_folder():
    from dlboost_search.errors import StudyError
    from dlboost_search.spaces import check_study_name

    check_study_name("digits-mlp.v2_b", "--as")
    for bad in ("../evil", "a/b", "", ".hidden", "x" * 201):
        with pytest.raises(StudyError, match="a study name is letters, digits"):
            check_study_name(bad, "--as")


@pytest.mark.parametrize(
    ("written", "seconds"),
    [
        (600, 600),
        ("600", 600),
        ("90s", 90),
        ("10m", 600),
        ("1.5h", 5400),
        (" 2 H", 7200),
        (0.5, 0.5),
    ],  # fmt: skip
)
def test_a_timeout_takes_a_friendly_duration(tmp_path: Path, written: Any, seconds: float):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(make(search={"timeout": written})))
    space = load_space(path)
    assert space.search.timeout == seconds
    assert space.search.trials is None  # a timeout alone: time alone ends the search
    assert parse_duration(format_duration(seconds)) == math.ceil(seconds)
    # Stored as seconds, read back the same.
    assert space_from_dict(space.to_dict(), "stored").search.timeout == seconds


@pytest.mark.parametrize("written", ["10 minutes", "ten", -5, 0, "10x", True, "1h30m"])
def test_a_bad_timeout_names_the_key_and_the_forms_it_takes(tmp_path: Path, written: Any):
    message = load_error(tmp_path, make(search={"timeout": written}))
    assert "space.yaml: search.timeout: a duration is a number of seconds (600)" in message
    assert "(90s, 10m, 1.5h)" in message and f"got {written!r}" in message


@pytest.mark.parametrize(
    ("written", "policy"),
    [(5, (5, None)), ("90s", (None, 90.0)), ("1.5h", (None, 5400.0)), (None, (None, None))],
)
def test_checkpoints_are_taken_every_so_many_epochs_or_so_long(
    tmp_path: Path, written: Any, policy: tuple
):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(make(training={"checkpoint_every": written})))
    space = load_space(path)
    assert space.training.checkpoint_policy() == policy
    assert space_from_dict(space.to_dict(), "stored").training.checkpoint_policy() == policy
    assert load_space(write(tmp_path, make())).training.checkpoint_policy() == (None, 600.0)


@pytest.mark.parametrize("written", [0, -3, "often", "10 minutes", True, 2.5])
def test_a_bad_checkpoint_interval_names_the_key_and_the_forms_it_takes(
    tmp_path: Path, written: Any
):
    message = load_error(tmp_path, make(training={"checkpoint_every": written}))
    assert "space.yaml: training.checkpoint_every: a number of epochs (an integer" in message
    assert "(90s, 10m, 1.5h), or null for no checkpoints" in message
    assert f"got {written!r}" in message
