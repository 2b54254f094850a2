"""Train one Keras model under a budget, and report each epoch to whoever asked.

Model building lives in `models/`; this module compiles and fits. It knows nothing of Optuna:
the caller passes `report(epoch, value)`, which may raise to stop the trial (pruning).
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dlboost_search import records
from dlboost_search.data import PreparedData, StreamedData, streaming
from dlboost_search.errors import SearchAborted, TrialFailed
from dlboost_search.hyperparams import logged_metrics, metric_direction
from dlboost_search.limits import weights_mb

__all__ = [
    "Checkpointing",
    "TrainingRecord",
    "TrainingState",
    "as_tensors",
    "class_weights",
    "EngineChoice",
    "choose_engine",
    "compile_model",
    "epoch_function",
    "train",
]

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
    size_mb: float | None = None
    latency_ms: float | None = None  # measured once the trial completes (trial.TrialContext)
    rmse: float | None = None  # regression, in the target's units: also measured at the end
    mae: float | None = None
    train_seconds: float = 0.0
    history: list[float] = field(default_factory=list)
    engine: str | None = None
    resumed_from_epoch: int | None = None  # went on from a mid-trial checkpoint of this epoch

    def as_attrs(self) -> dict[str, Any]:
        return {
            records.ENGINE: self.engine,
            records.EPOCHS_TRAINED: self.epochs_trained,
            records.BEST_EPOCH: self.best_epoch,
            records.N_PARAMS: self.n_params,
            records.SIZE_MB: self.size_mb,
            records.LATENCY_MS: self.latency_ms,
            records.RMSE: self.rmse,
            records.MAE: self.mae,
            records.TRAIN_SECONDS: round(self.train_seconds, 3),
            records.RESUMED_FROM_EPOCH: self.resumed_from_epoch,
        }


@dataclass
class TrainingState:
    """A mid-trial checkpoint: all a trial needs to go on as if it had never stopped.

    `variables` are the model's, its random seed generators' state included (dropout draws
    the same masks); `optimizer` its optimizer's (moments, step count). The epoch loop's
    shuffle depends on the epoch alone, so a resumed trial there repeats the uninterrupted
    run; Keras fit reshuffles from a fresh iterator, so there it only comes close.
    """

    epoch: int  # epochs trained
    history: list[float]
    best_value: float | None
    best_epoch: int | None
    since_improvement: int
    variables: list[np.ndarray]
    optimizer: list[np.ndarray]
    best_weights: list[np.ndarray] | None

    def dumps(self) -> bytes:
        """The state as one .npz file's bytes: arrays, and the rest as JSON (no pickle)."""
        arrays = {f"v{i}": a for i, a in enumerate(self.variables)}
        arrays.update({f"o{i}": a for i, a in enumerate(self.optimizer)})
        arrays.update({f"b{i}": a for i, a in enumerate(self.best_weights or [])})
        meta = {
            "epoch": self.epoch,
            "history": self.history,
            "best_value": self.best_value,
            "best_epoch": self.best_epoch,
            "since_improvement": self.since_improvement,
            "counts": [len(self.variables), len(self.optimizer), len(self.best_weights or [])],
            "has_best_weights": self.best_weights is not None,
        }
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype="uint8")
        out = io.BytesIO()
        np.savez(out, **arrays)
        return out.getvalue()

    @classmethod
    def loads(cls, content: bytes) -> TrainingState:
        with np.load(io.BytesIO(content), allow_pickle=False) as f:
            meta = json.loads(f["meta"].tobytes().decode())
            n_vars, n_opt, n_best = meta["counts"]
            return cls(
                epoch=meta["epoch"],
                history=meta["history"],
                best_value=meta["best_value"],
                best_epoch=meta["best_epoch"],
                since_improvement=meta["since_improvement"],
                variables=[f[f"v{i}"] for i in range(n_vars)],
                optimizer=[f[f"o{i}"] for i in range(n_opt)],
                best_weights=[f[f"b{i}"] for i in range(n_best)]
                if meta["has_best_weights"]
                else None,
            )


