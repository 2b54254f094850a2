"""The Hyperband backend: keras-tuner's Hyperband runs the search, the Optuna study keeps it.

keras-tuner decides which configurations to train and for how many epochs (its brackets and
rounds, a promoted configuration continuing from its parent's best checkpoint); the model
comes from the same builder and trains through the same `training.train` as an Optuna trial.
Each keras-tuner trial is copied into the Optuna study as it finishes (parameters with their
distributions, value, per-epoch values, bracket and round), so `status`, `best`, `report` and
the dashboard work the same whatever the backend.

keras-tuner keeps its own state (the schedule, checkpoints) in a folder beside the SQLite file,
or under storage/keras-tuner/ for a database server; running `start` or `resume` again reloads
it and continues the schedule. Its trial id is stored on the copy (`hyperband_trial`), so a
trial is never copied twice, and one finished just before a crash is copied on the next run.

The schedule runs in worker processes, one at a time, through the pool the Optuna backend
uses (`drive`): a worker retires after its share of trials and the next reloads the state;
one that crashes is replaced and keras-tuner runs its trial again; one whose trial runs past
training.trial_timeout_seconds is stopped, and its successor records that trial as failed.
Once the study's time budget (search.timeout) is spent, the worker starts no further trial
of the schedule and retires; `resume` with a larger budget continues the schedule.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import math
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from dlboost_search import events, records
from dlboost_search.errors import (
    DlboostError,
    Interrupted,
    SearchAborted,
    StudyError,
    TrialFailed,
)
from dlboost_search.spaces import (
    CategoricalParam,
    FloatParam,
    IntParam,
    SearchSpace,
    distributions,
)
from dlboost_search.storage import state_dir, storage_option

__all__ = [
    "drive",
    "hyperparameters",
    "run",
    "run_worker",
    "state_dir",
]

EventHandler = Callable[[events.Event], None]


class StopRequest:
    """Ctrl-C or SIGTERM during one run: it stops at the next epoch or trial boundary, not at
    once, since an interrupt inside keras-tuner's saving of its state would leave that state
    half written."""

    def __init__(self) -> None:
        self.requested = False

    def __call__(self, _signum: int, _frame: Any) -> None:
        self.requested = True

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt


@contextmanager
def _stopped_by_signals() -> Iterator[StopRequest]:
    """A fresh StopRequest as the SIGINT and SIGTERM handler for the run, the previous
    handlers back after it."""
    stop = StopRequest()
    signals = (signal.SIGINT, signal.SIGTERM)
    previous = {sig: signal.signal(sig, stop) for sig in signals}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def hyperparameters(space: SearchSpace) -> Any:
    """The searched parameters of `space` as keras-tuner hyperparameters."""
    import keras_tuner as kt

    hp = kt.HyperParameters()
    for name, spec in space.searched().items():
        if isinstance(spec, IntParam):
            # keras-tuner reads a step under log sampling as a factor: log ints take none.
            step = None if spec.log else spec.step
            hp.Int(name, spec.low, spec.high, step=step, sampling="log" if spec.log else "linear")
        elif isinstance(spec, FloatParam):
            hp.Float(name, spec.low, spec.high, step=spec.step,
                     sampling="log" if spec.log else "linear")  # fmt: skip
        elif isinstance(spec, CategoricalParam):  # one type, no null: checked with the space
            hp.Choice(name, spec.choices)
    return hp


def total_trials(oracle: Any) -> int:
    """How many trials keras-tuner's Hyperband schedule runs in all."""
    per_iteration = sum(
        oracle._get_size(bracket, round_)
        for bracket in range(oracle._get_num_brackets())
        for round_ in range(oracle._get_num_rounds(bracket))
    )
    return per_iteration * oracle.hyperband_iterations


