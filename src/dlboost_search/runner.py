"""Start or resume a study: check its data, create or check the study in its storage, and
hand it to its backend. This is the one module that reads `search.backend`.

A backend runs the trials and sends events (events.py) as they go:
    optuna     workers in processes of their own, driven by pool.py (many per machine, and
               other machines joining through `worker`)
    hyperband  keras-tuner's Hyperband schedule in one worker process at a time, through the
               same pool (hyperband.py)
Neither imports TensorFlow into this process.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from dlboost_search import devices, events, memory
from dlboost_search.data import preparation_notes, task_and_shape
from dlboost_search.errors import DataError, DeviceError, SpaceError, StudyError
from dlboost_search.models import check_input
from dlboost_search.pool import DEFAULT_RECYCLE_EVERY
from dlboost_search.spaces import SearchSpace
from dlboost_search.study import (
    StudySummary,
    as_stored,
    check_same_data,
    create_or_check,
    delete_study,
    set_target,
    set_timeout,
    target_of,
    timeout_of,
)
from dlboost_search.training import choose_engine

__all__ = [
    "BACKENDS",
    "check_data",
    "mixed_precision_problem",
    "placements",
    "resume",
    "start",
]

EventHandler = Callable[[events.Event], None]


class Backend(Protocol):
    # The most workers it runs at once (None: any): what `--workers auto` stops at.
    most_workers: int | None

    def check_workers(self, name: str, workers: int, joining: bool) -> None:
        """Refuse, before anything is stored or run, a number of workers it cannot use."""

    def run(
        self,
        study: Any,
        url: str,
        space: SearchSpace,
        *,
        target: int | None,
        workers: int,
        recycle_every: int,
        on_event: EventHandler,
        joining: bool,
        placements: list[devices.Placement],
    ) -> StudySummary:
        """Run trials of the stored `study` until it has `target` finished trials (None: no
        target) or its time budget (study.timeout_of) is spent, then let the running trials
        finish; send events on the way; return its summary. `placements`: the device of
        each of the `workers` (devices.plan)."""


class OptunaBackend:
    most_workers = None

    def check_workers(self, name: str, workers: int, joining: bool) -> None:
        pass  # any number, on this machine and others

    def run(
        self, study, url, space, *, target, workers, recycle_every, on_event, joining,
        placements,
    ):  # fmt: skip
        from dlboost_search import pool

        set_target(study, target)
        return pool.drive(
            study, url, space, workers, recycle_every, on_event, sole=not joining,
            placements=placements,
        )  # fmt: skip


class HyperbandBackend:
    most_workers = 1

    def check_workers(self, name: str, workers: int, joining: bool) -> None:
        if workers != 1 or joining:
            raise StudyError(
                f"study {name!r} runs on keras-tuner's Hyperband (search.backend: hyperband), "
                f"which schedules its trials one after another from state kept on this "
                f"machine: it takes one worker and no joining machines. Run `dlboost-search "
                f"resume {name}` without --workers, or search with search.backend: optuna to "
                f"spread trials over workers."
            )

    def run(
        self, study, url, space, *, target, workers, recycle_every, on_event, joining,
        placements,
    ):  # fmt: skip
        from dlboost_search import hyperband

        # Its schedule sets the target: the trials its brackets hold.
        return hyperband.drive(study, url, space, recycle_every, on_event, placements[0])


BACKENDS: dict[str, Backend] = {"optuna": OptunaBackend(), "hyperband": HyperbandBackend()}


def check_data(space: SearchSpace, source: str, workers: int = 1) -> str | None:
    """Load the data, and check the model family takes it and the largest model fits in
    memory, in this process first: a bad file fails before anything is stored. Returns a
    warning when the largest model takes over half the memory."""
    seed = space.search.seed or 0
    streamed = choose_engine(space.training.engine, space.data).streamed
    task, input_shape = task_and_shape(space.data, seed, streamed)
    space.check_task(task, source)
    check_input(space.model, input_shape, source)
    return memory.check_fits(
        space, input_shape, memory.data_bytes(space.data, seed, streamed), workers, source
    )


def placements(
    space: SearchSpace, workers: int | None, gpus_per_worker: float | None = None
) -> list[devices.Placement]:
    """The device of each worker this machine runs for `space` (`workers` None: auto), from
    the GPUs nvidia-smi shows; a DeviceError for what it cannot give, mixed precision without
    a GPU included."""
    gpus = devices.visible_gpus()
    problem = mixed_precision_problem(space, gpus, "this machine")
    if problem:
        raise DeviceError(problem)
    return devices.plan(
        workers, gpus_per_worker, gpus, devices.cpu_cores(), memory.machine_memory() // 2**20,
        most=BACKENDS[space.search.backend].most_workers,
    )  # fmt: skip


def mixed_precision_problem(space: SearchSpace, gpus: list[devices.Gpu], where: str) -> str | None:
    """Why `space` cannot train on `where` with these `gpus`: mixed precision without a GPU."""
    if not space.training.mixed_precision or gpus:
        return None
    return (
        f"training.mixed_precision is true, and {where} has no GPU (nvidia-smi lists none, or "
        f"CUDA_VISIBLE_DEVICES hides them): Keras' mixed_float16 policy pays off on GPUs only, "
        f"and trains slower than float32 on a CPU. Set training.mixed_precision: false to "
        f"search on the CPU, or run on a machine with a GPU."
    )


def _say_about_data(space: SearchSpace, warning: str | None, on_event: EventHandler) -> None:
    """The engine and whether the data is streamed, what preparing the data did (imputed,
    ignored, transformed), then check_data's warning."""
    choice = choose_engine(space.training.engine, space.data)
    on_event(events.Noted(choice.line()))
    for note in preparation_notes(space.data, space.search.seed or 0, choice.streamed):
        on_event(events.Noted(note))
    if warning:
        on_event(events.Warned(warning))


