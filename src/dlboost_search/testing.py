"""Studies made in seconds, without training: for tests and benchmarks of reports and the
dashboard, which only read what trials left in the storage."""

from __future__ import annotations

import math
import random
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import TrialState, create_trial

from dlboost_search import records
from dlboost_search.spaces import CategoricalParam, FloatParam, IntParam, SearchSpace
from dlboost_search.study import create_or_check

__all__ = [
    "synthetic_study",
]


def _distribution(spec: Any) -> Any:
    if isinstance(spec, IntParam):
        return IntDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    if isinstance(spec, FloatParam):
        return FloatDistribution(spec.low, spec.high, log=spec.log, step=spec.step)
    assert isinstance(spec, CategoricalParam)
    return CategoricalDistribution(spec.choices)


def _draw(rng: random.Random, dist: IntDistribution | FloatDistribution) -> float | int:
    if dist.log:
        value = math.exp(rng.uniform(math.log(dist.low), math.log(dist.high)))
    else:
        value = rng.uniform(dist.low, dist.high)
    if dist.step:
        value = dist.low + round((value - dist.low) / dist.step) * dist.step
    return round(value) if isinstance(dist, IntDistribution) else min(value, dist.high)


def synthetic_study(
    space: SearchSpace,
    url: str,
    n_trials: int,
    *,
    seed: int = 0,
    states: tuple[float, float, float] = (0.6, 0.3, 0.1),
    devices: tuple[str, ...] = ("cpu",),
) -> optuna.Study:
    """A study of `space` holding `n_trials` made-up trials: complete, pruned and failed in
    the proportions `states`, with per-epoch curves and the user attributes real trials have.
    The value grows with the learning rate's distance to 3e-3 (in decades) and falls with
    units, so importances have something to find. The trials ran on `devices` in turn."""
    rng = random.Random(seed)
    study = create_or_check(space, url)
    distributions = {name: _distribution(spec) for name, spec in space.searched().items()}
    max_epochs = space.training.max_epochs
    trials = []
    for number in range(n_trials):
        params = {}
        for name, dist in distributions.items():
            if isinstance(dist, CategoricalDistribution):
                params[name] = rng.choice(dist.choices)
            else:
                params[name] = _draw(rng, dist)
        lr = params.get("learning_rate", 1e-3)
        final = 0.4 + 0.3 * abs(math.log10(lr / 3e-3)) + 20 / (params.get("units", 64) + 40)
        final += rng.gauss(0, 0.02)
        state = rng.choices(
            [TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL], weights=states
        )[0]
        half = max(1, max_epochs // 2)
        epochs = (
            rng.randint(half, max_epochs) if state == TrialState.COMPLETE else rng.randint(1, half)
        )
        # Falls to `final` at the last epoch, whatever the number of epochs.
        curve = {e: final + 1.0 / (e + 1) - 1.0 / epochs for e in range(epochs)}
        n_params = params.get("units", 64) * 12
        attrs = {
            records.EPOCHS_TRAINED: epochs,
            records.BEST_EPOCH: epochs,
            records.N_PARAMS: n_params,
            records.SIZE_MB: n_params * 4 / 1e6,
            # Timed only as a trial completes, as real trials are.
            records.LATENCY_MS: (
                round(0.1 + n_params / 5000 + rng.uniform(0, 0.05), 4)
                if state == TrialState.COMPLETE
                else None
            ),
            records.TRAIN_SECONDS: round(0.05 * epochs, 3),
            records.WORKER: "synthetic:0",
            records.DEVICE: devices[number % len(devices)],
        }
        if state == TrialState.FAIL:
            attrs[records.FAIL_REASON] = "training loss became nan at epoch 1"
            curve = {}
        trials.append(
            create_trial(
                state=state,
                value=min(curve.values()) if state != TrialState.FAIL else None,
                params=params,
                distributions=distributions,
                intermediate_values=curve,
                user_attrs=attrs,
            )
        )
    study.add_trials(trials)
    return study