def drive(
    study: Any,
    url: str,
    space: SearchSpace,
    recycle_every: int,
    on_event: EventHandler,
    placement: Any = None,
):
    """Run (or continue) the schedule of `study` (stored at `url`) in worker processes, one at
    a time, on `placement`'s device (devices.Placement; default the CPU), until it ends;
    return the study's summary. This process never imports TensorFlow."""
    from dlboost_search.pool import (
        WorkerPool,
        clock_kept,
        lost_in_a_row,
        stop_all,
        stopped_together,
        timed_out_reason,
    )
    from dlboost_search.study import SearchClock, summarize, target_of

    name = study.study_name
    clock = SearchClock(study)
    if clock.spent():  # said at once, without a worker's start-up (a TensorFlow import)
        on_event(
            events.StudyRunning(
                study,
                summarize(study),
                target_of(study),
                url,
                1,
                reproducible=True,
                budget=clock.budget,
                searched=clock.searched(),
            )  # fmt: skip
        )
        on_event(events.TimeBudgetSpent(clock.searched(), clock.budget))
        return summarize(study)
    pool = WorkerPool(
        name, url, space, 1, recycle_every, sole=True, target=0, entry=run_worker,
        deadline=clock.deadline(), placements=[placement] if placement else None,
    )  # fmt: skip
    limit = space.training.trial_timeout_seconds
    with_study = _filling_in(study, on_event, clock, tuple(p.device for p in pool.placements))
    out_of_time = False
    announced: list[bool] = []
    failures_in_a_row = 0  # workers lost or stopped past the time limit, in a row

    def relay(event: events.Event) -> None:
        nonlocal failures_in_a_row
        if isinstance(event, events.StudyRunning):  # each worker sends it; the first counts
            if announced:
                return
            announced.append(True)
        if isinstance(event, events.TrialFinished) and event.state != "FAIL":
            failures_in_a_row = 0
        with_study(event)

    abandoned: str | None = None  # why the trial a stopped worker left failed

    def interrupted() -> Interrupted:
        stop_all(study, pool, on_event)  # nothing to close: trials are stored once finished
        return _interrupted(name, url)

    with clock_kept(clock), stopped_together(study, pool, on_event, interrupted):
        while True:
            # Said once the worker announced the study, not above its heading.
            if announced and not out_of_time and clock.spent():
                out_of_time = True  # the worker sees its deadline: it finishes its trial
                on_event(events.TimeBudgetSpent(clock.searched(), clock.budget))
            if not pool.workers:
                if out_of_time:
                    return summarize(study)
                kwargs = {"abandoned": abandoned} if abandoned else {}
                on_event(events.WorkerStarted(pid=pool.start(0, **kwargs)))
                abandoned = None
            pool.relay(relay, timeout=1.0)
            pool.stop_overdue(limit)
            for _, worker in pool.exited():
                outcome = worker.outcome
                if worker.timed_out is not None:
                    abandoned = timed_out_reason(limit)
                    on_event(events.TrialTimedOut([worker.timed_out], limit))
                elif isinstance(outcome, events.WorkerDone):
                    return summarize(study)
                elif isinstance(outcome, events.WorkerRetired):
                    continue
                elif isinstance(outcome, events.WorkerInterrupted):
                    raise KeyboardInterrupt  # signalled directly, not through us
                elif isinstance(outcome, events.WorkerFailed):
                    raise outcome.error
                else:  # it crashed: keras-tuner runs its trial again
                    lost = [worker.trial[0]] if worker.trial else []
                    on_event(events.WorkerLost(worker.process.exitcode, lost))
                failures_in_a_row += 1
                lost_in_a_row(failures_in_a_row, worker, space, name, url)
            clock.tick()


def run_worker(
    study_name: str,
    url: str,
    space: SearchSpace,
    target: int,
    max_trials: int,
    failures_in_a_row: int,
    events_out: Any,
    threads: int | None = None,
    sole: bool = True,
    go: Any = None,
    abandoned: str | None = None,
    deadline: float | None = None,
    placement: Any = None,
) -> None:
    """Entry point of a Hyperband worker process (the pool starts it, with the spawn method):
    run at most `max_trials` trials of the schedule, and none once time.time() passes
    `deadline` (the time budget), then retire. `abandoned`: the reason to fail the trial the
    previous worker was stopped in; `go`, `placement`: see worker.run_worker."""
    from dlboost_search import devices
    from dlboost_search.storage import load_study
    from dlboost_search.worker import EventPipe, rss_mb

    devices.pin(placement)  # before TensorFlow is imported

    os.setpgrp()  # Ctrl-C reaches the pool only, which forwards it once
    sent = EventPipe(events_out)
    try:
        with _stopped_by_signals() as stop:
            study = load_study(study_name, url)
            finished = _run(
                study, url, space, sent.put, None, stop, threads=threads, max_trials=max_trials,
                abandoned=abandoned, go=go, deadline=deadline, placement=placement,
            )  # fmt: skip
        sent.put(events.WorkerDone(rss_mb()) if finished else events.WorkerRetired(rss_mb()))
    except KeyboardInterrupt:
        sent.put(events.WorkerInterrupted())
    except DlboostError as exc:
        sent.put(events.WorkerFailed(exc))


