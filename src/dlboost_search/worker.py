"""The worker process: runs trials of one study and reports each event to its parent.

Keras keeps a few MB per model even after `clear_session` (keras#17458), so a worker runs at
most a bounded number of trials and exits; the pool starts a fresh one. Memory stays flat
however long the study runs.

Several workers, on this machine or others, may share a study. Each stops when the study has
its target of finished trials counting the ones running elsewhere, so the study ends with
exactly the target, not one extra per worker; and, whatever the target, it starts no trial
once the study's time budget is spent (its deadline), finishing the one it is training.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from dlboost_search import devices, events, limits, records
from dlboost_search._tf import import_tensorflow_quietly
from dlboost_search.errors import DlboostError, SearchAborted, TrialFailed
from dlboost_search.spaces import SearchSpace

__all__ = [
    "INTERRUPTED_REASON",
    "SURPLUS_REASON",
    "EventPipe",
    "not_stored",
    "rss_mb",
    "run_worker",
]

INTERRUPTED_REASON = "interrupted (Ctrl-C or SIGTERM); run `dlboost-search resume` to go on"
SURPLUS_REASON = "not needed: trials running on other workers already make up the target"


class _Surplus(TrialFailed):
    """Another worker asked for the study's last trial at the same moment."""


# "raise": whether a stop signal raises KeyboardInterrupt at once (see _signals_raise).
_stop = {"requested": False, "raise": True}
_process = {"started": ""}  # when this worker process began: a standby begins early


def stop_requested() -> bool:
    return _stop["requested"]


def _stop_on_first_signal(signum: int, _frame: Any) -> None:
    # Later signals only keep the flag: closing the trial in storage must not be cut short.
    # The flag also survives code that swallows or converts the KeyboardInterrupt (TensorFlow
    # can turn it into a TypeError while tracing): the next epoch or trial boundary stops.
    first = not _stop["requested"]
    _stop["requested"] = True
    if first and _stop["raise"]:
        raise KeyboardInterrupt


@contextmanager
def _signals_raise(now: bool) -> Iterator[None]:
    """Within the block a stop signal raises KeyboardInterrupt at once (now=True: building
    and training a model) or only sets the flag (now=False: storage calls), and a stop
    that came meanwhile raises as the block hands back to a raising one.

    A KeyboardInterrupt in the middle of an SQLite write left the database locked for this
    process: the trial's closing writes then failed ("database is locked") and its record
    (epochs trained, train seconds) was lost; about one SIGTERM in ten under load did this.
    """
    if now and _stop["requested"]:
        raise KeyboardInterrupt
    before, _stop["raise"] = _stop["raise"], now
    try:
        yield
    finally:
        _stop["raise"] = before
    if before and _stop["requested"]:
        raise KeyboardInterrupt


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class EventPipe:
    """This worker's pipe to the pool; every event names the worker process it comes from."""

    def __init__(self, connection: Any):
        self.connection, self.pid = connection, os.getpid()

    def put(self, event: events.Event) -> None:
        # A stop signal waits until the event is written whole: a KeyboardInterrupt in the
        # middle of a write would leave half a message in the pipe.
        stops = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            self.connection.send(dataclasses.replace(event, pid=self.pid))
        except BrokenPipeError:
            pass  # the pool is gone: nobody is left to tell
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)


def run_worker(
    study_name: str,
    url: str,
    space: SearchSpace,
    target: int,
    max_trials: int,
    failures_in_a_row: int,
    events_out: Any,
    threads: int | None = None,
    sole_worker: bool = True,
    go: Any = None,
    deadline: float | None = None,
    placement: devices.Placement | None = None,
) -> None:
    """Entry point of a worker process (started with the spawn method): run at most
    `max_trials` trials of the study (its `space` as stored, from the pool: read and checked
    once, there), fewer once the study has `target` finished trials (None: no target) or
    time.time() passes `deadline` (the time budget). Only the study's sole worker samples
    reproducibly from the space's seed; workers side by side must not.

    `go`: for a standby worker, an event the pool sets when the worker it replaces has
    exited; it imports TensorFlow and loads the data meanwhile, then waits. `placement`: the
    device it trains on (devices.plan), applied here before TensorFlow is imported."""
    devices.pin(placement)
    _process["started"] = datetime.now().isoformat(timespec="milliseconds")
    # Own process group: a terminal's Ctrl-C reaches the pool only, which forwards it once.
    os.setpgrp()
    signal.signal(signal.SIGINT, _stop_on_first_signal)
    signal.signal(signal.SIGTERM, _stop_on_first_signal)
    sent = EventPipe(events_out)
    try:
        stream = 0 if sole_worker else os.getpid()
        _run(
            study_name, url, space, target, max_trials, failures_in_a_row, sent, threads, stream,
            go, deadline, placement,
        )  # fmt: skip
    except KeyboardInterrupt:
        sent.put(events.WorkerInterrupted())
    except DlboostError as exc:
        sent.put(events.WorkerFailed(exc))


def not_stored(number: int, store: str, exc: Exception) -> str:
    return (
        f"trial {number}'s model was not stored in {store} ({type(exc).__name__}: {exc}); the "
        f"trial counts as usual, and export-model retrains it."
    )


