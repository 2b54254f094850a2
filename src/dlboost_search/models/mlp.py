"""A fully connected network for tabular data."""

from __future__ import annotations

import math
from typing import Any

from dlboost_search.hyperparams import ParamRule

__all__ = [
    "ACTIVATIONS",
    "PARAMS",
    "build",
    "output_layer",
    "size",
]

ACTIVATIONS = ("relu", "elu", "selu", "gelu", "tanh", "swish")

PARAMS: dict[str, ParamRule] = {
    "units": ParamRule("int", 64, "units in each hidden layer", low=1, high=65_536),
    "layers": ParamRule("int", 2, "number of hidden layers", low=1, high=64),
    "dropout": ParamRule(
        "float", 0.0, "dropout rate after each hidden layer", low=0.0, high=1.0, high_open=True
    ),
    "l1": ParamRule("float", 0.0, "L1 penalty on hidden-layer weights", low=0.0, high=10.0),
    "l2": ParamRule("float", 0.0, "L2 penalty on hidden-layer weights", low=0.0, high=10.0),
    "batch_norm": ParamRule("bool", False, "batch normalization before each activation"),
    "activation": ParamRule("choice", "relu", "hidden-layer activation", choices=ACTIVATIONS),
}


def build(params: dict[str, Any], input_shape: tuple[int, ...], task: str, n_outputs: int):
    import keras

    regularizer = None
    if params["l1"] or params["l2"]:
        regularizer = keras.regularizers.L1L2(l1=params["l1"], l2=params["l2"])
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Flatten()(inputs) if len(input_shape) > 1 else inputs
    for _ in range(params["layers"]):
        # With batch norm the layer's shift replaces the bias.
        x = keras.layers.Dense(
            params["units"], kernel_regularizer=regularizer, use_bias=not params["batch_norm"]
        )(x)
        if params["batch_norm"]:
            x = keras.layers.BatchNormalization()(x)
        x = keras.layers.Activation(params["activation"])(x)
        if params["dropout"] > 0:
            x = keras.layers.Dropout(params["dropout"])(x)
    return keras.Model(inputs, output_layer(task, n_outputs)(x), name="mlp")


def size(params: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(weights, activations per row) of build()'s model, counted without building it."""
    width, depth = params["units"], params["layers"]
    weights = math.prod(input_shape) * width + (depth - 1) * width * width + width
    return weights, depth * width * 3  # each layer's output, activation and dropout mask


def output_layer(task: str, n_outputs: int):
    """The output layer every family ends with: the task decides its activation."""
    import keras

    activation = {"regression": None, "binary": "sigmoid", "multiclass": "softmax"}[task]
    return keras.layers.Dense(n_outputs, activation=activation, name="output")
