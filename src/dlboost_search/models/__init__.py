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

import ast
import importlib
import importlib.util
import os
import sys
from collections.abc import Callable, Iterator
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path
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
        check_builder(model.builder, source)
        return
    module = importlib.import_module(_FAMILY_MODULES[model.family])
    problem = getattr(module, "input_problem", lambda shape, model: None)(input_shape, model)
    if problem:
        raise SpaceError(f"{source}: {problem}")


def check_builder(path: str, source: str) -> None:
    """Without importing it (a builder imports Keras, so TensorFlow: seconds, and the CLI
    never does): the module's file is found and defines the function. Importing it and
    building a model are tried by the workers, before the first trial (model_builder)."""
    module_name, _, function_name = path.partition(":")
    spec = _module_spec(module_name)
    if spec is None:
        raise SpaceError(
            f"{source}: model.builder: cannot import module {module_name!r}: there is no such "
            f"module in the working directory ({os.getcwd()}) or on PYTHONPATH."
        )
    if not (spec.origin or "").endswith(".py"):
        return  # compiled, or a namespace package: only importing it tells
    try:
        tree = ast.parse(Path(spec.origin).read_bytes(), spec.origin)
    except SyntaxError as exc:
        raise SpaceError(
            f"{source}: model.builder: module {module_name!r} ({spec.origin}) is not valid "
            f"Python: {exc.msg} at line {exc.lineno}."
        ) from None
    defined, functions = _top_level_names(tree.body)
    if function_name not in defined and "*" not in defined:  # `import *` could bring it
        public = sorted(name for name in functions if not name.startswith("_"))
        raise SpaceError(
            f"{source}: model.builder: module {module_name!r} ({spec.origin}) has no "
            f"function {function_name!r}. Its functions: {', '.join(public) or 'none'}."
        )


def _module_spec(module_name: str) -> ModuleSpec | None:
    """Where "a.b.c" would be imported from, as importing finds it (the working directory
    first), without running any of it: its packages' __init__ files included."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    top, *rest = module_name.split(".")
    try:
        spec = importlib.util.find_spec(top)  # no parent package: nothing runs
        for part in rest:
            if spec is None or spec.submodule_search_locations is None:
                return None
            # By its own name in its parent's folders: the full name would look the parent
            # up in sys.modules, where it is not, since it was never imported.
            spec = PathFinder.find_spec(part, list(spec.submodule_search_locations))
    except (ImportError, ValueError):
        return None
    return spec


def _top_level_names(body: list[ast.stmt]) -> tuple[set[str], set[str]]:
    """Names a module defines (functions, classes, assignments, imports; '*' for `import *`),
    and of those its functions and classes."""
    defined: set[str] = set()
    functions: set[str] = set()
    for node in _statements(body):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            defined.add(node.name)
            functions.add(node.name)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            defined.update((alias.asname or alias.name).partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            defined.update(n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name))
    return defined, functions


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """A module's statements, with those of its if, try, with and loop blocks (a definition
    under `if` or `try` counts), not those inside functions and classes."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.Try | ast.TryStar | ast.With | ast.For | ast.While):
            for block in ("body", "orelse", "finalbody"):
                yield from _statements(getattr(node, block, []))
            for handler in getattr(node, "handlers", []):
                yield from _statements(handler.body)


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
