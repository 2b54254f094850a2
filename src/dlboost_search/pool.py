"""Worker processes for both backends (WorkerPool: start, relay events, time limits,
recycling with a standby successor), and the Optuna backend's driver: a pool of recycled
workers takes a study to its target number of finished trials, or to the end of its time
budget (no new trial starts then; the running ones finish).

It never imports TensorFlow. It starts workers, relays their events to whoever watches, and
after each worker exits closes any trial the worker left RUNNING (a crash, a kill), so the
storage never holds a trial that nobody is running.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from optuna.trial import TrialState

from dlboost_search import devices, events, records
from dlboost_search.errors import Interrupted, SearchAborted
from dlboost_search.spaces import SearchSpace
from dlboost_search.storage import RetryLostTrial, storage_option
from dlboost_search.study import (
    LostTrials,
    SearchClock,
    StudySummary,
    fail_trial,
    summarize,
    target_of,
)
from dlboost_search.worker import INTERRUPTED_REASON, run_worker

__all__ = [
    "DEFAULT_RECYCLE_EVERY",
    "SHUTDOWN_GRACE_S",
    "Worker",
    "WorkerPool",
    "clock_kept",
    "close_abandoned_trials",
    "drive",
    "lost_in_a_row",
    "stop_all",
    "stopped_together",
    "timed_out_reason",
]

EventHandler = Callable[[events.Event], None]

DEFAULT_RECYCLE_EVERY = 50
# A worker this many trials from retiring gets a standby successor, which imports TensorFlow
# (several seconds) while the old one finishes, so no trial waits for an import.
STANDBY_LEAD_TRIALS = 10
SHUTDOWN_GRACE_S = 120  # how long a worker may take to close its trial after Ctrl-C
WITHDRAWN_REASON = "the search ended as the worker started; `dlboost-search resume` goes on"
# A worker's last event says how it ended; a worker that sent none crashed.
WORKER_OUTCOMES = (
    events.WorkerDone,
    events.WorkerRetired,
    events.WorkerFailed,
    events.WorkerInterrupted,
)


@dataclass
class Worker:
    process: Any
    started: datetime
    outcome: events.Event | None = None
    timed_out: int | None = None  # the trial it was stopped in, past the time limit
    # The trial it is training and when that began (time.monotonic), between its events.
    trial: tuple[int, float] | None = None
    trials_started: int = 0
    go: Any = None  # a standby's start signal
    # The read end of the worker's own event pipe; None once the worker closed it (it exited).
    # One pipe per worker, not one queue for all: a worker killed in the middle of a write
    # (SIGKILL, the OOM killer) would leave a shared queue's write lock held for ever, and
    # every other worker hung at exit waiting to flush its events.
    events: Any = None
    slot: int = 0  # which of the pool's placements (devices.plan) it runs on
    # What it writes on its trials as their worker (records.worker_id): host and process id.
    id: str | None = None
    withdrawn: bool = False  # never placed (a Ray task waiting for a node) when the search ended


class WorkerPool:
    """The worker processes of this runner, each with the pipe its events arrive on.

    `entry` is what each process runs, called as entry(name, url, space, target,
    recycle_every, failures_in_a_row, events_out, threads, sole, go, deadline=deadline,
    placement=placement, **kwargs of `start`): `deadline` (time.time(), None for none) is when
    the study's time budget is spent, after which a worker starts no trial; `placement` the
    device it trains on. `placements`: one per worker (devices.plan), each worker taking a
    free one as it starts; default: `size` workers sharing the cores."""

    def __init__(
        self,
        name: str,
        url: str,
        space: SearchSpace,
        size: int,
        recycle_every: int,
        sole: bool,
        target: int | None,
        entry: Callable[..., None] = run_worker,
        deadline: float | None = None,
        placements: Sequence[devices.Placement] | None = None,
    ):
        self.name, self.url, self.space, self.entry = name, url, space, entry
        self.recycle_every, self.target, self.deadline = recycle_every, target, deadline
        self.sole = sole and size == 1  # the study's only worker: reproducible sampling
        self.context = multiprocessing.get_context("spawn")
        self.workers: dict[int, Worker] = {}
        # Several workers share the cores; one alone keeps TensorFlow's defaults.
        self.placements = list(placements or devices.plan(size, None, [], devices.cpu_cores()))
        self.standby: Worker | None = None
        self.where = "here"  # where the workers run, as the progress says it

    def start(self, failures_in_a_row: int, **kwargs: Any) -> int:
        """A worker that runs trials now: the standby if one is ready (and nothing is passed in
        `kwargs`), else a new process."""
        if self.standby is not None and kwargs:
            self.discard_standby()
        taken = {w.slot for w in self.workers.values()}
        free = [i for i in range(len(self.placements)) if i not in taken] or [0]
        # A standby runs on the device of the worker it was started for: it waits until
        # that worker has gone.
        if self.standby is not None and self.standby.slot in free:
            worker, self.standby = self.standby, None
            worker.go.set()
            worker.started = datetime.now()  # its trials start from here
            self.workers[worker.process.pid] = worker
            return worker.process.pid
        worker = self._spawn(failures_in_a_row, go=None, kwargs=kwargs, slot=free[0])
        self.workers[worker.process.pid] = worker
        return worker.process.pid

    def _spawn(self, failures_in_a_row: int, go: Any, kwargs: dict[str, Any], slot: int) -> Worker:
        placement = self.placements[slot]
        events_in, events_out = self.context.Pipe(duplex=False)
        process = self.context.Process(
            target=self.entry,
            args=(
                self.name,
                self.url,
                self.space,
                self.target,
                self.recycle_every,
                failures_in_a_row,
                events_out,
                placement.threads,
                self.sole,
                go,
            ),  # fmt: skip
            kwargs={**kwargs, "deadline": self.deadline, "placement": placement},
            name=f"dlboost-worker-{self.name}",
        )
        process.start()
        events_out.close()  # the worker's copy alone: its exit is the pipe's end
        return Worker(
            process, datetime.now(), go=go, events=events_in, slot=slot,
            id=records.worker_id(process.pid),
        )  # fmt: skip

    def prepare_successor(self, worker: Worker) -> None:
        """Start a standby when `worker` nears its last trial (one standby at a time)."""
        if (
            self.standby is None
            and self.recycle_every > 1
            and worker.trials_started == max(1, self.recycle_every - STANDBY_LEAD_TRIALS)
        ):
            self.standby = self._spawn(0, go=self.context.Event(), kwargs={}, slot=worker.slot)

    def discard_standby(self) -> None:
        if self.standby is not None:
            self.standby.process.kill()
            self.standby.process.join()
            if self.standby.events is not None:
                self.standby.events.close()
            self.standby = None

    def relay(self, on_event: EventHandler, timeout: float) -> int | None:
        """Pass on the events of the next `timeout` seconds; return the last failures-in-a-row
        count a worker reported, if any."""
        failures = None
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            listening = {w.events: w for w in self._all() if w.events is not None}
            ready = multiprocessing.connection.wait(list(listening), timeout=left)
            if not ready:
                break
            for events_in in ready:
                worker = listening[events_in]
                try:
                    event = events_in.recv()
                except (EOFError, OSError):  # the worker exited (or died mid-write)
                    events_in.close()
                    worker.events = None
                    continue
                reported = self._pass_on(worker, event, on_event)
                failures = failures if reported is None else reported
        return failures

    def _pass_on(self, worker: Worker, event: events.Event, on_event: EventHandler) -> int | None:
        """Hand `worker`'s event on and keep track of the worker; return the failures in a
        row it reports, if it does."""
        on_event(event)
        if worker is not self.standby:
            self._note(worker, event)
        return event.failures_in_a_row if isinstance(event, events.TrialFinished) else None

    def _all(self) -> list[Worker]:
        return [*self.workers.values(), *([self.standby] if self.standby else [])]

    def _note(self, worker: Worker, event: events.Event) -> None:
        """Keep track of what `worker` is doing from the event it sent."""
        if isinstance(event, events.TrialStarted):
            worker.trial = (event.number, time.monotonic())
            worker.trials_started += 1
            self.prepare_successor(worker)
        elif isinstance(event, events.TrialFinished):
            worker.trial = None
        elif isinstance(event, WORKER_OUTCOMES):
            worker.outcome = event

    def stop_overdue(self, limit: float | None) -> None:
        """Kill the workers whose trial has run longer than `limit` seconds: stuck in a read
        or a deadlock, a worker may never return to Python to notice a polite request."""
        if limit is None:
            return
        for worker in self.workers.values():
            if worker.trial and time.monotonic() - worker.trial[1] > limit:
                worker.timed_out = worker.trial[0]
                worker.process.kill()

    def exited(self) -> list[tuple[int, Worker]]:
        """Remove and return the workers whose process has ended and whose events were all
        relayed (a standby that ended before it was needed is just dropped: it ran no trial)."""
        if self.standby is not None and not self.standby.process.is_alive():
            self.discard_standby()
        ended = [
            (pid, w)
            for pid, w in self.workers.items()
            if not w.process.is_alive() and (w.events is None or not w.events.poll())
        ]
        for pid, worker in ended:
            worker.process.join()
            if worker.events is not None:
                worker.events.close()
            del self.workers[pid]
        return ended

    def withdraw_unstarted(self) -> None:
        """Stop the workers that have not started, once the search needs no more: none here
        (a process starts at once and sees the target and the deadline itself)."""

    def running_trials(self, running: list[Any]) -> set[int]:
        """The numbers of the `running` trials that this pool's workers are training."""
        ours = {w.id for w in self.workers.values() if w.id is not None}
        return {t.number for t in running if records.worker_of(t) in ours}

    def death(self, worker: Worker) -> str:
        """Why a worker that sent no outcome ended, as its lost trials' fail_reason says."""
        return f"the worker process died (exit code {worker.process.exitcode})"

    def interrupt(self) -> None:
        self.discard_standby()
        for worker in self.workers.values():
            if worker.process.is_alive():
                os.kill(worker.process.pid, signal.SIGINT)