@dataclass
class Checkpointing:
    """When a running trial saves its state (training.checkpoint_every: every `epochs`, or
    at the first epoch's end `seconds` after the last save), and `save`, which keeps it."""

    save: Callable[[TrainingState], None]
    epochs: int | None = None
    seconds: float | None = None

    def due(self, epoch: int, since_last: float) -> bool:
        """Whether to save after `epoch` (counted from 1), `since_last` seconds after the
        previous save (or the start of training)."""
        if self.epochs is not None:
            return epoch % self.epochs == 0
        return self.seconds is not None and since_last >= self.seconds


def class_weights(y: np.ndarray, setting: str) -> np.ndarray | None:
    """Each class's weight in the training loss (`training.class_weight`), indexed by class:
    balanced gives class k rows / (classes x rows of k), as scikit-learn's "balanced" does, so
    that every class weighs as much in all; none: None (every row weighs 1)."""
    if setting == "none":
        return None
    return _balanced(np.bincount(np.asarray(y, dtype="int64")))


def _balanced(counts: np.ndarray) -> np.ndarray:
    """Each class's balanced weight from its number of training rows."""
    counts = np.asarray(counts)
    present = counts > 0
    weights = np.zeros(len(counts))
    weights[present] = counts.sum() / (present.sum() * counts[present])
    return weights


def _confusion_metric(name: str, task: str, n_classes: int) -> Any:
    """macro_f1 or balanced_accuracy as a Keras metric: a confusion matrix summed over the
    epoch's batches (unweighted), scored as scikit-learn scores it at the epoch's end."""
    import keras
    from keras import ops

    class ConfusionScore(keras.metrics.Metric):
        def __init__(self, **kwargs):
            super().__init__(name=name, **kwargs)
            self.matrix = self.add_variable(
                shape=(n_classes, n_classes), initializer="zeros", name="matrix"
            )

        def update_state(self, y_true, y_pred, sample_weight=None):
            truth = ops.cast(ops.reshape(y_true, (-1,)), "int32")
            if task == "binary":
                chosen = ops.cast(ops.reshape(y_pred, (-1,)) >= 0.5, "int32")
            else:
                chosen = ops.cast(ops.argmax(y_pred, axis=-1), "int32")
            rows = ops.one_hot(truth, n_classes, dtype=self.matrix.dtype)
            columns = ops.one_hot(chosen, n_classes, dtype=self.matrix.dtype)
            self.matrix.assign_add(ops.matmul(ops.transpose(rows), columns))

        def result(self):
            m = self.matrix
            hits, truths, chosen = ops.diagonal(m), ops.sum(m, axis=1), ops.sum(m, axis=0)
            if name == "balanced_accuracy":  # mean recall over the classes present
                present = ops.cast(truths > 0, m.dtype)
                recall = ops.divide_no_nan(hits, truths)
                return ops.divide_no_nan(ops.sum(recall * present), ops.sum(present))
            # macro F1 over the classes present or predicted; 0 for a class never predicted
            seen = ops.cast((truths + chosen) > 0, m.dtype)
            f1 = ops.divide_no_nan(2 * hits, truths + chosen)
            return ops.divide_no_nan(ops.sum(f1 * seen), ops.sum(seen))

        def reset_state(self):
            self.matrix.assign(ops.zeros_like(self.matrix))

    return ConfusionScore()


def compile_model(
    model: Any, params: dict[str, Any], task: str, monitor: str = "val_loss", n_classes: int = 2
) -> None:
    """Compile with the trial's optimizer and the task's loss, and with the one metric
    `monitor` needs: every other metric would be computed each step and never read (AUC alone
    adds a second to a binary model's first trace)."""
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
    loss = {
        "regression": "mse",
        "binary": "binary_crossentropy",
        "multiclass": "sparse_categorical_crossentropy",
    }[task]
    metrics = {
        "mae": lambda: "mae",
        "accuracy": lambda: "accuracy",
        "auc": lambda: keras.metrics.AUC(name="auc"),
        "macro_f1": lambda: _confusion_metric("macro_f1", task, n_classes),
        "balanced_accuracy": lambda: _confusion_metric("balanced_accuracy", task, n_classes),
    }
    name = monitor.removeprefix("val_")
    model.compile(
        optimizer=optimizer,
        loss=loss,
        metrics=[metrics[name]()] if name in metrics else [],
    )


