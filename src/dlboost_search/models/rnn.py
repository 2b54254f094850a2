"""A recurrent network (LSTM or GRU) for sequences: rows shaped (steps, features).

Recurrent networks are where exploding gradients show up first: search `clipnorm` or
`clipvalue` (training hyperparameters shared by every family) alongside these.
"""

from __future__ import annotations

from typing import Any

from dlboost_search.hyperparams import ParamRule
from dlboost_search.models.mlp import output_layer

__all__ = [
    "PARAMS",
    "build",
    "input_problem",
    "size",
]

PARAMS: dict[str, ParamRule] = {
    "cell": ParamRule("choice", "lstm", "recurrent cell", choices=("lstm", "gru")),
    "units": ParamRule("int", 32, "units in each recurrent layer", low=1, high=16_384),
    "layers": ParamRule("int", 1, "stacked recurrent layers", low=1, high=16),
    "bidirectional": ParamRule("bool", False, "read each sequence both ways"),
    "dropout": ParamRule(
        "float", 0.0, "dropout rate after each recurrent layer", low=0.0, high=1.0, high_open=True
    ),
    "l2": ParamRule(
        "float", 0.0, "L2 penalty on the recurrent layers' weights", low=0.0, high=10.0
    ),
}


def input_problem(input_shape: tuple[int, ...], model: Any) -> str | None:
    if len(input_shape) != 2:
        return (
            f"rnn models take sequences, rows shaped (steps, features); this data's rows are "
            f"shaped {input_shape}. Use an NPZ file whose x is (samples, steps, features), "
            f"or data.builtin: sunspots."
        )
    return None


def size(params: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(weights, activations per row) of build()'s model, counted without building it."""
    steps, features = input_shape
    gates = 4 if params["cell"] == "lstm" else 3
    directions = 2 if params["bidirectional"] else 1
    units, weights = params["units"], 0
    for _ in range(params["layers"]):
        weights += directions * gates * (units * (features + units) + units)
        features = directions * units
    # Every step's gates are kept for backpropagation through time.
    return weights, params["layers"] * steps * directions * units * (gates + 2)


def build(params: dict[str, Any], input_shape: tuple[int, ...], task: str, n_outputs: int):
    import keras

    cell = {"lstm": keras.layers.LSTM, "gru": keras.layers.GRU}[params["cell"]]
    regularizer = keras.regularizers.L2(params["l2"]) if params["l2"] else None
    inputs = keras.Input(shape=input_shape)
    x = inputs
    for layer in range(params["layers"]):
        recurrent = cell(
            params["units"],
            return_sequences=layer < params["layers"] - 1,
            kernel_regularizer=regularizer,
            recurrent_regularizer=regularizer,
        )
        x = (keras.layers.Bidirectional(recurrent) if params["bidirectional"] else recurrent)(x)
        if params["dropout"] > 0:
            x = keras.layers.Dropout(params["dropout"])(x)
    return keras.Model(inputs, output_layer(task, n_outputs)(x), name="rnn")