def drive(
    study: Any,
    url: str,
    space: SearchSpace,
    workers: int,
    recycle_every: int,
    on_event: EventHandler,
    sole: bool = True,
    placements: Sequence[devices.Placement] | None = None,
    make_pool: Callable[..., WorkerPool] = WorkerPool,
) -> StudySummary:
    """Run worker processes on `study` (stored at `url`, with `space`) until it has its
    target of finished trials or its time budget is spent; fail and retry the trials whose
    worker or machine is gone. `placements`: the device of each of the `workers` (default:
    the cores, shared). `make_pool`: the pool's class, called as WorkerPool is (a Ray
    cluster's pool places the workers on its nodes: raypool.RayPool)."""
    name = study.study_name
    target = target_of(study)
    clock = SearchClock(study)
    pool = make_pool(
        name, url, space, workers, recycle_every, sole, target, deadline=clock.deadline(),
        placements=placements,
    )  # fmt: skip
    lost_trials = LostTrials(space.search)
    failures_in_a_row = 0
    out_of_time = False

    def interrupted() -> Interrupted:
        # Workers close their own trials; the pool closes what a worker could not.
        running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        closed = pool.running_trials(running) | set(stop_all(study, pool, on_event))
        queued = [t for t in study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
                  if t.user_attrs.get(records.RESUME_FROM)]  # fmt: skip
        goes_on = (
            f" ({len(queued)} of them will go on from a mid-trial checkpoint)" if queued else ""
        )
        return Interrupted(
            f"stopped by the user; {len(closed) or 'no'} running trial(s) closed as failed"
            f"{goes_on}, nothing else lost. Continue with `dlboost-search resume {name}"
            f"{storage_option(url)}`."
        )

    with clock_kept(clock), stopped_together(study, pool, on_event, interrupted):
        on_event(
            events.StudyRunning(
                study,
                summarize(study),
                target,
                url,
                workers,
                pool.sole,
                budget=clock.budget,
                searched=clock.searched(),
                devices=tuple(p.device for p in pool.placements),
                where=pool.where,
            )  # fmt: skip
        )
        while True:
            lost = lost_trials(study)
            if lost:
                on_event(events.TrialsLost(lost))
            if not out_of_time and clock.spent():
                out_of_time = True  # the workers see their deadline: they finish their trials
                on_event(events.TimeBudgetSpent(clock.searched(), clock.budget))
            summary = summarize(study)
            reached = target is not None and summary.finished >= target
            if reached or out_of_time:
                pool.withdraw_unstarted()
                if not pool.workers:
                    return summary
            # Running trials of other machines count as work under way; each of our workers
            # as one trial, whether it is training or still importing TensorFlow.
            running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
            elsewhere = len(running) - len(pool.running_trials(running))
            while (
                len(pool.workers) < workers
                and not out_of_time
                and (target is None or summary.finished + elsewhere + len(pool.workers) < target)
            ):
                on_event(events.WorkerStarted(pid=pool.start(failures_in_a_row)))
            reported = pool.relay(on_event, timeout=1.0)
            failures_in_a_row = failures_in_a_row if reported is None else reported
            pool.stop_overdue(space.training.trial_timeout_seconds)
            for _, worker in pool.exited():
                failures_in_a_row = _worker_ended(
                    study, url, space, pool, worker, failures_in_a_row, on_event
                )
            clock.tick()