class _EpochMonitor:
    """Checks each epoch's logs, keeps the record, decides early stopping, reports on.

    Early stopping works as Keras' EarlyStopping(restore_best_weights=True): stop after
    `patience` epochs without an improvement larger than `min_delta`, keep the best weights.
    """

    def __init__(
        self, model, monitor, direction, patience, min_delta, record, report, max_epochs,
        checkpointing=None,
    ):  # fmt: skip
        self.model, self.monitor, self.direction = model, monitor, direction
        self.max_epochs = max_epochs  # the last epoch ends training: no checkpoint after it
        self.patience, self.min_delta = patience, min_delta
        self.record, self.report = record, report
        self.checkpointing: Checkpointing | None = checkpointing
        self.best_weights: list | None = None
        self.since_improvement = 0
        self.last_saved = time.monotonic()

    def end_epoch(self, epoch: int, logs: dict[str, Any]) -> bool:
        """Handle one epoch's logs; True when training should stop."""
        self.record.epochs_trained = epoch + 1
        loss = logs.get("loss")
        if loss is None or not math.isfinite(loss):
            raise TrialFailed(f"training loss became {loss} at epoch {epoch + 1}")
        value = float(logs[self.monitor])
        if not math.isfinite(value):
            raise TrialFailed(f"{self.monitor} became {value} at epoch {epoch + 1}")
        self.record.history.append(value)
        best = self.record.best_value
        sign = 1 if self.direction == "minimize" else -1
        if best is None or sign * (best - value) > 0:
            self.record.best_value, self.record.best_epoch = value, epoch + 1
        if best is None or sign * (best - value) > self.min_delta:
            self.best_weights = self.model.get_weights()
            self.since_improvement = 0
        else:
            self.since_improvement += 1
        self.report(epoch, value)
        stop = self.since_improvement >= self.patience or epoch + 1 >= self.max_epochs
        saving = self.checkpointing
        if not stop and saving and saving.due(epoch + 1, time.monotonic() - self.last_saved):
            saving.save(self.state())
            self.last_saved = time.monotonic()
        return stop

    def restore_best(self) -> None:
        if self.best_weights is not None:
            self.model.set_weights(self.best_weights)

    def state(self) -> TrainingState:
        """This point of training, as a checkpoint holds it."""
        return TrainingState(
            epoch=self.record.epochs_trained,
            history=list(self.record.history),
            best_value=self.record.best_value,
            best_epoch=self.record.best_epoch,
            since_improvement=self.since_improvement,
            variables=[np.asarray(v) for v in self.model.variables],
            optimizer=[np.asarray(v) for v in self.model.optimizer.variables],
            best_weights=self.best_weights,
        )

    def resume(self, state: TrainingState) -> None:
        """Go on from `state`: the model's and optimizer's variables and the early-stopping
        state as they were. TrialFailed when the state is not this model's."""
        optimizer = self.model.optimizer
        if not optimizer.built:
            optimizer.build(self.model.trainable_variables)
        variables = [*self.model.variables, *optimizer.variables]
        arrays = [*state.variables, *state.optimizer]
        if (
            len(state.variables) != len(self.model.variables)
            or any(tuple(v.shape) != a.shape for v, a in zip(variables, arrays, strict=False))
            or len(variables) != len(arrays)
        ):
            raise TrialFailed(
                "its checkpoint does not fit this model (the model builder changed since it "
                "was saved)"
            )
        for variable, array in zip(variables, arrays, strict=True):
            variable.assign(array)
        self.record.epochs_trained = state.epoch
        self.record.history = list(state.history)
        self.record.best_value, self.record.best_epoch = state.best_value, state.best_epoch
        self.record.resumed_from_epoch = state.epoch
        self.since_improvement = state.since_improvement
        self.best_weights = state.best_weights


