"""One trial's set-up, shared by every place a model is trained: the Optuna worker, the
Hyperband backend and export-model.

A TrialContext is made once per process: it prepares the data and the model builder. Each trial
then gets a seeded model from it and fits it with the space's training settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from dlboost_search.data import (
    StreamedData,
    errors_in_target_units,
    prepare,
    prepare_streamed,
)
from dlboost_search.limits import latency_ms
from dlboost_search.models import model_builder
from dlboost_search.spaces import SearchSpace
from dlboost_search.training import (
    Checkpointing,
    TrainingRecord,
    TrainingState,
    choose_engine,
    train,
)

__all__ = [
    "TrialContext",
]

Report = Callable[[int, float], None]


class TrialContext:
    """The prepared data, model builder and training settings of one study, in this process.

    `observe(model, value)`, if given, sees every epoch of every trial before it is reported:
    what a benchmark needs to score models on its own held-out rows. `gpu`: whether TensorFlow
    sees a GPU in this process; training.mixed_precision takes Keras' mixed_float16 policy
    there only (float32 elsewhere, where float16 is slower).
    """

    def __init__(
        self,
        space: SearchSpace,
        source: str,
        observe: Callable[[Any, float], None] | None = None,
        gpu: bool = False,
    ):
        self.space, self.source, self.observe = space, source, observe
        if space.training.mixed_precision and gpu:
            import keras

            keras.mixed_precision.set_global_policy("mixed_float16")
        self.seed = space.search.seed or 0
        choice = choose_engine(space.training.engine, space.data)
        load = prepare_streamed if choice.streamed else prepare
        self.data = load(space.data, self.seed)
        space.check_task(self.data.task, source)
        self.build = model_builder(space, self.data, source)
        self.engine = choice.engine

    def model(self, params: dict[str, Any], number: int) -> Any:
        """Trial `number`'s model, built after seeding, so its initial weights repeat too."""
        self.seed_for(number)
        return self.build(params)

    def seed_for(self, number: int) -> None:
        import keras

        keras.utils.set_random_seed(self.seed + number)

    def fit(
        self,
        model: Any,
        params: dict[str, Any],
        number: int,
        *,
        record: TrainingRecord,
        report: Report = lambda epoch, value: None,
        max_epochs: int | None = None,
        save: Callable[[TrainingState], None] | None = None,
        resume: TrainingState | None = None,
    ) -> float:
        """Train with the space's early stopping, scored by its objective; return the best
        value, and record the trained model's latency. TrialFailed when the trial cannot give
        one (a NaN loss). `save` keeps a checkpoint as training.checkpoint_every asks;
        `resume` goes on from one."""
        training = self.space.training
        if self.observe is not None:
            report = self._observed(model, report)
        value = train(
            model,
            params,
            self.data,
            max_epochs=training.max_epochs if max_epochs is None else max_epochs,
            patience=training.early_stopping.patience,
            min_delta=training.early_stopping.min_delta,
            monitor=self.space.objective.metric,
            direction=self.space.direction,
            seed=self.seed + number,
            record=record,
            report=report,
            engine=self.engine,
            class_weight=training.class_weight,
            checkpointing=self._checkpointing(save),
            resume=resume,
        )
        # Once, on the best weights: what the model costs to serve (objective.constraints),
        # and a regression's error in the target's units (the report's words for the loss).
        record.latency_ms = latency_ms(model, self._one_row())
        if self.data.task == "regression" and not isinstance(self.data, StreamedData):
            predicted = model.predict(self.data.x_val, batch_size=4096, verbose=0)
            errors = errors_in_target_units(self.data, predicted)
            record.rmse, record.mae = round(errors["rmse"], 6), round(errors["mae"], 6)
        return value

    def _checkpointing(self, save: Callable[[TrainingState], None] | None) -> Any:
        epochs, seconds = self.space.training.checkpoint_policy()
        if save is None or (epochs is None and seconds is None):
            return None
        return Checkpointing(save, epochs, seconds)

    def _one_row(self) -> Any:
        """One validation row as the model takes it: from memory, or the first streamed."""
        if isinstance(self.data, StreamedData):
            inputs, _ = next(iter(self.data.validation_batches(1)))
            return inputs
        return self.data.x_val[:1]

    def retrain(
        self, model: Any, params: dict[str, Any], number: int, epochs: int, refit_all: bool
    ) -> None:
        """Train exactly `epochs` epochs, no early stopping: the trial already told how many
        pay off. With `refit_all` the validation rows are training rows too, so the training
        loss is what is watched."""
        data = self.data
        if refit_all and isinstance(data, StreamedData):
            data = data.with_validation_rows()
        elif refit_all:
            data = dataclasses.replace(
                data,
                x_train=np.concatenate([data.x_train, data.x_val]),
                y_train=np.concatenate([data.y_train, data.y_val]),
            )
        train(
            model,
            params,
            data,
            max_epochs=epochs,
            patience=epochs,
            min_delta=0.0,
            monitor="loss" if refit_all else self.space.objective.metric,
            direction="minimize" if refit_all else self.space.direction,
            seed=self.seed + number,
            record=TrainingRecord(),
            engine=self.engine,
            class_weight=self.space.training.class_weight,
        )

    def rows_for_retraining(self, refit_all: bool) -> int:
        return self.data.n_train + (self.data.n_val if refit_all else 0)

    def _observed(self, model: Any, report: Report) -> Report:
        observe = self.observe

        def observed(epoch: int, value: float) -> None:
            observe(model, value)
            report(epoch, value)

        return observed
