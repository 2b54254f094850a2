"""Fine-tune a backbone the user saved as a Keras model file, with a new head on top.

Nothing is downloaded: the backbone is a `.keras` file (`model.save(...)`), an exported
dlboost-search model included. The search decides how many of its top layers train
(`unfrozen_layers`, counting layers that hold weights; 0 freezes it all) and the head's size.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

from dlboost_search.hyperparams import ParamRule
from dlboost_search.models.mlp import output_layer

__all__ = [
    "PARAMS",
    "builder",
    "input_problem",
]

PARAMS: dict[str, ParamRule] = {
    "unfrozen_layers": ParamRule(
        "int", 0, "backbone layers (with weights, from the top) that train", low=0, high=10_000
    ),
    "units": ParamRule("int", 64, "units of the head's hidden layer (0: none)", low=0, high=65_536),
    "dropout": ParamRule(
        "float", 0.0, "dropout rate before the head's layers", low=0.0, high=1.0, high_open=True
    ),
    "l2": ParamRule("float", 0.0, "L2 penalty on the head's weights", low=0.0, high=10.0),
}


def load_backbone(path: str, layer: str | None) -> Any:
    """The saved model, cut at `layer` when given. Raises ValueError saying what is wrong."""
    import keras

    if not Path(path).is_file():
        raise ValueError(f"no such file {path!r}; save the backbone with model.save(PATH)")
    try:
        model = keras.saving.load_model(path, compile=False)
    except Exception as exc:  # Keras raises several types for an unreadable file
        raise ValueError(f"{path} cannot be loaded as a Keras model: {exc}") from None
    if layer is None:
        return model
    names = [each.name for each in model.layers]
    if layer not in names:
        raise ValueError(f"the backbone has no layer {layer!r}; its layers: {', '.join(names)}")
    return keras.Model(model.inputs, model.get_layer(layer).output, name="backbone")


def input_problem(input_shape: tuple[int, ...], model: Any) -> str | None:
    """Check the backbone from the `.keras` file's config.json (a zip member), without
    TensorFlow: the file exists, takes rows of this shape, and has `backbone_layer`."""
    path, layer = model.backbone, model.backbone_layer
    try:
        with zipfile.ZipFile(path) as archive:
            config = json.loads(archive.read("config.json"))
    except FileNotFoundError:
        return f"model.backbone: no such file {path!r}; save the backbone with model.save(PATH)."
    except (zipfile.BadZipFile, KeyError, ValueError):
        return (
            f"model.backbone: {path} is not a Keras model file; save one with "
            f"model.save('backbone.keras') (Keras 3 format)."
        )
    layers = config.get("config", {}).get("layers", [])
    shape = (config.get("build_config") or {}).get("input_shape") or next(
        (
            each["config"].get("batch_shape")
            for each in layers
            if each["class_name"] == "InputLayer"
        ),
        None,
    )
    if shape is not None and tuple(shape[1:]) != tuple(input_shape):
        return (
            f"model.backbone: {path} takes rows shaped {tuple(shape[1:])}, but this data's rows "
            f"are shaped {tuple(input_shape)}. Use a backbone trained on data of the same shape."
        )
    names = [each.get("name") or each["config"].get("name") for each in layers]
    if layer is not None and layer not in names:
        return (
            f"model.backbone_layer: {path} has no layer {layer!r}; its layers: "
            f"{', '.join(map(str, names))}."
        )
    return None


def builder(model: Any):
    """`build(params, input_shape, task, n_outputs)` for the space's backbone."""
    path, layer = model.backbone, model.backbone_layer

    def build(params: dict[str, Any], input_shape: tuple[int, ...], task: str, n_outputs: int):
        import keras

        backbone = load_backbone(path, layer)
        weighted = [each for each in backbone.layers if each.weights]
        unfrozen = params["unfrozen_layers"]
        for each in weighted[: len(weighted) - unfrozen] if unfrozen else weighted:
            each.trainable = False  # frozen batch norm runs in inference mode too (Keras 3)
        regularizer = keras.regularizers.L2(params["l2"]) if params["l2"] else None
        inputs = keras.Input(shape=input_shape)
        x = backbone(inputs)
        if len(x.shape) > 2:
            x = keras.layers.Flatten()(x)
        if params["dropout"] > 0:
            x = keras.layers.Dropout(params["dropout"])(x)
        if params["units"]:
            x = keras.layers.Dense(
                params["units"], activation="relu", kernel_regularizer=regularizer
            )(x)
            if params["dropout"] > 0:
                x = keras.layers.Dropout(params["dropout"])(x)
        return keras.Model(inputs, output_layer(task, n_outputs)(x), name="pretrained")

    return build
