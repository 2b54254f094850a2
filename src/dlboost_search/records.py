"""Every name dlboost-search stores in a study, in one place, with the readers other modules use.

Optuna keeps what we add as user attributes of the study and of each trial; these names are
the stored format (tests/test_stored_format.py reads databases an earlier release wrote), so
a name here is never renamed, only added. Optuna's own dashboard and CLI show them as they are.
"""

from __future__ import annotations

import os
import socket
from typing import Any

__all__ = [
    "ATTEMPT",
    "BACKEND",
    "BEST_EPOCH",
    "BRACKET",
    "CONTINUES",
    "DATA",
    "DATA_CHANGES",
    "ENGINE",
    "EPOCHS_TRAINED",
    "FAIL_REASON",
    "HYPERBAND_TRIAL",
    "INITIAL_EPOCH",
    "N_PARAMS",
    "RETRY_OF",
    "ROUND",
    "SEARCHED_SECONDS",
    "SPEC",
    "TARGET",
    "TIMEOUT",
    "TRAINING",
    "TRAIN_SECONDS",
    "WORKER",
    "WORKER_RSS_MB",
    "WORKER_STARTED",
    "epochs_from_scratch",
    "epochs_trained",
    "fail_reason",
    "worker_id",
    "worker_of",
]

# On the study.
SPEC = "dlboost_search"  # {"space": the space as a dict, "version": the release that made it}
TARGET = "dlboost_target"  # the finished trials the study is being driven to (null: none)
TIMEOUT = "dlboost_timeout_seconds"  # its time budget: total search time (null: no limit)
SEARCHED_SECONDS = "dlboost_searched_seconds"  # the time it has searched, all runs together
DATA = "dlboost_data_sha256"  # the fingerprint of the files the study searches
DATA_CHANGES = "dlboost_data_changes"  # when, and from what to what, a change was accepted

# On each trial: who ran it and how it ended.
WORKER = "worker"  # "host:pid" of the worker process (worker_id)
WORKER_STARTED = "worker_started"  # when that process began
WORKER_RSS_MB = "worker_rss_mb"  # its memory after the trial
FAIL_REASON = "fail_reason"  # why a FAIL trial failed, in words
RETRY_OF = "retry_of"  # on a retried trial: the number of the trial it runs again
ATTEMPT = "attempt"  # 2 for the first retry, and so on

# On each trial: what its training did (training.TrainingRecord).
ENGINE = "engine"
EPOCHS_TRAINED = "epochs_trained"
BEST_EPOCH = "best_epoch"
N_PARAMS = "n_params"
TRAIN_SECONDS = "train_seconds"
TRAINING = (ENGINE, EPOCHS_TRAINED, BEST_EPOCH, N_PARAMS, TRAIN_SECONDS)

# On the trials the Hyperband backend copies from keras-tuner.
HYPERBAND_TRIAL = "hyperband_trial"  # keras-tuner's trial id: a trial is never copied twice
BACKEND = "backend"
BRACKET = "bracket"
ROUND = "round"
INITIAL_EPOCH = "initial_epoch"  # epochs it continued from, trained by the trial it continues
CONTINUES = "continues"  # keras-tuner's id of that trial


def worker_id(pid: int | None = None) -> str:
    """The id a worker process writes on its trials: this host and `pid` (this process's)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def worker_of(trial: Any) -> str | None:
    return trial.user_attrs.get(WORKER)


def fail_reason(trial: Any, default: str | None = None) -> str | None:
    return trial.user_attrs.get(FAIL_REASON, default)


def epochs_trained(trial: Any) -> int:
    """Epochs the trial trained, from its record or, for a record-less trial, its curve."""
    return int(trial.user_attrs.get(EPOCHS_TRAINED) or len(trial.intermediate_values))


def epochs_from_scratch(trial: Any, max_epochs: int) -> int:
    """Epochs to the trial's best value when trained from scratch: a Hyperband trial continued
    from another trial's checkpoint counts that trial's epochs too."""
    attrs = trial.user_attrs
    best = attrs.get(BEST_EPOCH) or attrs.get(EPOCHS_TRAINED) or max_epochs
    return int(attrs.get(INITIAL_EPOCH) or 0) + int(best)
