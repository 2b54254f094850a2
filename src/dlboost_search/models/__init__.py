"""Model families, picked by `model: {family: NAME}` in the search space.

A family is a module with `PARAMS` (its hyperparameter rules) and
`build(params, input_shape, task, n_outputs) -> keras.Model` (uncompiled). Importing this
package does not import TensorFlow: each family imports Keras inside `build`.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_FAMILY_MODULES = {"mlp": "dlboost_search.models.mlp"}

FAMILIES = tuple(_FAMILY_MODULES)


def family_module(name: str) -> ModuleType:
    return importlib.import_module(_FAMILY_MODULES[name])