@contextmanager
def clock_kept(clock: SearchClock) -> Iterator[None]:
    """Store the time searched when a backend's drive ends, whatever way it ends."""
    try:
        yield
    finally:
        clock.save()


@contextmanager
def stopped_together(
    study: Any, pool: WorkerPool, on_event: EventHandler, interrupted: Callable[[], Exception]
) -> Iterator[None]:
    """While a backend drives `pool`: SIGTERM stops it as Ctrl-C does, raising what
    `interrupted()` returns (which stops the workers and says what was closed); any other
    error stops the workers too, and goes on."""
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    except KeyboardInterrupt:
        on_event(events.Stopping())
        raise interrupted() from None
    except BaseException:
        stop_all(study, pool, on_event)
        raise
    finally:
        pool.discard_standby()
        signal.signal(signal.SIGTERM, previous_sigterm)


def _worker_ended(study, url, space, pool, worker, failures_in_a_row, on_event) -> int:
    """Close what an exited worker left behind; raise if the search must stop."""
    outcome = worker.outcome
    if worker.withdrawn:  # it may have started as it was withdrawn: its trial goes on later
        if worker.id is not None:
            close_abandoned_trials(
                study, worker.id, worker.started, WITHDRAWN_REASON, retry=space.search.retries
            )
        return failures_in_a_row
    if worker.timed_out is None and isinstance(outcome, events.WorkerInterrupted):
        # Signalled directly, not through us.
        close_abandoned_trials(study, worker.id, worker.started, INTERRUPTED_REASON)
        raise KeyboardInterrupt
    if worker.timed_out is None and isinstance(outcome, events.WorkerFailed):
        close_abandoned_trials(study, worker.id, worker.started, "the worker stopped (fatal)")
        raise outcome.error
    if worker.timed_out is None and isinstance(outcome, events.WorkerDone):
        close_abandoned_trials(study, worker.id, worker.started, "the worker stopped (done)")
        return failures_in_a_row
    if worker.timed_out is not None:  # not retried: it would most likely hang again
        limit = space.training.trial_timeout_seconds
        lost = close_abandoned_trials(study, worker.id, worker.started, timed_out_reason(limit))
        on_event(events.TrialTimedOut(lost, limit))
    else:
        lost = close_abandoned_trials(
            study, worker.id, worker.started, pool.death(worker), retry=space.search.retries
        )
        on_event(events.WorkerLost(worker.process.exitcode, lost))
    failures_in_a_row += 1
    lost_in_a_row(failures_in_a_row, worker, space, study.study_name, url)
    return failures_in_a_row