def _done(study: Any, target: int | None, deadline: float | None) -> bool:
    """Whether to start no more trials: the time budget is spent, or finished and running
    trials make up the target."""
    from optuna.trial import TrialState

    if deadline is not None and time.time() >= deadline:
        return True
    if target is None:
        return False
    states = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=states)) >= target


def _trailing_failures(study: Any) -> int:
    """Failed trials at the end of the study, as a count of failures in a row."""
    from optuna.trial import TrialState

    count = 0
    for t in reversed(study.get_trials(deepcopy=False)):
        if t.state == TrialState.RUNNING or records.fail_reason(t) == SURPLUS_REASON:
            continue
        if t.state != TrialState.FAIL:
            break
        count += 1
    return count


def _is_surplus(study: Any, number: int, target: int | None) -> bool:
    """Whether trials ahead of `number` (finished, or running with a lower number) already
    make up the target: two workers asked for the last trial at once, and this one lost."""
    from optuna.trial import TrialState

    if target is None:
        return False
    ahead = 0
    for t in study.get_trials(deepcopy=False):
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED):
            ahead += 1
        elif t.state == TrialState.RUNNING and t.number < number:
            ahead += 1
    return ahead >= target


def _run(
    study_name: str,
    url: str,
    space: SearchSpace,
    target: int,
    max_trials: int,
    failures_in_a_row: int,
    sent: EventPipe,
    threads: int | None,
    stream: int,
    go: Any = None,
    deadline: float | None = None,
    placement: devices.Placement | None = None,
) -> None:
    from dlboost_search.artifacts import open_models
    from dlboost_search.storage import RetryLostTrial, load_study

    # Heartbeats on: a trial this worker leaves behind by dying is retried by whoever runs next.
    study = load_study(study_name, url, recovery=space.search)
    # Before the slow TensorFlow import: a worker started as the last trial began elsewhere
    # leaves at once.
    if _done(study, target, deadline):
        sent.put(events.WorkerDone(rss_mb()))
        return
    gpus_seen = import_tensorflow_quietly(threads, placement.memory_limit_mb if placement else None)
    device = devices.device_of(placement, gpus_seen)
    import keras
    import optuna
    from optuna.trial import TrialState

    from dlboost_search.spaces import suggest
    from dlboost_search.study import make_pruner, make_sampler
    from dlboost_search.training import TrainingRecord, TrainingState
    from dlboost_search.trial import TrialContext

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    context = TrialContext(space, f"study {study_name!r}", gpu=gpus_seen > 0)
    parent = os.getppid()
    if go is not None:  # a standby: ready, and waiting for the worker it replaces to exit
        while not go.wait(timeout=1.0):
            if os.getppid() != parent:  # the pool is gone
                return
        if _done(study, target, deadline):
            sent.put(events.WorkerDone(rss_mb()))
            return
        failures_in_a_row = _trailing_failures(study)
    # Sampled now, not at start-up: a standby sees every trial its predecessor finished.
    study.sampler = make_sampler(space, len(study.get_trials(deepcopy=False)), stream)
    study.pruner = make_pruner(space)
    me = records.worker_id()
    constraints = space.objective.constraints
    models = open_models(study, url, writing=True)
    checkpoints = models.checkpoints()

    def keep_model(trial: optuna.Trial, model: Any, value: float, record: Any) -> None:
        """Upload the model of a trial among the best search.keep_models within the limits;
        a store failing now costs this model only (export-model retrains it), never the trial."""
        if not models.wanted(study, value, trial.number, record.as_attrs()):
            return
        try:
            models.upload(trial, model)
        except Exception as exc:  # a full disk, an S3 endpoint gone: many types
            sent.put(events.Warned(not_stored(trial.number, models.shown, exc)))

    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr(records.WORKER, me)
        trial.set_user_attr(records.WORKER_STARTED, _process["started"])
        trial.set_user_attr(records.DEVICE, device)
        if _is_surplus(study, trial.number, target):
            trial.set_user_attr(records.FAIL_REASON, SURPLUS_REASON)
            raise _Surplus(SURPLUS_REASON)
        params = space.resolve(suggest(trial, space))
        sent.put(events.TrialStarted(trial.number, params))
        record = TrainingRecord()
        resume = resumed_state(trial)

        def report(epoch: int, value: float) -> None:
            if os.getppid() != parent:  # the pool is gone
                raise KeyboardInterrupt
            with _signals_raise(False):
                sent.put(events.EpochEnded(trial.number, epoch + 1))
                trial.report(value, epoch)
                prune = trial.should_prune()
            if prune:
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1} ({value:.4g})")

        save = checkpoints.saver(study, trial)

        def save_state(state: TrainingState) -> None:
            try:
                with _signals_raise(False):  # written whole, and recorded, or not at all
                    save(state.dumps(), state.epoch)
            except Exception as exc:  # as for models: a store failing costs this checkpoint only
                sent.put(
                    events.Warned(
                        f"trial {trial.number}'s checkpoint at epoch {state.epoch} was not "
                        f"stored in {models.shown} ({type(exc).__name__}: {exc}); it trains on"
                    )
                )

        # A retry is seeded as the trial it runs again: from scratch it repeats it, and from
        # a checkpoint it goes on as the lost one would have.
        seeded_as = trial.user_attrs.get(records.RETRY_OF, trial.number)
        try:
            with _signals_raise(True):
                model = context.model(params, seeded_as)
                value = context.fit(
                    model, params, seeded_as, record=record, report=report,
                    save=save_state, resume=resume,
                )  # fmt: skip
            with _signals_raise(False):
                keep_model(trial, model, value, record)
            return value
        except (TrialFailed, SearchAborted) as exc:
            trial.set_user_attr(records.FAIL_REASON, str(exc))
            raise
        except (KeyboardInterrupt, Exception) as exc:
            if stop_requested() or os.getppid() != parent:
                trial.set_user_attr(records.FAIL_REASON, INTERRUPTED_REASON)
                # Stopped (Ctrl-C, a pre-empted machine's SIGTERM) after a checkpoint: the
                # next run goes on from it, as for a lost worker.
                stopped = study._storage.get_trial(trial._trial_id)
                if stopped.system_attrs.get(records.CHECKPOINT) or resume is not None:
                    RetryLostTrial(space.search.retries)(study, stopped)
                raise KeyboardInterrupt from None
            if isinstance(exc, Exception):  # unforeseen: the worker stops, the trial says why
                trial.set_user_attr(records.FAIL_REASON, f"{type(exc).__name__}: {exc}")
            raise
        finally:
            for key, value in record.as_attrs().items():
                trial.set_user_attr(key, value)
            # Over a limit, the trial is infeasible: TPE steers away from it.
            for key, value in limits.excess(constraints, record.as_attrs()).items():
                trial.set_constraint(key, value)
            trial.set_user_attr(records.WORKER_RSS_MB, round(rss_mb(), 1))
            # No full garbage collection per trial (0.2 s): recycling bounds the memory.
            keras.backend.clear_session(free_memory=False)

    def resumed_state(trial: optuna.Trial) -> TrainingState | None:
        """A retry's checkpoint, its epochs reported again so the trial's curve is whole;
        None (and a warning) when there is none to read: the trial then trains from scratch."""
        wanted = trial.user_attrs.get(records.RESUME_FROM)
        if not wanted:
            return None
        origin = trial.user_attrs.get(records.RETRY_OF)
        try:
            with _signals_raise(False):
                state = TrainingState.loads(checkpoints.load(wanted))
        except Exception as exc:  # missing, unreadable, or not a checkpoint
            sent.put(
                events.Warned(
                    f"trial {trial.number} (a retry of trial {origin}) trains from scratch: its "
                    f"checkpoint at epoch {wanted.get('epoch')} could not be read ({exc})"
                )
            )
            return None
        with _signals_raise(False):
            for epoch, value in enumerate(state.history):
                trial.report(value, epoch)
        sent.put(
            events.Noted(
                f"trial {trial.number} (a retry of trial {origin}) goes on from its checkpoint "
                f"at epoch {state.epoch}",
                topic="checkpoint",
            )
        )
        sent.put(events.EpochEnded(trial.number, state.epoch))
        return state

    def after_trial(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        nonlocal failures_in_a_row
        try:  # it ended in its own right: no retry will need its checkpoints
            checkpoints.discard(study, trial)
        except Exception as exc:  # as with models: the search goes on
            sent.put(events.Warned(f"could not delete trial {trial.number}'s checkpoint: {exc}"))
        if stop_requested():
            raise KeyboardInterrupt
        if records.fail_reason(trial) == SURPLUS_REASON:
            study.stop()
            return
        try:
            models.prune(study)
        except Exception as exc:  # as in keep_model: the search goes on
            sent.put(events.Warned(f"could not delete models beyond search.keep_models: {exc}"))
        if _done(study, target, deadline):
            study.stop()
        failures_in_a_row = failures_in_a_row + 1 if trial.state == TrialState.FAIL else 0
        sent.put(
            events.TrialFinished(
                trial.number,
                trial.state.name,
                trial.value,
                trial.params,
                trial.user_attrs,
                failures_in_a_row=failures_in_a_row,
            )
        )
        if failures_in_a_row >= space.search.max_consecutive_failures:
            reasons = [
                records.fail_reason(t, "see the worker's log")
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))[-3:]
            ]
            raise SearchAborted(
                f"{failures_in_a_row} trials failed in a row "
                f"(search.max_consecutive_failures is {space.search.max_consecutive_failures}); "
                f"last reasons: {'; '.join(reasons)}. Narrow the space (a lower learning_rate "
                f"or a clipvalue usually cures NaN losses), then `dlboost-search resume "
                f"{study_name}`."
            )

    if _done(study, target, deadline):  # the time ran out while TensorFlow was imported
        sent.put(events.WorkerDone(rss_mb()))
        return
    with _signals_raise(False):
        study.optimize(
            objective, n_trials=max_trials, callbacks=[after_trial], catch=(TrialFailed,)
        )
    sent.put(events.WorkerDone(rss_mb()))