@dataclass(frozen=True)
class EngineChoice:
    """The engine a space's trials train with, whether their data is streamed, and why."""

    engine: str
    streamed: bool
    why: str

    def line(self) -> str:
        """What validate and start say of it."""
        how = (
            "the data streamed through tf.data, chunk by chunk each epoch"
            if self.streamed
            else "the data held in memory"
        )
        return f"training engine: {self.engine}, {how} ({self.why})"


def choose_engine(setting: str, spec: Any) -> EngineChoice:
    """`training.engine` resolved for the data `spec` names: auto streams data above the size
    threshold (data.streaming) through Keras' fit, and holds the rest in memory for the
    compiled epoch loop; epoch_loop and fit hold the data in memory, as asked."""
    streamed, why = streaming(spec)
    if setting != "auto":
        return EngineChoice(setting, False, f"training.engine: {setting}; {why}")
    if streamed:
        return EngineChoice("fit", True, f"training.engine: auto; {why}")
    return EngineChoice("epoch_loop", False, f"training.engine: auto; {why}")


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
    engine: str = "epoch_loop",
    class_weight: str = "none",
    checkpointing: Checkpointing | None = None,
    resume: TrainingState | None = None,
) -> float:
    """Fit `model` with early stopping; return the best value of `monitor`.

    `engine` is "epoch_loop" (one compiled call per epoch, for data in memory) or "fit"
    (Keras' own `model.fit`). Both run Keras' own train and test steps. `class_weight`
    (balanced or none) weighs each training row by its class (`class_weights`); validation
    rows are never weighted. `checkpointing` saves the state as it goes; `resume` goes on
    from a saved one, its epochs counted in `record` as if trained here.
    """
    if metric_direction(data.task, monitor) is None:
        offered = ", ".join(logged_metrics(data.task))
        raise SearchAborted(
            f"objective.metric {monitor!r} is not logged for a {data.task} task, so trials "
            f"can be neither scored nor pruned. Pick one of: {offered}."
        )
    n_classes = 2 if data.task == "binary" else max(data.n_outputs, 2)
    compile_model(model, params, data.task, monitor, n_classes)
    weights = None
    if data.task != "regression" and class_weight != "none":
        if isinstance(data, StreamedData):  # weighed per class in the pipeline
            weights = _balanced(data.class_counts).astype("float32")
        else:
            per_class = class_weights(data.y_train, class_weight)
            weights = per_class[data.y_train.astype("int64")].astype("float32")
    record.n_params = int(model.count_params())
    record.size_mb = weights_mb(model)
    record.engine = engine
    monitor_ = _EpochMonitor(
        model, monitor, direction, patience, min_delta, record, report, max_epochs, checkpointing
    )
    if resume is not None:
        monitor_.resume(resume)
    run = _train_epoch_loop if engine == "epoch_loop" else _train_fit
    started = time.perf_counter()
    try:
        first = 0 if resume is None else resume.epoch
        run(model, data, int(params["batch_size"]), first, max_epochs, seed, monitor_, weights)
    finally:
        record.train_seconds = time.perf_counter() - started
    monitor_.restore_best()
    if record.best_value is None:
        raise TrialFailed("training ended before the first epoch finished")
    return record.best_value