def timed_out_reason(limit: float) -> str:
    """The fail_reason of a trial whose worker was stopped past its time limit."""
    return (
        f"still running after training.trial_timeout_seconds ({limit} s): the worker was "
        f"stopped and the search moved on"
    )


def lost_in_a_row(
    failures_in_a_row: int, worker: Worker, space: SearchSpace, name: str, url: str
) -> None:
    """Stop the search once workers stopped past the time limit, or died, too often in a row."""
    if failures_in_a_row < space.search.max_consecutive_failures:
        return
    if worker.timed_out is not None:
        raise SearchAborted(
            f"{failures_in_a_row} trials in a row ran past training.trial_timeout_seconds "
            f"({space.training.trial_timeout_seconds} s). Raise the limit if trials are "
            f"just slow (see train_seconds in `dlboost-search report`), or look for what "
            f"blocks them, then `dlboost-search resume {name}{storage_option(url)}`."
        )
    code = worker.process.exitcode  # None: a Ray worker, whose exit code Ray does not pass on
    raise SearchAborted(
        f"the worker process died {failures_in_a_row} times in a row ("
        f"{'its process or node was lost' if code is None else f'last exit code {code}'}). "
        f"Look for out-of-memory kills in the system log, lower units/batch_size, then "
        f"`dlboost-search resume {name}{storage_option(url)}`."
    )


def stop_all(study: Any, pool: WorkerPool, on_event: EventHandler) -> list[int]:
    """Ask every worker to close its trial and exit, wait, and close what they left."""
    # A second Ctrl-C or a SIGTERM must not cut short the workers closing their trials.
    previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    closed: list[int] = []
    try:
        pool.interrupt()
        deadline = time.monotonic() + SHUTDOWN_GRACE_S
        while pool.workers:
            pool.relay(on_event, timeout=0.2)
            if time.monotonic() > deadline:
                for worker in pool.workers.values():
                    worker.process.kill()
            for _, worker in pool.exited():
                closed += close_abandoned_trials(
                    study, worker.id, worker.started, INTERRUPTED_REASON
                )
        return closed
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def close_abandoned_trials(
    study: Any, worker: str | None, since: datetime, reason: str, retry: int = 0
) -> list[int]:
    """Mark FAIL the trials a worker left RUNNING when it exited, and queue each for up to
    `retry` re-runs with the same parameters; return their numbers.

    A trial is the worker's when it carries the worker's id (`worker`, records.worker_id;
    None when the worker never said it), or carries no id yet (stopped while sampling, before
    the objective's first line) and started after the worker did.
    """
    from optuna.trial import TrialState

    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = records.worker_of(trial)
        if (owner is not None and owner == worker) or (
            owner is None and trial.datetime_start >= since
        ):
            failed = fail_trial(study, trial, reason)
            if failed is None:  # it finished, or another runner closed it, meanwhile
                continue
            if retry:
                RetryLostTrial(retry)(study, failed)
            closed.append(trial.number)
    return closed
