"""Limits on the model a study finds (`objective.constraints`): what each trial's model costs,
which trials keep to the limits, the best of those, and the trade-off between score and size.

Every trial records its model's parameter count and weights' size as it starts training, and
the median time of a one-row prediction as it completes (records.N_PARAMS, SIZE_MB,
LATENCY_MS). Feasibility is worked out here from those records and the limits the study stores,
the same way for both backends and every sampler; the Optuna worker also hands each limit's
excess to Optuna (`Trial.set_constraint`), which TPE uses to steer away from what is too big.

A study without limits has every complete trial feasible: its best trial is Optuna's.
This module imports TensorFlow only inside the functions that measure a model.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import TYPE_CHECKING, Any

from dlboost_search import records
from dlboost_search.spaces import ConstraintsSpec

if TYPE_CHECKING:
    import optuna

__all__ = [
    "LATENCY_CALLS",
    "LATENCY_WARMUP",
    "MEASURES",
    "best_trial",
    "constraints_of",
    "describe",
    "excess",
    "feasible",
    "latency_ms",
    "none_feasible",
    "over",
    "pareto_front",
    "ranked",
    "smallest_within",
    "weights_mb",
]

# A one-row prediction is timed LATENCY_CALLS times after LATENCY_WARMUP untimed calls (the
# first traces the compiled function); the median is recorded.
LATENCY_WARMUP = 3
LATENCY_CALLS = 20
# Each limit and the trial attribute it bounds.
MEASURES = {
    "max_params": records.N_PARAMS,
    "max_size_mb": records.SIZE_MB,
    "max_latency_ms": records.LATENCY_MS,
}
_UNITS = {"max_params": "parameters", "max_size_mb": "MB", "max_latency_ms": "ms"}


def weights_mb(model: Any) -> float:
    """The bytes of the model's weights (every variable, at its dtype's width) / 10^6: what its
    saved file grows with, the same on every machine."""
    import tensorflow as tf

    size = sum(math.prod(w.shape) * tf.as_dtype(w.dtype).size for w in model.weights)
    return round(size / 1e6, 6)


def latency_ms(model: Any, rows: Any) -> float | None:
    """The median milliseconds of one prediction of `rows` (one row) on this process's device,
    compiled as a served model would be; None when the model cannot predict one row alone."""
    import tensorflow as tf

    predict = tf.function(lambda x: model(x, training=False))
    x = tf.constant(rows)

    def once() -> float:
        started = time.perf_counter()
        # Back on the host: on a GPU the call only queues the work.
        tf.nest.map_structure(lambda t: t.numpy(), predict(x))
        return time.perf_counter() - started

    try:
        for _ in range(LATENCY_WARMUP):
            once()
        timed = [once() for _ in range(LATENCY_CALLS)]
    except Exception:
        # A custom builder's model may take fixed batches only. The trial keeps its score; a
        # latency limit counts it as over (feasible()).
        return None
    return round(statistics.median(timed) * 1000, 4)


def excess(constraints: ConstraintsSpec, attrs: dict[str, Any]) -> dict[str, float]:
    """How far over each limit a trial is, as a fraction of the limit (0.5: 50 % over; 0 or
    less: within), for the limits whose measure the trial has: Optuna's constraint values.
    Fractions, not units, so that TPE's sum of excesses weighs every limit alike."""
    found = {}
    for key, limit in constraints.given().items():
        value = attrs.get(MEASURES[key])
        if value is not None:
            found[key] = value / limit - 1
    return found


def over(constraints: ConstraintsSpec, attrs: dict[str, Any]) -> list[str]:
    """The limits a trial does not keep to, in words; a limit whose measure the trial lacks
    counts as not kept."""
    found = []
    for key, limit in constraints.given().items():
        value = attrs.get(MEASURES[key])
        if value is None:
            found.append(f"{key} {_shown(key, limit)} (not measured)")
        elif value > limit:
            found.append(f"{key} {_shown(key, limit)} ({_shown(key, value)})")
    return found


def feasible(constraints: ConstraintsSpec, trial: optuna.trial.FrozenTrial) -> bool:
    return not over(constraints, trial.user_attrs)


