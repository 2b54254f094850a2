"""The sampler and pruner a space's search settings make: TPE's random start-up trials,
successive halving's bootstrap."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from dlboost_search.spaces import HALVING_BOOTSTRAP, space_from_dict, suggest
from dlboost_search.study import make_pruner, make_sampler

PARAMS = {
    "units": {"type": "int", "low": 16, "high": 256, "log": True},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}


def sampled(sampler: optuna.samplers.BaseSampler, space: Any, n: int) -> list[dict[str, Any]]:
    """The parameters of `n` trials, each scored by a made-up objective TPE can model."""
    study = optuna.create_study(sampler=sampler)
    drawn = []
    for _ in range(n):
        trial = study.ask()
        params = suggest(trial, space)
        study.tell(trial, params["learning_rate"] * 100 + params["dropout"])
        drawn.append(params)
    return drawn


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
@pytest.mark.parametrize(
    ("setting", "startup"),
    [
        ({"startup_trials": 3}, 3),
        ({"trials": 30}, 15),  # by default half the trials...
        ({"trials": 300}, 20),  # ...at most 20
        ({"trials": 6}, 5),  # ...and at least 5
    ],
)
def test_tpe_samples_at_random_until_its_start_up_trials_are_done(setting, startup):
    space = space_from_dict(
        {"name": "t", "data": {"builtin": "diabetes"}, "params": PARAMS,
         "search": {"seed": 5, **setting}},
        "test",
    )  # fmt: skip
    tpe = sampled(make_sampler(space, trials_so_far=0), space, startup + 1)
    random = sampled(optuna.samplers.RandomSampler(seed=5), space, startup + 1)
    assert tpe[:startup] == random[:startup]
    assert tpe[startup] != random[startup]  # TPE's own choice from then on


@pytest.mark.parametrize("setting", [{}, {"halving_bootstrap": 0}, {"halving_bootstrap": 2}])
def test_successive_halving_promotes_from_a_rung_only_after_its_bootstrap(setting):
    space = space_from_dict(
        {"name": "t", "data": {"builtin": "diabetes"}, "params": PARAMS,
         "search": {"pruner": "successive_halving", **setting}},
        "test",
    )  # fmt: skip
    bootstrap = setting.get("halving_bootstrap", HALVING_BOOTSTRAP)
    study = optuna.create_study(pruner=make_pruner(space))
    stopped = []
    for value in (0.9, 0.8, 0.7, 0.6):  # each the best at the first rung (epoch 1) so far
        trial = study.ask()
        trial.report(value, step=1)
        stopped.append(trial.should_prune())
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    # The first `bootstrap` trials to reach the rung stop there, alone or not; then the best go on.
    assert stopped == [i < bootstrap for i in range(4)]
