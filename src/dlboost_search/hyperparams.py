"""What each hyperparameter may be: its kind, its bounds and its default.

Search-space validation checks every value a YAML file could make a trial use against these
rules, so a trial never starts with a dropout of 1.5 or an optimizer Keras does not know.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "ParamRule",
    "TASK_METRICS",
    "TRAINING_PARAMS",
    "logged_metrics",
    "metric_direction",
]


@dataclass(frozen=True)
class ParamRule:
    kind: str  # "int", "float", "bool", "choice", or "any" (a custom builder's own)
    default: Any
    help: str
    low: float | None = None  # inclusive
    high: float | None = None  # inclusive unless high_open
    high_open: bool = False
    choices: tuple[Any, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` is not allowed, or None when it is."""
        if self.kind == "any":
            return None
        if self.kind == "choice":
            if value not in self.choices:
                return f"must be one of {', '.join(map(str, self.choices))}"
            return None
        if self.kind == "bool":
            return None if isinstance(value, bool) else "must be true or false"
        if self.kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
            return "must be a whole number, written without a decimal point"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"must be a number ({self.kind})"
        if self.low is not None and value < self.low:
            return f"must be at least {self.low:g}"
        if self.high is not None:
            if self.high_open and value >= self.high:
                return f"must be below {self.high:g}"
            if not self.high_open and value > self.high:
                return f"must be at most {self.high:g}"
        return None


OPTIMIZERS = ("adam", "adamw", "nadam", "rmsprop", "sgd")

# Hyperparameters of training, shared by every model family.
TRAINING_PARAMS: dict[str, ParamRule] = {
    "learning_rate": ParamRule("float", 1e-3, "optimizer step size", low=1e-7, high=10.0),
    "optimizer": ParamRule("choice", "adam", "Keras optimizer", choices=OPTIMIZERS),
    "clipvalue": ParamRule(
        "float", None, "clip each gradient element to [-v, v]", low=1e-6, high=1e6
    ),
    "clipnorm": ParamRule("float", None, "clip each gradient to this L2 norm", low=1e-6, high=1e6),
    "batch_size": ParamRule("int", 32, "rows per gradient step", low=1, high=1_000_000),
}

TASKS = ("regression", "binary", "multiclass")

# Metrics Keras logs for each task, with the direction that makes them better. Each is also
# logged with a "val_" prefix on the validation split.
# macro_f1 and balanced_accuracy weigh every class alike, however few its rows: the metrics of
# imbalanced classes (training.py computes them from each epoch's confusion matrix).
TASK_METRICS: dict[str, dict[str, str]] = {
    "regression": {"loss": "minimize", "mae": "minimize"},
    "binary": {
        "loss": "minimize",
        "accuracy": "maximize",
        "auc": "maximize",
        "macro_f1": "maximize",
        "balanced_accuracy": "maximize",
    },
    "multiclass": {
        "loss": "minimize",
        "accuracy": "maximize",
        "macro_f1": "maximize",
        "balanced_accuracy": "maximize",
    },
}


def logged_metrics(task: str) -> list[str]:
    """Every metric name a `task` model logs, validation ones first."""
    return [f"{prefix}{m}" for m in TASK_METRICS[task] for prefix in ("val_", "")]


def metric_direction(task: str, metric: str) -> str | None:
    """The direction of `metric` for `task`, or None when the task does not log it."""
    return TASK_METRICS[task].get(metric.removeprefix("val_"))
