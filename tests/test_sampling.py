"""The sampler a space's search settings make: TPE's random start-up trials."""

from __future__ import annotations

from typing import Any

import optuna
import pytest

from dlboost_search.spaces import space_from_dict, suggest
from dlboost_search.study import make_sampler

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
