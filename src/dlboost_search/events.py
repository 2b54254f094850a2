"""What a running study tells whoever watches it: workers and backends send these, the runner
passes them on, the progress display and the CLI read them.

Events cross from worker processes to the pool (pool.py) through a pipe per worker, so
each is a small frozen dataclass of plain values (they pickle). `pid` names the worker process
an event comes from; the pool's and backends' own events leave it 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlboost_search.errors import DlboostError

__all__ = [
    "EpochEnded",
    "Event",
    "Noted",
    "Stopping",
    "StudyRunning",
    "TimeBudgetSpent",
    "TrialFinished",
    "TrialStarted",
    "TrialTimedOut",
    "TrialsLost",
    "Warned",
    "WorkerDone",
    "WorkerFailed",
    "WorkerInterrupted",
    "WorkerLost",
    "WorkerRetired",
    "WorkerStarted",
]


@dataclass(frozen=True)
class Event:
    pid: int = field(default=0, kw_only=True)


# Sent by a backend once the study's checks passed and it is stored. It reaches the display
# in the CLI's process carrying the study itself (a Hyperband worker sends it without, and
# the CLI's side fills it in).
@dataclass(frozen=True)
class StudyRunning(Event):
    study: Any  # the optuna.Study, for whoever reads it in the same process (the report)
    summary: Any  # study.StudySummary
    target: int | None  # finished trials; None: the time budget alone ends the search
    url: str
    workers: int
    reproducible: bool  # one worker sampling from search.seed
    budget: float | None = None  # the study's time budget, seconds (None: no limit)
    searched: float = 0.0  # seconds it had searched when this was sent
    devices: tuple[str, ...] = ()  # each worker's here, as trials record it ("cpu", "gpu:0")
    where: str = "here"  # where the workers run: "on the Ray cluster at ADDRESS (2 nodes)"


# Sent by a backend once the study has searched its time budget: no new trial starts, the
# running ones finish. Sent at once by a run that finds the budget spent already.
@dataclass(frozen=True)
class TimeBudgetSpent(Event):
    searched: float
    budget: float


@dataclass(frozen=True)
class Warned(Event):
    message: str


# What the user should hear of that is no warning, one line each: what preparing the data did
# (values imputed, rows dropped, columns ignored), before the first trial; a retry going on
# from a mid-trial checkpoint (topic "trial").
@dataclass(frozen=True)
class Noted(Event):
    message: str
    topic: str = "data"  # shown before the message


# Sent by the trial's worker (the Optuna backend) or by the Hyperband backend.
@dataclass(frozen=True)
class TrialStarted(Event):
    number: int
    params: dict[str, Any]


@dataclass(frozen=True)
class EpochEnded(Event):
    number: int
    epoch: int  # counted from 1


@dataclass(frozen=True)
class TrialFinished(Event):
    number: int
    state: str  # an optuna TrialState name: COMPLETE, PRUNED or FAIL
    value: float | None
    params: dict[str, Any]
    attrs: dict[str, Any]  # the trial's user attributes (records)
    failures_in_a_row: int | None = None  # as the worker counts them


# How a worker process ended, sent by the worker as its last event. A worker that sends none
# crashed (the pool finds out from its exit code).
@dataclass(frozen=True)
class WorkerDone(Event):
    rss_mb: float


@dataclass(frozen=True)
class WorkerRetired(Event):
    """A Hyperband worker ran its share of trials (recycling): a fresh one goes on."""

    rss_mb: float


@dataclass(frozen=True)
class WorkerFailed(Event):
    error: DlboostError  # the error that stops the search, raised again by the pool


@dataclass(frozen=True)
class WorkerInterrupted(Event):
    pass


# Sent by the pool.
@dataclass(frozen=True)
class WorkerStarted(Event):
    pass


@dataclass(frozen=True)
class WorkerLost(Event):
    exitcode: int | None
    trials: list[int]  # its trials, closed as failed and queued to run again


@dataclass(frozen=True)
class TrialsLost(Event):
    trials: list[int]  # running trials whose heartbeat stopped, failed and queued again


@dataclass(frozen=True)
class TrialTimedOut(Event):
    trials: list[int]
    limit: float  # training.trial_timeout_seconds


@dataclass(frozen=True)
class Stopping(Event):
    pass