def run(
    study: Any,
    url: str,
    space: SearchSpace,
    on_event: EventHandler,
    observe: Callable[[Any, float], None] | None = None,
) -> Any:
    """Run (or continue) the Hyperband schedule of `study` (stored at `url`) in this process;
    return its summary. Ctrl-C and SIGTERM stop it at the next epoch. `observe`: see
    TrialContext."""
    from dlboost_search.study import summarize

    try:
        with _stopped_by_signals() as stop:
            _run(study, url, space, _filling_in(study, on_event), observe, stop)
    except KeyboardInterrupt:
        # Nothing to close in the study: trials land in it only once finished.
        on_event(events.Stopping())
        raise _interrupted(study.study_name, url) from None
    return summarize(study)


def _filling_in(
    study: Any, on_event: EventHandler, clock: Any = None, devices: tuple[str, ...] = ()
) -> EventHandler:
    """`on_event`, with the study (and the time budget and searched time, from the runner's
    `clock`, and the worker's device) filled into StudyRunning (sent without them, by a
    worker)."""

    def handle(event: events.Event) -> None:
        if isinstance(event, events.StudyRunning):
            event = dataclasses.replace(event, study=study, devices=devices)
            if clock is not None:
                event = dataclasses.replace(event, budget=clock.budget, searched=clock.searched())
        on_event(event)

    return handle


def _interrupted(name: str, url: str) -> Interrupted:
    return Interrupted(
        f"stopped by the user; the running Hyperband trial will run again on the next "
        f"`dlboost-search resume {name}{storage_option(url)}`, nothing else lost."
    )


class _Retire(Exception):
    """A worker ran its share of trials, or the time budget ran out."""


