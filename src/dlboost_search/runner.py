"""Drive a study to its target number of finished trials with recycled worker processes.

The runner never imports TensorFlow. It starts a worker, relays the worker's events to the
progress display, and after each worker exits closes any trial the worker left RUNNING (a
crash, a kill), so the storage never holds a trial that nobody is running.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import socket
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from dlboost_search import errors
from dlboost_search.data import prepare
from dlboost_search.errors import Interrupted, SearchAborted
from dlboost_search.spaces import SearchSpace
from dlboost_search.storage import load_study, masked
from dlboost_search.study import StudySummary, create_or_check, space_of, summarize
from dlboost_search.worker import INTERRUPTED_REASON, run_worker

EventHandler = Callable[[dict[str, Any]], None]

DEFAULT_RECYCLE_EVERY = 50
SHUTDOWN_GRACE_S = 120  # how long a worker may take to close its trial after Ctrl-C


def check_data(space: SearchSpace, source: str) -> None:
    """Load the data in this process first: a bad file fails before anything is stored."""
    prepared = prepare(space.data, space.search.seed or 0)
    space.check_task(prepared.task, source)


def start(
    space: SearchSpace,
    url: str,
    *,
    target: int | None = None,
    recycle_every: int = DEFAULT_RECYCLE_EVERY,
    on_event: EventHandler = lambda event: None,
    source: str = "search space",
) -> StudySummary:
    check_data(space, source)
    study = create_or_check(space, url)
    return _drive(
        study.study_name, url, space, target or space.search.trials, recycle_every, on_event
    )


def resume(
    name: str,
    url: str,
    *,
    target: int | None = None,
    recycle_every: int = DEFAULT_RECYCLE_EVERY,
    on_event: EventHandler = lambda event: None,
) -> StudySummary:
    space = space_of(load_study(name, url))
    check_data(space, f"study {name!r}")
    return _drive(name, url, space, target or space.search.trials, recycle_every, on_event)


def _drive(
    name: str,
    url: str,
    space: SearchSpace,
    target: int,
    recycle_every: int,
    on_event: EventHandler,
) -> StudySummary:
    study = load_study(name, url)
    context = multiprocessing.get_context("spawn")
    failures_in_a_row = 0
    process = None
    previous_sigterm = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        on_event({"event": "study", "summary": summarize(study), "target": target, "url": url})
        while (finished := summarize(study).finished) < target:
            events = context.Queue()
            n_trials = min(recycle_every, target - finished)
            process = context.Process(
                target=run_worker,
                args=(name, url, n_trials, failures_in_a_row, events),
                name=f"dlboost-worker-{name}",
            )
            process.start()
            started = datetime.now()
            on_event({"event": "worker_started", "pid": process.pid})
            outcome = _follow(process, events, on_event)
            failures_in_a_row = outcome.get("failures_in_a_row", failures_in_a_row)
            lost = close_abandoned_trials(study, process.pid, started, outcome["reason"])
            if outcome["event"] == "fatal":
                raise getattr(errors, outcome["error"])(outcome["message"])
            if outcome["event"] == "interrupted":
                raise Interrupted(
                    f"stopped by the user; {len(lost) or 'no'} running trial(s) closed as "
                    f"failed, nothing else lost. Continue with `dlboost-search resume {name} "
                    f"--storage {masked(url)}`."
                )
            if outcome["event"] == "crashed":
                failures_in_a_row += 1
                on_event({"event": "worker_lost", "exitcode": process.exitcode, "trials": lost})
                if failures_in_a_row >= space.search.max_consecutive_failures:
                    raise SearchAborted(
                        f"the worker process died {failures_in_a_row} times in a row (last exit "
                        f"code {process.exitcode}). Look for out-of-memory kills in the system "
                        f"log, lower units/batch_size, then `dlboost-search resume {name}`."
                    )
        return summarize(study)
    finally:
        signal.signal(signal.SIGTERM, previous_sigterm)
        if process is not None and process.is_alive():
            # Interrupted between two workers' events (not inside _follow): stop this one too.
            _stop_worker(process)
            close_abandoned_trials(study, process.pid, started, INTERRUPTED_REASON)


def _stop_worker(process: Any) -> None:
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        os.kill(process.pid, signal.SIGINT)
        process.join(SHUTDOWN_GRACE_S)
        if process.is_alive():
            process.kill()
            process.join()
    finally:
        signal.signal(signal.SIGINT, previous)


def _raise_keyboard_interrupt(_signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt


def _follow(process: Any, events: Any, on_event: EventHandler) -> dict[str, Any]:
    """Relay a worker's events until it exits; return how it ended."""
    outcome: dict[str, Any] = {"event": "crashed", "reason": "the worker process died"}
    interrupted = False
    deadline = None
    while True:
        try:
            try:
                event = events.get(timeout=0.2)
            except queue.Empty:
                if process.is_alive():
                    if deadline and time.monotonic() > deadline:
                        process.kill()
                    continue
                while True:  # drain what the worker sent just before exiting
                    try:
                        event = events.get(timeout=0.2)
                    except queue.Empty:
                        break
                    outcome = _note(event, outcome, on_event)
                break
            outcome = _note(event, outcome, on_event)
        except KeyboardInterrupt:
            if not interrupted:
                interrupted = True
                # A second Ctrl-C must not cut short the worker closing its trial.
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                on_event({"event": "stopping"})
                os.kill(process.pid, signal.SIGINT)
                deadline = time.monotonic() + SHUTDOWN_GRACE_S
    process.join()
    if interrupted:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        outcome = {**outcome, "event": "interrupted", "reason": INTERRUPTED_REASON}
    elif outcome["event"] == "crashed":
        outcome["reason"] = f"the worker process died (exit code {process.exitcode})"
    return outcome


def _note(event: dict[str, Any], outcome: dict[str, Any], on_event: EventHandler):
    on_event(event)
    if "failures_in_a_row" in event:
        outcome = {**outcome, "failures_in_a_row": event["failures_in_a_row"]}
    if event["event"] == "interrupted":
        outcome = {**outcome, **event, "reason": INTERRUPTED_REASON}
    elif event["event"] in ("done", "fatal"):
        outcome = {**outcome, **event, "reason": f"the worker stopped ({event['event']})"}
    return outcome


def close_abandoned_trials(study: Any, pid: int | None, since: datetime, reason: str) -> list[int]:
    """Mark FAIL the trials a worker left RUNNING when it exited; return their numbers.

    A trial is the worker's when it carries the worker's id, or carries no id yet (stopped
    while sampling, before the objective's first line) and started after the worker did.
    """
    from optuna.trial import TrialState

    worker = f"{socket.gethostname()}:{pid}"
    closed = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = trial.user_attrs.get("worker")
        if owner == worker or (owner is None and trial.datetime_start >= since):
            # _trial_id is the storage key; Optuna exposes no public setter by trial number.
            study._storage.set_trial_user_attr(trial._trial_id, "fail_reason", reason)
            study.tell(trial.number, state=TrialState.FAIL)
            closed.append(trial.number)
    return closed
