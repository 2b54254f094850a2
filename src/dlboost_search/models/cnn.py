"""A convolutional network for images, with searchable data augmentation.

The augmentation layers (flip, rotation, zoom, translation, contrast) are Keras' own random
preprocessing layers: they transform images in training only and pass them through unchanged
at validation and prediction, and they travel inside the saved model.
"""

from __future__ import annotations

from typing import Any

from dlboost_search.hyperparams import ParamRule
from dlboost_search.models.mlp import ACTIVATIONS, output_layer

__all__ = [
    "PARAMS",
    "build",
    "input_problem",
    "size",
]

FLIPS = ("none", "horizontal", "vertical", "horizontal_and_vertical")

PARAMS: dict[str, ParamRule] = {
    "filters": ParamRule("int", 16, "filters of the first convolution block", low=1, high=4096),
    "blocks": ParamRule("int", 2, "convolution blocks, each doubling the filters", low=1, high=8),
    "kernel_size": ParamRule("int", 3, "convolution kernel size in pixels", low=1, high=15),
    "units": ParamRule("int", 64, "units of the dense layer before the output", low=1, high=65_536),
    "dropout": ParamRule(
        "float", 0.0, "dropout rate before the dense layers", low=0.0, high=1.0, high_open=True
    ),
    "l2": ParamRule(
        "float", 0.0, "L2 penalty on convolution and dense weights", low=0.0, high=10.0
    ),
    "batch_norm": ParamRule("bool", False, "batch normalization after each convolution"),
    "activation": ParamRule("choice", "relu", "hidden-layer activation", choices=ACTIVATIONS),
    "flip": ParamRule("choice", "none", "random flips in training", choices=FLIPS),
    "rotation": ParamRule(
        "float", 0.0, "random rotation, as a fraction of a full turn", low=0.0, high=0.5
    ),
    "zoom": ParamRule("float", 0.0, "random zoom in or out, as a fraction", low=0.0, high=0.9),
    "translation": ParamRule(
        "float", 0.0, "random shift, as a fraction of height and width", low=0.0, high=0.5
    ),
    "contrast": ParamRule("float", 0.0, "random contrast change, as a fraction", low=0.0, high=1.0),
}


def input_problem(input_shape: tuple[int, ...], model: Any) -> str | None:
    if len(input_shape) != 3:
        return (
            f"cnn models take images, rows shaped (height, width, channels); this data's rows "
            f"are shaped {input_shape}. Use data.images, data.builtin: digits_images, or an "
            f"NPZ file of 4-dimensional x."
        )
    return None


AUGMENTATIONS = ("rotation", "zoom", "translation", "contrast")


def size(params: dict[str, Any], input_shape: tuple[int, ...]) -> tuple[int, int]:
    """(weights, activations per row) of build()'s model, counted without building it."""
    height, width, channels = input_shape
    augmented = (params["flip"] != "none") + sum(bool(params[a]) for a in AUGMENTATIONS)
    activations, weights = height * width * channels * augmented, 0
    for block in range(params["blocks"]):
        filters = params["filters"] * 2**block
        weights += params["kernel_size"] ** 2 * channels * filters
        activations += 3 * height * width * filters  # convolution, batch norm, activation
        channels = filters
        if min(height, width) >= 2:
            height, width = height // 2, width // 2
    weights += channels * params["units"] + params["units"]
    return weights, activations + 2 * params["units"]


def build(params: dict[str, Any], input_shape: tuple[int, ...], task: str, n_outputs: int):
    import keras

    layers = keras.layers
    regularizer = keras.regularizers.L2(params["l2"]) if params["l2"] else None
    inputs = keras.Input(shape=input_shape)
    x = inputs
    if params["flip"] != "none":
        x = layers.RandomFlip(params["flip"])(x)
    if params["rotation"]:
        x = layers.RandomRotation(params["rotation"], fill_mode="constant")(x)
    if params["zoom"]:
        x = layers.RandomZoom(params["zoom"], fill_mode="constant")(x)
    if params["translation"]:
        shift = params["translation"]
        x = layers.RandomTranslation(shift, shift, fill_mode="constant")(x)
    if params["contrast"]:
        x = layers.RandomContrast(params["contrast"], value_range=(0, 1))(x)
    for block in range(params["blocks"]):
        x = layers.Conv2D(
            params["filters"] * 2**block,
            params["kernel_size"],
            padding="same",
            kernel_regularizer=regularizer,
            use_bias=not params["batch_norm"],
        )(x)
        if params["batch_norm"]:
            x = layers.BatchNormalization()(x)
        x = layers.Activation(params["activation"])(x)
        if min(x.shape[1], x.shape[2]) >= 2:  # small images (digits: 8x8) run out of pixels
            x = layers.MaxPooling2D()(x)
    x = layers.GlobalAveragePooling2D()(x)
    if params["dropout"] > 0:
        x = layers.Dropout(params["dropout"])(x)
    x = layers.Dense(
        params["units"], activation=params["activation"], kernel_regularizer=regularizer
    )(x)
    if params["dropout"] > 0:
        x = layers.Dropout(params["dropout"])(x)
    return keras.Model(inputs, output_layer(task, n_outputs)(x), name="cnn")
