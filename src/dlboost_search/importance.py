"""Parameter importances that count the pruned trials, and say how far they can be trusted.

Under a pruner most trials stop early, so importances over the completed trials alone rest on
a handful of points. Every finished trial has a value at each epoch it reached, though: when
fewer than RANK_MIN_TRIALS trials completed, the importances are computed at the deepest epoch
that RANK_MIN_TRIALS finished trials (completed or pruned) reached, on each trial's best value
up to that epoch. Each figure comes with its spread over resamples of those trials, and with
too few trials there is no ranking at all, only the reason.

This module never imports TensorFlow.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

__all__ = [
    "EVALUATORS",
    "FANOVA_SAMPLE",
    "RANK_MIN_TRIALS",
    "RESAMPLES",
    "Basis",
    "basis_of",
    "importances",
    "sample",
]

# Importance evaluators, named as users meet them: the dashboard shows PED-ANOVA, fANOVA is the
# classic one. They answer different questions and often disagree; reports show both.
EVALUATORS = ("fANOVA", "PED-ANOVA")
# Below this many trials a ranking of eight parameters is noise (resamples reorder it freely).
RANK_MIN_TRIALS = 20
# Resamples (with replacement) of the trials behind a ranking: its spread is the stability shown.
RESAMPLES = 10
# fANOVA's forest costs about n^1.4 (1.5 s for 100 trials, 22 s for 800), so past this many
# trials it sees a fixed random sample of them; PED-ANOVA is cheap and sees them all.
FANOVA_SAMPLE = 300
# Resamples use a smaller forest: 4x faster, and the spread is what they are for.
_RESAMPLE_TREES = 16


@dataclass(frozen=True)
class Basis:
    """The trials importances rest on, each as a completed trial carrying the value it counts
    with; `epochs` is None when those are the trials' final values, else the epoch they were
    read at. `explains` says which value, in words."""

    trials: list[FrozenTrial]
    complete: int
    pruned: int
    epochs: int | None
    explains: str
    too_few: str | None = None


def _best(values: list[float], maximize: bool) -> float:
    return max(values) if maximize else min(values)


def basis_of(study: optuna.Study, metric: str) -> Basis:
    """Which trials, read at which epoch: the final values when RANK_MIN_TRIALS trials
    completed, else the deepest epoch that RANK_MIN_TRIALS finished trials reached."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState, create_trial

    maximize = study.direction == StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if len(complete) >= RANK_MIN_TRIALS:
        return Basis(complete, len(complete), 0, None, f"each trial's final {metric}")
    # Steps are 0-based epochs; the deepest step reached by enough pruned trials, with every
    # completed trial counting at any step (at worst with its final value).
    reached = sorted((max(t.intermediate_values) for t in pruned), reverse=True)
    needed = RANK_MIN_TRIALS - len(complete)
    if len(reached) < needed:
        finished = len(complete) + len(pruned)
        reason = (
            f"Too few finished trials to rank parameters: {finished} ({len(complete)} complete, "
            f"{len(pruned)} pruned), and a ranking needs at least {RANK_MIN_TRIALS}."
        )
        return Basis([], len(complete), len(pruned), None, "", reason)
    step = reached[needed - 1]
    counted = []
    for trial in complete + [t for t in pruned if max(t.intermediate_values) >= step]:
        upto = [v for s, v in trial.intermediate_values.items() if s <= step]
        last = max(trial.intermediate_values, default=-1)
        value = trial.value if last <= step or not upto else _best(upto, maximize)
        counted.append(
            create_trial(value=value, params=trial.params, distributions=trial.distributions)
        )
    n_pruned = len(counted) - len(complete)
    epochs = step + 1
    return Basis(
        counted,
        len(complete),
        n_pruned,
        epochs,
        f"each trial's best {metric} within its first {epochs} epoch{'s' * (epochs > 1)}",
    )


def sample(trials: list[Any], size: int) -> list[Any]:
    """At most `size` of `trials`, drawn the same way every time, in their original order."""
    if len(trials) <= size:
        return trials
    kept = set(random.Random(0).sample(range(len(trials)), size))
    return [t for i, t in enumerate(trials) if i in kept]


def _evaluate(
    name: str, trials: list[FrozenTrial], direction: Any, trees: int
) -> dict[str, float] | None:
    import optuna
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    study = optuna.create_study(direction=direction)
    study.add_trials(trials)
    evaluator = (
        FanovaImportanceEvaluator(n_trees=trees, seed=0)
        if name == "fANOVA"
        else PedAnovaImportanceEvaluator()
    )
    try:
        found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except (ValueError, RuntimeError):  # e.g. every trial has the same parameters
        return None
    return {k: float(v) for k, v in found.items()}


def _ranked(values: dict[str, float]) -> list[str]:
    # Ties (common: PED-ANOVA gives many parameters 0) in name order, the same on every run.
    return sorted(values, key=lambda p: (-values[p], p))


def importances(study: optuna.Study, basis: Basis, name: str) -> dict[str, Any]:
    """One method's importances on `basis`, with each figure's spread over RESAMPLES resamples
    of the same trials (10th to 90th percentile) and how often the top parameter stays first.
    Plain data, as the JSON report gives it; `params` is None when there is no ranking."""
    counts = {
        "n_trials": len(basis.trials) or basis.complete + basis.pruned,
        "complete": basis.complete,
        "pruned": basis.pruned,
        "epochs": basis.epochs,
        "explains": basis.explains,
    }
    trials = sample(basis.trials, FANOVA_SAMPLE) if name == "fANOVA" else basis.trials
    found = _evaluate(name, trials, study.direction, 64) if trials else None
    if not found:
        reason = basis.too_few or "Every trial tried the same parameters: nothing to rank."
        return {**counts, "params": None, "too_few": reason}
    if len(trials) < len(basis.trials):
        counts["sampled"] = len(trials)
    rng = random.Random(0)
    spreads: dict[str, list[float]] = {p: [] for p in found}
    first = _ranked(found)[0]
    stays_first = 0
    for _ in range(RESAMPLES):
        drawn = [trials[rng.randrange(len(trials))] for _ in trials]
        again = _evaluate(name, drawn, study.direction, _RESAMPLE_TREES) or {}
        for param, values in spreads.items():
            values.append(again.get(param, 0.0))
        stays_first += bool(again) and _ranked(again)[0] == first
    params = {}
    for param in _ranked(found):
        spread = sorted(spreads[param])
        params[param] = {
            "importance": round(found[param], 4),
            "low": round(min(spread[len(spread) // 10], found[param]), 4),
            "high": round(max(spread[-1 - len(spread) // 10], found[param]), 4),
        }
    return {**counts, "params": params, "resamples": RESAMPLES, "top_stays_first": stays_first}
