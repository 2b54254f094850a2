"""An example of the custom family: a residual MLP that the built-in families do not offer.

The contract: build(params, input_shape, task, n_outputs) -> an uncompiled keras.Model;
`params` holds the trial's values of every parameter in the space, the builder's own
(`width`, `blocks` here) and the training ones. diabetes_custom.yaml names it as
builder: "search_spaces.custom_model:build", imported from the directory the command runs in.
"""

import keras


def build(params, input_shape, task, n_outputs):
    inputs = keras.Input(shape=input_shape)
    x = keras.layers.Dense(params["width"], activation="relu")(inputs)
    for _ in range(params["blocks"]):
        h = keras.layers.Dense(params["width"], activation="relu")(x)
        h = keras.layers.Dropout(params["dropout"])(h)
        x = keras.layers.Add()([x, keras.layers.Dense(params["width"])(h)])  # the skip
    activation = {"regression": None, "binary": "sigmoid", "multiclass": "softmax"}[task]
    return keras.Model(inputs, keras.layers.Dense(n_outputs, activation=activation)(x))