def _run(
    study, url, space, on_event, observe, stop: StopRequest, *, threads=None, max_trials=None,
    abandoned=None, go=None, deadline=None, placement=None,
) -> bool:  # fmt: skip
    """The schedule, in this process; True when it has ended, False when this process ran
    `max_trials` trials, or the time budget ran out (`deadline`), and retires."""
    from dlboost_search import devices
    from dlboost_search._tf import import_tensorflow_quietly

    # Before Keras imports it, chatter and all.
    gpus_seen = import_tensorflow_quietly(threads, placement.memory_limit_mb if placement else None)
    device = devices.device_of(placement, gpus_seen)
    import keras
    import keras_tuner as kt
    import optuna

    from dlboost_search.artifacts import open_models
    from dlboost_search.study import set_target, summarize
    from dlboost_search.training import TrainingRecord
    from dlboost_search.trial import TrialContext
    from dlboost_search.worker import not_stored as _not_stored

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # keras-tuner prints every failed trial's traceback (its config.DEBUG is on by default);
    # our progress line already says why the trial failed.
    kt_config = sys.modules.get("keras_tuner.src.config")
    if kt_config is not None:
        kt_config.DEBUG = False
    study_name = study.study_name
    source = f"study {study_name!r}"
    context = TrialContext(space, source, observe, gpu=gpus_seen > 0)
    if go is not None:  # a standby: ready, and waiting for the worker it replaces to exit
        parent = os.getppid()
        while not go.wait(timeout=1.0):
            if os.getppid() != parent:  # the pool is gone
                return False
    direction = "min" if space.direction == "minimize" else "max"
    objective = kt.Objective(space.objective.metric, direction)
    training: dict[str, tuple[TrainingRecord, dict[int, float]]] = {}
    fitted: dict[str, Any] = {}  # keras-tuner trial id -> its trained model, until copied
    models = open_models(study, url, writing=True)
    begun = 0  # trials this process began
    dists = distributions(space)
    # keras-tuner ids of the trials already in the study: read once, kept up to date here (the
    # backend is the study's only writer).
    copied = {
        t.user_attrs[records.HYPERBAND_TRIAL]: records.worker_of(t)
        for t in study.get_trials(deepcopy=False)
        if records.HYPERBAND_TRIAL in t.user_attrs
    }

    def params_of(hp: Any) -> dict[str, Any]:
        """A trial's full parameters from keras-tuner's values (less its tuner/ entries)."""
        return space.resolve({k: v for k, v in hp.values.items() if k in dists})

    class Model(kt.HyperModel):
        def build(self, hp: Any) -> Any:
            try:
                return context.build(params_of(hp))
            except TrialFailed as exc:  # a custom builder's error: this trial's only
                raise kt.errors.FailedTrialError(str(exc)) from None

        def fit(self, hp: Any, model: Any, *args: Any, trial_id: str = "", **kwargs: Any) -> Any:
            params = params_of(hp)
            initial = kwargs.get("initial_epoch", 0)
            callbacks = kwargs.get("callbacks", [])
            for callback in callbacks:
                callback.set_model(model)
            record, curve = training.setdefault(trial_id, (TrainingRecord(), {}))
            number = len(copied)  # the number its copy will get
            checkpoint = checkpoint_path(trial_id)
            resume = _read_checkpoint(checkpoint, number, on_event)
            if resume is not None:  # a retry of a trial its worker was lost in
                for epoch, value in enumerate(resume.history):
                    curve[initial + epoch] = value
                # keras-tuner's best-epoch file, which a promoted trial continues from, is
                # rewritten at the first improvement it sees: let it see the epochs before.
                if resume.best_weights is not None:
                    model.set_weights(resume.best_weights)
                for epoch, value in enumerate(resume.history):
                    for callback in callbacks:
                        callback.on_epoch_end(initial + epoch, {space.objective.metric: value})

            def report(epoch: int, value: float) -> None:
                stop.check()
                curve[initial + epoch] = value
                on_event(events.EpochEnded(number, initial + epoch + 1))
                for callback in callbacks:  # keras-tuner's: the best epoch's checkpoint
                    callback.on_epoch_end(initial + epoch, {space.objective.metric: value})

            try:
                value = context.fit(
                    model, params, int(trial_id or 0), record=record, report=report,
                    max_epochs=kwargs.get("epochs", space.training.max_epochs) - initial,
                    save=lambda state: _write_checkpoint(checkpoint, state, number, on_event),
                    resume=resume,
                )  # fmt: skip
            except TrialFailed as exc:
                raise kt.errors.FailedTrialError(str(exc)) from None
            except SearchAborted as exc:
                raise kt.errors.FatalError(str(exc)) from None
            fitted[trial_id] = model  # its best epoch's weights: stored as the trial is copied
            return {space.objective.metric: value}

    class Tuner(kt.Hyperband):
        def _populate_initial_space(self) -> None:
            # The space is declared in full (hyperparameters=, no new entries): keras-tuner's
            # own would build a model, a backbone load included, only to discover it.
            pass

        def _try_build(self, hp: Any) -> Any:
            # keras-tuner's own clears the session with two full garbage collections per
            # trial, 0.6 s here: more than the rest of a small model's fixed cost. The
            # builder is ours, so its checks of what it returns have nothing to catch.
            keras.backend.clear_session(free_memory=False)
            return self._build_hypermodel(hp)

        def pre_create_trial(self) -> None:
            if max_trials is not None and begun >= max_trials:
                raise _Retire
            if deadline is not None and time.time() >= deadline:
                raise _Retire  # the runner sees the budget spent and starts no successor

        def on_trial_begin(self, trial: Any) -> None:
            nonlocal begun
            stop.check()
            begun += 1
            # Before the model is built: a trial stuck in its builder is timed from here.
            on_event(events.TrialStarted(len(copied), params_of(trial.hyperparameters)))
            super().on_trial_begin(trial)

        def run_trial(self, trial: Any, *args: Any, **kwargs: Any) -> Any:
            # Seeded before keras-tuner builds the model, so its initial weights are too.
            context.seed_for(int(trial.trial_id))
            return super().run_trial(trial, *args, trial_id=trial.trial_id, **kwargs)

        def on_trial_end(self, trial: Any) -> None:
            try:
                super().on_trial_end(trial)  # keras-tuner saves its state first
            except RuntimeError:
                # Failures in a row reached the limit: keras-tuner raises before it saves the
                # last failed trial. Saved and copied, it reads as failed in both places.
                self.oracle._save_trial(self.oracle.get_trial(trial.trial_id))
                self.oracle.save()
                raise
            finally:
                copy_trial(self.oracle.get_trial(trial.trial_id))

    def copy_trial(trial: Any) -> None:
        """The keras-tuner trial as a finished Optuna trial, unless it is there already."""
        if trial.trial_id in copied or trial.status not in ("COMPLETED", "FAILED", "INVALID"):
            return
        checkpoint_path(trial.trial_id).unlink(missing_ok=True)  # no retry will need it
        values = trial.hyperparameters.values
        record, curve = training.pop(trial.trial_id, (TrainingRecord(), {}))
        attrs = {
            records.HYPERBAND_TRIAL: trial.trial_id,
            records.BACKEND: "hyperband",
            records.BRACKET: values.get("tuner/bracket"),
            records.ROUND: values.get("tuner/round"),
            records.INITIAL_EPOCH: values.get("tuner/initial_epoch", 0),
            records.CONTINUES: values.get("tuner/trial_id"),
            records.WORKER: records.worker_id(),
            records.DEVICE: device,
            **record.as_attrs(),
        }
        params = {k: v for k, v in values.items() if k in dists}
        model = fitted.pop(trial.trial_id, None)
        stored: dict[str, str] = {}
        if trial.status == "COMPLETED" and trial.score is not None and math.isfinite(trial.score):
            state, value = optuna.trial.TrialState.COMPLETE, float(trial.score)
            if model is not None and models.wanted(study, value, len(copied), attrs):
                try:
                    stored = models.write(model, len(copied))
                except Exception as exc:  # as in the Optuna worker: the trial still counts
                    on_event(events.Warned(_not_stored(len(copied), models.shown, exc)))
        else:
            state, value = optuna.trial.TrialState.FAIL, None
            reason = _last_line(trial.message) or "keras-tuner marked it invalid"
            attrs[records.FAIL_REASON] = reason
        study.add_trial(
            optuna.trial.create_trial(
                state=state,
                value=value,
                params=params,
                distributions=dists,
                intermediate_values=curve,
                user_attrs=attrs,
                system_attrs=stored,
            )  # fmt: skip
        )
        on_event(events.TrialFinished(len(copied), state.name, value, params, attrs))
        copied[trial.trial_id] = attrs[records.WORKER]
        try:
            models.prune(study)
        except Exception as exc:
            on_event(events.Warned(f"could not delete models beyond search.keep_models: {exc}"))

    folder = state_dir(url, study_name)

    def checkpoint_path(trial_id: str) -> Any:
        return folder / "checkpoints" / f"trial-{trial_id}.npz"

    if copied and not (folder / "hyperband" / "oracle.json").is_file():
        # A new schedule would reuse keras-tuner's trial ids, and its trials would be taken
        # for copies of the old ones.
        raise StudyError(
            f"{source} has {len(copied)} Hyperband trials, but keras-tuner's state for it is not "
            f"at {folder.resolve()} (the study last ran on {list(copied.values())[-1]}). "
            f"Copy that folder here to continue its schedule, or start a study of a new name."
        )
    # keras-tuner reloads its oracle only with the tuner's own file, written after the first
    # trial: a worker lost in it left the oracle's alone.
    oracle_only = (
        not (folder / "hyperband" / "tuner0.json").is_file()
        and (folder / "hyperband" / "oracle.json").is_file()
    )
    # keras-tuner prints "Reloading Tuner from ..." each time a worker takes over.
    with contextlib.redirect_stdout(io.StringIO()):
        tuner = Tuner(
            hypermodel=Model(),
            objective=objective,
            max_epochs=space.training.max_epochs,
            factor=space.search.factor,
            hyperband_iterations=space.search.hyperband_iterations,
            # keras-tuner takes a seed of 0 for none (`seed or random.randint(...)`), and 0 is
            # what the shipped spaces use: shift by one so that every seed fixes the schedule.
            seed=None if space.search.seed is None else space.search.seed + 1,
            hyperparameters=hyperparameters(space),
            tune_new_entries=False,
            allow_new_entries=False,
            max_consecutive_failed_trials=space.search.max_consecutive_failures,
            directory=str(folder),
            project_name="hyperband",
            overwrite=False,
        )
    if oracle_only:
        tuner.oracle.reload()  # its running trial is queued to run again, as on a full reload
    for trial in tuner.oracle.trials.values():  # finished before a crash, never copied
        copy_trial(trial)
    target = total_trials(tuner.oracle)
    set_target(study, target)
    # Sent without the study: it may cross from a worker process (see _filling_in).
    on_event(events.StudyRunning(None, summarize(study), target, url, 1, reproducible=True))
    try:
        if abandoned:
            # The trial a worker was stopped in (its time limit) fails instead of running
            # again: keras-tuner's reload queued it for a retry.
            for trial_id in list(tuner.oracle._retry_queue):
                tuner.oracle._retry_queue.remove(trial_id)
                trial = tuner.oracle.trials[trial_id]
                trial.status, trial.message = "FAILED", abandoned
                tuner.on_trial_end(trial)
        tuner.search(verbose=0)  # keras-tuner's own summaries would garble our progress display
    except _Retire:
        return False
    except kt.errors.FatalError as exc:
        raise SearchAborted(_last_line(str(exc))) from None
    except RuntimeError as exc:
        if "consecutive failures" not in str(exc):
            raise
        raise SearchAborted(
            f"{space.search.max_consecutive_failures} Hyperband trials failed in a row "
            f"(search.max_consecutive_failures); last reason: {_last_line(str(exc))}. Narrow "
            f"the space (a lower learning_rate or a clipvalue usually cures NaN losses), then "
            f"`dlboost-search resume {study_name}{storage_option(url)}`."
        ) from None
    finally:
        keras.backend.clear_session(free_memory=False)
    return True