def start(
    space: SearchSpace,
    url: str,
    *,
    target: int | None = None,
    timeout: float | None = None,
    workers: int | None = 1,
    gpus_per_worker: float | None = None,
    recycle_every: int = DEFAULT_RECYCLE_EVERY,
    on_event: EventHandler = lambda event: None,
    source: str = "search space",
    accept_changed_data: bool = False,
) -> StudySummary:
    """Run the study `space` describes, to `target` finished trials and within `timeout`
    seconds of search in all (each given here, else from the space, like the space's own
    settings: a re-run without them goes back to the space's). `workers` None: auto, one per
    GPU or core (devices.plan), each GPU shared by 1 / `gpus_per_worker` workers."""
    timeout = timeout or space.search.timeout
    target = target or space.search.trial_target(timeout)
    where = placements(space, workers, gpus_per_worker)
    workers = len(where)
    warning = check_data(space, source, workers)
    backend = BACKENDS[space.search.backend]
    backend.check_workers(space.name, workers, joining=False)
    study = create_or_check(space, url)
    space = as_stored(space, study)
    check_same_data(study, space, accept_changed_data)
    set_timeout(study, timeout)
    _say_about_data(space, warning, on_event)
    try:
        return backend.run(
            study, url, space, target=target, workers=workers,
            recycle_every=recycle_every, on_event=on_event, joining=False, placements=where,
        )  # fmt: skip
    except (SpaceError, DataError) as exc:
        # Found by the workers (a custom builder or a backbone tried on the space, images
        # decoded): a study left behind with no trials would refuse the fixed space as "a
        # different search space", so it goes, and the fixed space starts afresh.
        if study.get_trials(deepcopy=False):
            raise
        delete_study(study, url)
        kept = f"(Study {study.study_name!r} had no trials and was not kept.)"
        raise type(exc)(f"{exc} {kept}") from None


def resume(
    study: Any,
    url: str,
    space: SearchSpace,
    *,
    target: int | None = None,
    timeout: float | None = None,
    workers: int | None = 1,
    gpus_per_worker: float | None = None,
    recycle_every: int = DEFAULT_RECYCLE_EVERY,
    on_event: EventHandler = lambda event: None,
    joining: bool = False,
    accept_changed_data: bool = False,
) -> StudySummary:
    """Go on with a stored study (its `space` as stored), to `target` or to the target it was
    last driven to, within a total search time of `timeout` seconds or the budget it was last
    given: what `resume` does, and `worker` (`joining` others, maybe on other machines) does
    anywhere. `workers`, `gpus_per_worker`: see `start`."""
    name = study.study_name
    where = placements(space, workers, gpus_per_worker)
    workers = len(where)
    warning = check_data(space, f"study {name!r}", workers)
    check_same_data(study, space, accept_changed_data)
    target = target or target_of(study)
    set_timeout(study, timeout or timeout_of(study))
    _say_about_data(space, warning, on_event)
    backend = BACKENDS[space.search.backend]
    backend.check_workers(name, workers, joining)
    return backend.run(
        study, url, space, target=target, workers=workers, recycle_every=recycle_every,
        on_event=on_event, joining=joining, placements=where,
    )  # fmt: skip
