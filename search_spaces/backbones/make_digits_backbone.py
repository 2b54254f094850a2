"""Make digits_0to4_cnn.keras, the backbone search_spaces/digits_pretrained.yaml fine-tunes.

A small CNN trained on the digits 0-4 only, from the training rows of digits_images (the same
seeded split the search uses, so the fine-tuning's validation rows stay unseen). Fine-tuning
it on all ten digits is transfer learning in miniature: five of the classes are new to it.

Run from the repository root: .venv/bin/python search_spaces/backbones/make_digits_backbone.py
"""

from pathlib import Path

import keras
import numpy as np

from dlboost_search.data import prepare
from dlboost_search.spaces import DataSpec

prepared = prepare(DataSpec(builtin="digits_images", validation_split=0.2), seed=0)
known = prepared.y_train < 5
x, y = prepared.x_train[known], prepared.y_train[known]

keras.utils.set_random_seed(0)
inputs = keras.Input(shape=(8, 8, 1))
h = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="conv_1")(inputs)
h = keras.layers.MaxPooling2D(name="pool_1")(h)
h = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="conv_2")(h)
h = keras.layers.MaxPooling2D(name="pool_2")(h)
features = keras.layers.GlobalAveragePooling2D(name="features")(h)
outputs = keras.layers.Dense(5, activation="softmax", name="digits_0to4")(features)
model = keras.Model(inputs, outputs, name="digits_0to4_cnn")
model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
history = model.fit(x, y, epochs=30, batch_size=32, validation_split=0.1, verbose=0)
print(f"accuracy on held-out 0-4 rows: {history.history['val_accuracy'][-1]:.3f}")
path = Path(__file__).with_name("digits_0to4_cnn.keras")
model.save(path)
print(f"wrote {path} ({path.stat().st_size // 1024} KB); classes seen: {np.unique(y).tolist()}")