def _write_checkpoint(path: Any, state: Any, number: int, on_event: EventHandler) -> None:
    """A running trial's mid-trial checkpoint, in keras-tuner's state folder (the backend
    runs on one machine), replaced whole: a worker killed while writing leaves the last one.
    A disk that refuses it costs this checkpoint only."""
    partial = path.with_name(f".{path.name}.partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(state.dumps())
        os.replace(partial, path)
    except OSError as exc:
        on_event(
            events.Warned(
                f"trial {number}'s checkpoint at epoch {state.epoch} was not written "
                f"to {path.parent} ({exc.strerror or exc}); it trains on"
            )  # fmt: skip
        )


def _read_checkpoint(path: Any, number: int, on_event: EventHandler) -> Any:
    """The TrainingState a lost worker's trial saved, or None: none saved, or not readable
    (then the trial trains from scratch, and says so)."""
    from dlboost_search.training import TrainingState

    if not path.is_file():
        return None
    try:
        state = TrainingState.loads(path.read_bytes())
    except Exception as exc:  # a damaged file: any of numpy's, zipfile's or json's errors
        on_event(
            events.Warned(
                f"trial {number} trains from scratch: its checkpoint {path} could "
                f"not be read ({exc})"
            )  # fmt: skip
        )
        return None
    on_event(
        events.Noted(
            f"trial {number} goes on from its checkpoint at epoch {state.epoch}", topic="checkpoint"
        )
    )
    return state


def _last_line(message: str | None) -> str:
    """The error line of a traceback keras-tuner stored as a trial's message."""
    lines = [line.strip() for line in (message or "").strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last.split(": ", 1)[1] if last.startswith(("keras_tuner", "FailedTrialError")) else last
