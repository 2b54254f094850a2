"""Model families, picked by `model: {family: NAME}` in the search space.

A family is a module with `PARAMS` (its hyperparameter rules),
`build(params, input_shape, task, n_outputs) -> keras.Model` (uncompiled), and optionally
`input_problem(input_shape, model)` saying why it cannot take some data (`model`: the space's
model section) and `size(params, input_shape) -> (weights, activations per row)` for the
memory check (memory.py). Importing this package does not import TensorFlow: each family
imports Keras inside `build`. A new family is a module and a line in _FAMILY_MODULES.

The `pretrained` family builds from the backbone file the space names: `builder(model)`.

The `custom` family is the user's own function, `model: {builder: "package.module:function"}`,
with the same contract; its hyperparameters are whatever the space names.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from types import ModuleType
from typing import Any

from dlboost_search.errors import SpaceError, TrialFailed
from dlboost_search.hyperparams import ParamRule

__all__ = [
    "BUILDER_PATTERN",
    "FAMILIES",
    "build_function",
    "check_input",
    "family_module",
    "family_params",
    "model_builder",
]

_FAMILY_MODULES = {
    "mlp": "dlboost_search.models.mlp",
    "cnn": "dlboost_search.models.cnn",
    "rnn": "dlboost_search.models.rnn",
    "pretrained": "dlboost_search.models.pretrained",
}

FAMILIES = (*_FAMILY_MODULES, "custom")
BUILDER_PATTERN = r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$"


def family_module(family: str) -> ModuleType | None:
    """The module of a built-in family; None for custom (the user's builder)."""
    if family == "custom":
        return None
    return importlib.import_module(_FAMILY_MODULES[family])


def family_params(family: str) -> dict[str, ParamRule]:
    """The family's own hyperparameter rules; none for custom (the space names them)."""
    if family == "custom":
        return {}
    return importlib.import_module(_FAMILY_MODULES[family]).PARAMS


def build_function(model: Any, source: str = "search space") -> Callable[..., Any]:
    """`build(params, input_shape, task, n_outputs)` for a space's `model` section."""
    if model.family == "custom":
        return _failing_its_trial(load_builder(model.builder, source), model.builder)
    module = importlib.import_module(_FAMILY_MODULES[model.family])
    if model.family == "pretrained":
        return module.builder(model)
    return module.build


def _failing_its_trial(build: Callable[..., Any], builder: str) -> Callable[..., Any]:
    """The user's builder, its errors turned into TrialFailed: the trial's, not the worker's."""

    def build_or_fail(*args: Any) -> Any:
        try:
            return build(*args)
        except Exception as exc:
            reason = f"model.builder: {builder} raised {type(exc).__name__}: {exc}"
            raise TrialFailed(reason) from exc

    return build_or_fail


def check_input(model: Any, input_shape: tuple[int, ...], source: str) -> None:
    """Fail before anything is stored when the family cannot take this data (a cnn given
    tables, a backbone expecting other rows) or its builder cannot be imported."""
    if model.family == "custom":
        load_builder(model.builder, source)
        return
    module = importlib.import_module(_FAMILY_MODULES[model.family])
    problem = getattr(module, "input_problem", lambda shape, model: None)(input_shape, model)
    if problem:
        raise SpaceError(f"{source}: {problem}")


def load_builder(path: str, source: str) -> Callable[..., Any]:
    """Import the user's "package.module:function"; from the working directory too."""
    module_name, _, function_name = path.partition(":")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(None)  # a builder imports Keras: without its start-up chatter
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpaceError(
            f"{source}: model.builder: cannot import module {module_name!r} ({exc}). The module "
            f"must be importable from the working directory ({os.getcwd()}) or PYTHONPATH."
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        found = sorted(n for n in vars(module) if callable(vars(module)[n]) and n[0] != "_")
        raise SpaceError(
            f"{source}: model.builder: module {module_name!r} ({module.__file__}) has no "
            f"function {function_name!r}. Its functions: {', '.join(found) or 'none'}."
        )
    return function


def model_builder(space: Any, prepared: Any, source: str) -> Callable[[dict[str, Any]], Any]:
    """`build(params)` for this space and data. A custom builder or a backbone is tried once
    first, so one that returns something else or cannot load stops the search before any
    trial. Later, a custom builder that raises fails that trial only (TrialFailed)."""
    build = build_function(space.model, source)

    def build_for(params: dict[str, Any]) -> Any:
        return build(params, prepared.input_shape, prepared.task, prepared.n_outputs)

    if space.model.family in ("custom", "pretrained"):
        import keras

        example = space.example_params()
        try:
            model = build_for(example)
        except TrialFailed as exc:  # the custom builder raised
            raise SpaceError(
                f"{source}: {exc} (on the space's lowest values: "
                f"{ {k: example[k] for k in space.searched()} }). The builder must build a model "
                f"for every parameter set the space allows: fix it, or narrow params."
            ) from None
        except ValueError as exc:  # the backbone file cannot be loaded
            raise SpaceError(f"{source}: model.backbone: {exc}.") from None
        if space.model.family == "custom":
            _check_built(model, space.model.builder, source)
        keras.backend.clear_session(free_memory=False)
    return build_for


def _check_built(model: Any, builder: str, source: str) -> None:
    """Fail the search, before any trial, unless the builder gave a Keras model."""
    import keras

    if not isinstance(model, keras.Model):
        raise SpaceError(
            f"{source}: model.builder: {builder} returned {type(model).__name__}, not a "
            f"keras.Model. It must return the uncompiled model, e.g. `return keras.Model(inputs, "
            f"outputs)`; dlboost-search compiles it with the trial's optimizer and loss."
        )
