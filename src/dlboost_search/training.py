"""Train one Keras model under a budget, and report each epoch to whoever asked.

Model building lives in `models/`; this module compiles and fits. It knows nothing of Optuna:
the caller passes `report(epoch, value)`, which may raise to stop the trial (pruning).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dlboost_search.data import PreparedData
from dlboost_search.errors import SearchAborted, TrialFailed

VALIDATION_BATCH = 4096
# Batches run per compiled call: fewer Python round-trips per epoch on small data.
MAX_STEPS_PER_EXECUTION = 64


@dataclass
class TrainingRecord:
    """What a trial did, filled in as it goes so it is complete even when the trial stops."""

    epochs_trained: int = 0
    best_epoch: int | None = None
    best_value: float | None = None
    n_params: int | None = None
    train_seconds: float = 0.0
    history: list[float] = field(default_factory=list)

    def as_attrs(self) -> dict[str, Any]:
        return {
            "epochs_trained": self.epochs_trained,
            "best_epoch": self.best_epoch,
            "n_params": self.n_params,
            "train_seconds": round(self.train_seconds, 3),
        }


def compile_model(
    model: Any, params: dict[str, Any], task: str, steps_per_execution: int = 1
) -> None:
    import keras

    optimizers = {
        "adam": keras.optimizers.Adam,
        "adamw": keras.optimizers.AdamW,
        "nadam": keras.optimizers.Nadam,
        "rmsprop": keras.optimizers.RMSprop,
        "sgd": keras.optimizers.SGD,
    }
    clip = {k: params[k] for k in ("clipvalue", "clipnorm") if params.get(k) is not None}
    optimizer = optimizers[params["optimizer"]](learning_rate=params["learning_rate"], **clip)
    loss, metrics = {
        "regression": ("mse", ["mae"]),
        "binary": ("binary_crossentropy", ["accuracy", keras.metrics.AUC(name="auc")]),
        "multiclass": ("sparse_categorical_crossentropy", ["accuracy"]),
    }[task]
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=metrics,
        steps_per_execution=steps_per_execution,
    )


class _EpochMonitor:
    """Checks each epoch's logs, keeps the record, and hands the monitored value on."""

    def __init__(self, monitor: str, direction: str, record: TrainingRecord, report):
        self.monitor, self.direction, self.record, self.report = monitor, direction, record, report

    def __call__(self, epoch: int, logs: dict[str, Any]) -> None:
        self.record.epochs_trained = epoch + 1
        loss = logs.get("loss")
        if loss is None or not math.isfinite(loss):
            raise TrialFailed(f"training loss became {loss} at epoch {epoch + 1}")
        if self.monitor not in logs:
            raise SearchAborted(
                f"objective.metric {self.monitor!r} never appears in Keras' logs "
                f"(they hold: {', '.join(sorted(logs))}), so trials can be neither scored "
                f"nor pruned. Pick one of those names in the search space."
            )
        value = float(logs[self.monitor])
        if not math.isfinite(value):
            raise TrialFailed(f"{self.monitor} became {value} at epoch {epoch + 1}")
        self.record.history.append(value)
        best = self.record.best_value
        better = best is None or (value < best if self.direction == "minimize" else value > best)
        if better:
            self.record.best_value, self.record.best_epoch = value, epoch + 1
        self.report(epoch, value)


def train(
    model: Any,
    params: dict[str, Any],
    data: PreparedData,
    *,
    max_epochs: int,
    patience: int,
    min_delta: float,
    monitor: str,
    direction: str,
    seed: int,
    record: TrainingRecord,
    report: Callable[[int, float], None] = lambda epoch, value: None,
) -> float:
    """Fit `model` with early stopping; return the best value of `monitor`."""
    import keras
    import tensorflow as tf

    batch_size = int(params["batch_size"])
    steps = max(1, math.ceil(len(data.x_train) / batch_size))
    compile_model(model, params, data.task, min(steps, MAX_STEPS_PER_EXECUTION))
    record.n_params = int(model.count_params())
    train_ds = (
        tf.data.Dataset.from_tensor_slices((data.x_train, data.y_train))
        .cache()
        .shuffle(len(data.x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices((data.x_val, data.y_val)).batch(VALIDATION_BATCH).cache()
    )
    epoch_monitor = _EpochMonitor(monitor, direction, record, report)
    callbacks = [
        keras.callbacks.LambdaCallback(on_epoch_end=epoch_monitor),
        keras.callbacks.EarlyStopping(
            monitor=monitor,
            mode="min" if direction == "minimize" else "max",
            patience=patience,
            min_delta=min_delta,
            restore_best_weights=True,
        ),
    ]
    started = time.perf_counter()
    try:
        model.fit(
            train_ds,
            validation_data=val_ds,
            epochs=max_epochs,
            callbacks=callbacks,
            shuffle=False,  # the dataset shuffles itself
            verbose=0,
        )
    finally:
        record.train_seconds = time.perf_counter() - started
    if record.best_value is None:
        raise TrialFailed("training ended before the first epoch finished")
    return record.best_value
