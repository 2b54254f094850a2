"""Every name dlboost-search stores in a study, in one place, with the readers other modules use.

These names are the stored format (tests/test_stored_format.py reads databases an earlier
release wrote), so a name here is never renamed, only added. Where each one lives:

- what dlboost-search needs to run a study and people do not read (the search space, the
  data's fingerprints) is a *system* attribute of the study (`study_record`,
  `set_study_record`), which optuna-dashboard does not list and `optuna studies` does not
  print. Release 0.1.0 kept these as user attributes, where the 1,700-character space flooded
  both; for its studies `study_record` reads them there;
- what people read (the target, the release that made the study, and everything on a trial)
  is a user attribute, short, shown by optuna-dashboard and Optuna's CLI as it is.
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
    "CHECKPOINT",
    "CONTINUES",
    "DATA",
    "DATA_CHANGES",
    "DEVICE",
    "ENGINE",
    "EPOCHS_TRAINED",
    "FAIL_REASON",
    "HYPERBAND_STATE",
    "HYPERBAND_TRIAL",
    "INITIAL_EPOCH",
    "LATENCY_MS",
    "MAE",
    "MODELS",
    "N_PARAMS",
    "RESUMED_FROM_EPOCH",
    "RESUME_FROM",
    "RETRY_OF",
    "RMSE",
    "ROUND",
    "SEARCHED_SECONDS",
    "SIZE_MB",
    "SPEC",
    "TARGET",
    "TIMEOUT",
    "TRAINING",
    "TRAIN_SECONDS",
    "WORKER",
    "WORKER_RSS_MB",
    "WORKER_STARTED",
    "VERSION",
    "epochs_from_scratch",
    "epochs_trained",
    "fail_reason",
    "set_study_record",
    "study_record",
    "device_of",
    "worker_id",
    "worker_of",
]

# On the study, as system attributes (study_record): what dlboost-search reads.
SPEC = "dlboost_search"  # {"space": the space as a dict, "version": the release that made it}
DATA = "dlboost_data_sha256"  # the fingerprint of the files the study searches
DATA_CHANGES = "dlboost_data_changes"  # when, and from what to what, a change was accepted
# Where the trials' models are kept, and how many: {"store": a folder or s3:// URL (null: the
# default beside the SQLite file), "keep_models": search.keep_models}. Absent on studies made
# before models were kept (artifacts.py: the default store). Each model's own record is
# Optuna's: the trial's system attribute "artifacts:<id>", which optuna-dashboard reads.
MODELS = "dlboost_models"
# A random token the Hyperband backend also writes into keras-tuner's state folder (storage.
# claim_state_dir): the folder is named by the study alone, and is this study's only if the
# tokens match. Absent on studies made before, whose unmarked folder is taken as theirs.
HYPERBAND_STATE = "dlboost_hyperband_state"

# On the study, as user attributes: short, for people.
TARGET = "dlboost_target"  # the finished trials the study is being driven to (null: none)
TIMEOUT = "dlboost_timeout_seconds"  # its time budget: total search time (null: no limit)
SEARCHED_SECONDS = "dlboost_searched_seconds"  # the time it has searched, all runs together
VERSION = "dlboost_search_version"  # the release that created the study

# On each trial: who ran it and how it ended.
WORKER = "worker"  # "host:pid" of the worker process (worker_id)
WORKER_STARTED = "worker_started"  # when that process began
WORKER_RSS_MB = "worker_rss_mb"  # its memory after the trial
DEVICE = "device"  # what it trained on: "cpu", "gpu:0" (nvidia-smi's index); absent on older trials
FAIL_REASON = "fail_reason"  # why a FAIL trial failed, in words
RETRY_OF = "retry_of"  # on a retried trial: the number of the trial it runs again
ATTEMPT = "attempt"  # 2 for the first retry, and so on
# Mid-trial checkpoints (training.checkpoint_every): a running trial's latest, as a system
# attribute {"artifact_id": its id in the study's artifact store, "epoch": epochs it holds}
# (not for people: the file is deleted once no trial needs it); a retry queued for a lost
# trial carries its checkpoint as the user attribute RESUME_FROM, and records the epoch it went
# on from as RESUMED_FROM_EPOCH (training.TrainingRecord; the Hyperband backend's too).
CHECKPOINT = "dlboost_checkpoint"
RESUME_FROM = "resume_from"
RESUMED_FROM_EPOCH = "resumed_from_epoch"

# On each trial: what its training did (training.TrainingRecord).
ENGINE = "engine"
EPOCHS_TRAINED = "epochs_trained"
BEST_EPOCH = "best_epoch"
N_PARAMS = "n_params"  # model.count_params(): every weight, trainable or not
TRAIN_SECONDS = "train_seconds"
# What the model costs (limits.py): its weights' bytes / 10^6, from when training starts; the
# median milliseconds of a one-row prediction on the trial's device, once the trial completes
# (null on pruned trials). Absent on trials of releases before objective.constraints.
SIZE_MB = "size_mb"
LATENCY_MS = "latency_ms"
# A regression trial's validation error in the target's own units (its loss is in standardized,
# maybe log, units): what the report shows beside the objective.
RMSE = "rmse"
MAE = "mae"
TRAINING = (
    ENGINE,
    EPOCHS_TRAINED,
    BEST_EPOCH,
    N_PARAMS,
    SIZE_MB,
    LATENCY_MS,
    RMSE,
    MAE,
    TRAIN_SECONDS,
    RESUMED_FROM_EPOCH,
)

# On the trials the Hyperband backend copies from keras-tuner.
HYPERBAND_TRIAL = "hyperband_trial"  # keras-tuner's trial id: a trial is never copied twice
BACKEND = "backend"
BRACKET = "bracket"
ROUND = "round"
INITIAL_EPOCH = "initial_epoch"  # epochs it continued from, trained by the trial it continues
CONTINUES = "continues"  # keras-tuner's id of that trial


def study_record(study: Any, key: str) -> Any:
    """What the study keeps under `key` (SPEC, DATA, DATA_CHANGES), or None: its system
    attribute, else the user attribute a study made by release 0.1.0 keeps it in."""
    # Optuna's Study has no public reader of system attributes; its storage's is public.
    stored = study._storage.get_study_system_attrs(study._study_id)
    return stored[key] if key in stored else study.user_attrs.get(key)


def set_study_record(study: Any, key: str, value: Any) -> None:
    study._storage.set_study_system_attr(study._study_id, key, value)


def worker_id(pid: int | None = None) -> str:
    """The id a worker process writes on its trials: this host and `pid` (this process's)."""
    return f"{socket.gethostname()}:{os.getpid() if pid is None else pid}"


def worker_of(trial: Any) -> str | None:
    return trial.user_attrs.get(WORKER)


def device_of(trial: Any) -> str | None:
    return trial.user_attrs.get(DEVICE)


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