def describe(constraints: ConstraintsSpec) -> str:
    """The limits in words: "max_params 100,000, max_latency_ms 5 ms"."""
    return ", ".join(f"{k} {_shown(k, v)}" for k, v in constraints.given().items())


def _shown(key: str, value: float) -> str:
    if key == "max_params":
        return f"{int(value):,}"
    return f"{value:.4g} {_UNITS[key]}"


def constraints_of(study: optuna.Study) -> ConstraintsSpec:
    """The limits the study was created with; none for a study made before they existed, or
    not by dlboost-search."""
    spec = records.study_record(study, records.SPEC)
    space = spec.get("space") if isinstance(spec, dict) else None
    objective = space.get("objective") if isinstance(space, dict) else None
    raw = objective.get("constraints") if isinstance(objective, dict) else None
    return ConstraintsSpec.model_validate(raw or {})


def ranked(
    study: optuna.Study, constraints: ConstraintsSpec | None = None
) -> list[optuna.trial.FrozenTrial]:
    """The study's complete, feasible trials with a finite value, best first (the earlier
    trial first on a tie). `constraints`: the study's, when the caller has them."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    constraints = constraints_of(study) if constraints is None else constraints
    sign = 1 if study.direction == StudyDirection.MINIMIZE else -1
    kept = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value) and feasible(constraints, t)
    ]
    return sorted(kept, key=lambda t: (sign * t.value, t.number))


def best_trial(
    study: optuna.Study, constraints: ConstraintsSpec | None = None
) -> optuna.trial.FrozenTrial | None:
    """The best feasible trial: what `best`, `status`, the report and export-model show and
    use. None when no complete trial keeps to the limits."""
    found = ranked(study, constraints)
    return found[0] if found else None


def none_feasible(study: optuna.Study, constraints: ConstraintsSpec) -> str:
    """Why a study with complete trials has no best one: none keeps to the limits."""
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    # The nearest: the least excess over the limits, each as a fraction of its limit.
    nearest = min(
        complete,
        key=lambda t: (
            sum(max(0.0, v) for v in excess(constraints, t.user_attrs).values()),
            t.number,
        ),
    )
    name, missed = study.study_name, ", ".join(over(constraints, nearest.user_attrs))
    return (
        f"study {name!r}: none of its {len(complete)} complete trials keeps to "
        f"objective.constraints ({describe(constraints)}), so there is no best trial; the "
        f"nearest, trial {nearest.number}, is over {missed}. "
        f"`dlboost-search report {name}` shows every trial's parameters, size and latency. The "
        f"limits are part of the study: to search under others, start a study of another name."
    )


def pareto_front(
    trials: list[optuna.trial.FrozenTrial], measure: str, minimize: bool
) -> list[optuna.trial.FrozenTrial]:
    """The trials no other trial beats on both the value and `measure` (a trial attribute,
    lower is better) without losing on either, by increasing `measure`. Trials without the
    measure are left out."""
    sign = 1 if minimize else -1
    measured = [t for t in trials if t.user_attrs.get(measure) is not None]
    measured.sort(key=lambda t: (t.user_attrs[measure], sign * t.value, t.number))
    front, best_so_far = [], math.inf
    for t in measured:  # cheapest first: on the front when better than every cheaper one
        if sign * t.value < best_so_far:
            front.append(t)
            best_so_far = sign * t.value
    return front


def smallest_within(
    trials: list[optuna.trial.FrozenTrial], fraction: float, minimize: bool
) -> optuna.trial.FrozenTrial:
    """Of `trials` (feasible, best first), the one with the fewest parameters whose value is
    within `fraction` of the best one's (0.01: 1 % of its magnitude), the better value first
    on a tie. A trial without a parameter count is never picked over the best."""
    best = trials[0]
    margin = fraction * abs(best.value)
    sign = 1 if minimize else -1
    close = [
        t
        for t in trials
        if sign * (t.value - best.value) <= margin and t.user_attrs.get(records.N_PARAMS)
    ]
    if not close:
        return best
    return min(close, key=lambda t: (t.user_attrs[records.N_PARAMS], sign * t.value, t.number))