def _train_fit(model, data, batch_size, first, max_epochs, seed, monitor, weights=None) -> None:
    import tensorflow as tf

    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
    steps = max(1, math.ceil(data.n_train / batch_size))
    model.steps_per_execution = min(steps, MAX_STEPS_PER_EXECUTION)
    if isinstance(data, StreamedData):
        train_ds = data.training_batches(batch_size, seed)
        if weights is not None:  # here one weight per class, taken by each row's class
            per_class = tf.constant(weights)
            train_ds = train_ds.map(lambda x, y: (x, y, tf.gather(per_class, tf.cast(y, tf.int32))))
        val_ds = data.validation_batches(VALIDATION_BATCH)
        _fit(model, train_ds, val_ds, first, max_epochs, monitor)
        return
    rows = (data.x_train, data.y_train) + (() if weights is None else (weights,))
    train_ds = (
        tf.data.Dataset.from_tensor_slices(rows)
        .cache()
        .shuffle(len(data.x_train), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = (
        tf.data.Dataset.from_tensor_slices((data.x_val, data.y_val)).batch(VALIDATION_BATCH).cache()
    )
    _fit(model, train_ds, val_ds, first, max_epochs, monitor)


def _fit(model, train_ds, val_ds, first, max_epochs, monitor) -> None:
    import keras

    class Monitor(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if monitor.end_epoch(epoch, logs or {}):
                self.model.stop_training = True

    model.fit(
        train_ds,
        validation_data=val_ds,
        initial_epoch=first,
        epochs=max_epochs,
        callbacks=[Monitor()],
        shuffle=False,  # the dataset shuffles itself
        verbose=0,
    )


def _train_epoch_loop(
    model, data, batch_size, first, max_epochs, seed, monitor, weights=None
) -> None:
    import tensorflow as tf

    # Grappler's graph rewrites cost 0.1-0.25 s on each new model's first call, more than
    # they save over the epochs of the small models this loop trains (benchmarks/README.md,
    # "Training engines"). A process-wide setting: _train_fit turns it back on.
    tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    x, y, x_val, y_val = as_tensors(data)
    w = None if weights is None else tf.constant(weights)
    # Create the optimizer's and metrics' variables now, eagerly: created inside the
    # compiled function, they would make TensorFlow trace it twice.
    if not model.optimizer.built:  # a resumed trial's was built to take its checkpoint
        model.optimizer.build(model.trainable_variables)
    model.test_step((x_val[:2], y_val[:2]))
    run_epoch = epoch_function(model, len(data.x_train), len(data.x_val), batch_size)
    for epoch in range(first, max_epochs):
        train_logs, val_logs = run_epoch(x, y, x_val, y_val, tf.constant([seed, epoch]), w)
        logs = {k: float(v) for k, v in train_logs.items()}
        logs.update({f"val_{k}": float(v) for k, v in val_logs.items()})
        if monitor.end_epoch(epoch, logs):
            break


_tensor_cache: tuple[Any, tuple] | None = None


def as_tensors(data: PreparedData) -> tuple:
    """The prepared arrays as TensorFlow tensors, made once per process and dataset."""
    global _tensor_cache
    import tensorflow as tf

    if _tensor_cache is None or _tensor_cache[0] is not data:
        arrays = (data.x_train, data.y_train, data.x_val, data.y_val)
        _tensor_cache = (data, tuple(tf.constant(a) for a in arrays))
    return _tensor_cache[1]


def epoch_function(model: Any, n_train: int, n_val: int, batch_size: int) -> Any:
    """One compiled call per epoch: shuffle, every train step, then the validation steps.

    The steps are Keras' own `train_step` and `test_step`, so the loss, regularization,
    metrics, optimizer and clipping are exactly those of `fit`.
    """
    import tensorflow as tf

    train_steps = math.ceil(n_train / batch_size)
    val_steps = math.ceil(n_val / VALIDATION_BATCH)

    def run_steps(step_function, x, y, order, size, count, w=None):
        def body(step):
            rows = order[step * size : (step + 1) * size]
            batch = (tf.gather(x, rows), tf.gather(y, rows))
            step_function(batch if w is None else (*batch, tf.gather(w, rows)))
            return (step + 1,)

        for metric in model.metrics:
            metric.reset_state()
        tf.while_loop(lambda step: step < count, body, (tf.constant(0),))
        return model.get_metrics_result()

    @tf.function(autograph=False, reduce_retracing=True)
    def epoch(x, y, x_val, y_val, seed, w=None):
        order = tf.random.experimental.stateless_shuffle(tf.range(n_train), seed=seed)
        train_logs = run_steps(model.train_step, x, y, order, batch_size, train_steps, w)
        val_order = tf.range(n_val)
        val_logs = run_steps(model.test_step, x_val, y_val, val_order, VALIDATION_BATCH, val_steps)
        return train_logs, val_logs

    return epoch
