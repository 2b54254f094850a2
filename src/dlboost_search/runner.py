"""Start or resume a study: check its data, create or check the study in its storage, and
hand it to its backend. This is the one module that reads `search.backend`.

A backend runs the trials and sends events (events.py) as they go:
    optuna     workers in processes of their own, driven by pool.py (many per machine, and
               other machines joining through `worker`), or as tasks on a Ray cluster's
               nodes (--ray: raypool.py)
    hyperband  keras-tuner's Hyperband schedule in one worker process at a time, through the
               same pool (hyperband.py)
Neither imports TensorFlow into this process.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from dlboost_search import devices, events, memory
from dlboost_search.artifacts import settle_models
from dlboost_search.data import always_in_memory, preparation_notes, task_and_shape
from dlboost_search.errors import ArtifactError, DataError, DeviceError, SpaceError, StudyError
from dlboost_search.models import check_input
from dlboost_search.pool import DEFAULT_RECYCLE_EVERY
from dlboost_search.spaces import SearchSpace
from dlboost_search.storage import claim_state_dir
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
    # Whether its workers may run on a Ray cluster (`--ray`).
    on_ray: bool
    # Whether a target of finished trials (`--trials`) bounds it, or its schedule sets them.
    takes_trials: bool

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
        cluster: Any = None,
    ) -> StudySummary:
        """Run trials of the stored `study` until it has `target` finished trials (None: no
        target) or its time budget (study.timeout_of) is spent, then let the running trials
        finish; send events on the way; return its summary. `placements`: the device of
        each of the `workers` (devices.plan). `cluster`: the Ray cluster its workers run
        on (raypool.RayCluster; None: this machine)."""


class OptunaBackend:
    most_workers = None
    on_ray = True
    takes_trials = True

    def check_workers(self, name: str, workers: int, joining: bool) -> None:
        pass  # any number, on this machine and others

    def run(
        self, study, url, space, *, target, workers, recycle_every, on_event, joining,
        placements, cluster=None,
    ):  # fmt: skip
        from dlboost_search import pool

        set_target(study, target)
        return pool.drive(
            study, url, space, workers, recycle_every, on_event, sole=not joining,
            placements=placements, make_pool=cluster.pool() if cluster else pool.WorkerPool,
        )  # fmt: skip


class HyperbandBackend:
    most_workers = 1
    on_ray = False
    takes_trials = False

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
        placements, cluster=None,
    ):  # fmt: skip
        from dlboost_search import hyperband

        claim_state_dir(study, url)
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
    space: SearchSpace,
    workers: int | None,
    gpus_per_worker: float | None = None,
    cluster: Any = None,
) -> list[devices.Placement]:
    """The device of each worker this machine runs for `space` (`workers` None: auto), from
    the GPUs nvidia-smi shows; a DeviceError for what it cannot give, mixed precision without
    a GPU included. With a Ray `cluster` (raypool.RayCluster), those Ray gives the workers."""
    if cluster is not None:
        if space.training.mixed_precision and not cluster.gpus_per_worker:
            raise DeviceError(
                "training.mixed_precision is true, and the Ray workers get no GPU: Keras' "
                "mixed_float16 policy pays off on GPUs only. Give each worker a GPU "
                "(--gpus-per-worker 1, or 0.5 to share one between two), or set "
                "training.mixed_precision: false."
            )
        return cluster.placements(cluster.worker_count(workers))
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
    """The engine and whether the data is streamed (for a file or folder, whose size decided
    it), what preparing the data did (imputed, ignored, transformed), then check_data's
    warning."""
    choice = choose_engine(space.training.engine, space.data)
    if not always_in_memory(space.data):
        on_event(events.Noted(choice.line()))
    for note in preparation_notes(space.data, space.search.seed or 0, choice.streamed):
        on_event(events.Noted(note))
    if warning:
        on_event(events.Warned(warning))


@contextmanager
def _cluster(
    ray: str | None, url: str, cpus_per_worker: float | None, gpus_per_worker: float | None
) -> Iterator[Any]:
    """The Ray cluster at `ray` for as long as the run lasts (raypool.connected), or None
    without --ray."""
    if ray is None:
        if cpus_per_worker is not None:
            raise DeviceError(
                f"--cpus-per-worker {cpus_per_worker:g} sizes the workers Ray places (--ray); "
                f"workers on this machine share its cores evenly. Add --ray ADDRESS|auto|local, "
                f"or leave the option out."
            )
        yield None
        return
    from dlboost_search import raypool

    with raypool.connected(ray, url, cpus_per_worker, gpus_per_worker) as cluster:
        yield cluster


def _check_backend(
    backend: Backend, space: SearchSpace, ray: str | None, trials: int | None
) -> None:
    """Refuse what the command line asks of `backend` that it cannot do (`trials`: --trials)."""
    if trials is not None and not backend.takes_trials:
        raise StudyError(
            f"study {space.name!r} searches with search.backend: {space.search.backend}, whose "
            f"schedule sets the number of trials (training.max_epochs, search.factor and "
            f"search.hyperband_iterations decide it; `dlboost-search status` shows it as the "
            f"target): --trials {trials} would not bound it. Leave --trials out, and bound "
            f"the search by time with --timeout if need be."
        )
    if ray is not None and not backend.on_ray:
        raise StudyError(
            f"study {space.name!r} searches with search.backend: {space.search.backend}, whose "
            f"schedule runs in one worker process on this machine: it does not run on a Ray "
            f"cluster. Leave --ray out, or search with search.backend: optuna to spread trials "
            f"over the cluster."
        )


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
    ray: str | None = None,
    cpus_per_worker: float | None = None,
    artifacts: str | None = None,
) -> StudySummary:
    """Run the study `space` describes, to `target` finished trials and within `timeout`
    seconds of search in all (each given here, else from the space, like the space's own
    settings: a re-run without them goes back to the space's). `workers` None: auto, one per
    GPU or core (devices.plan), each GPU shared by 1 / `gpus_per_worker` workers. `ray`: the
    Ray cluster's address (or auto, local) to run the workers on, each with
    `cpus_per_worker` CPUs and `gpus_per_worker` of a GPU (raypool.connected).
    `artifacts`: where trial models go (--artifacts), else search.artifacts
    (artifacts.settle_models)."""
    backend = BACKENDS[space.search.backend]
    _check_backend(backend, space, ray, target)
    timeout = timeout or space.search.timeout
    target = target or space.search.trial_target(timeout)
    with _cluster(ray, url, cpus_per_worker, gpus_per_worker) as cluster:
        where = placements(space, workers, gpus_per_worker, cluster)
        workers = len(where)
        warning = check_data(space, source, _here(workers, cluster))
        backend.check_workers(space.name, workers, joining=False)
        study = create_or_check(space, url)
        space = as_stored(space, study)
        check_same_data(study, space, accept_changed_data)
        try:  # after the refusals that leave a study as it was: this records its store
            settle_models(study, url, artifacts or space.search.artifacts, space.search.keep_models)
        except ArtifactError:
            if not study.get_trials(deepcopy=False):  # made just now: nothing of it is kept
                delete_study(study, url)
            raise
        set_timeout(study, timeout)
        _say_about_data(space, warning, on_event)
        _say_about_cluster(cluster, on_event)
        try:
            return backend.run(
                study, url, space, target=target, workers=workers,
                recycle_every=recycle_every, on_event=on_event, joining=False, placements=where,
                cluster=cluster,
            )  # fmt: skip
        except (SpaceError, DataError, StudyError) as exc:
            # Found by the workers (a custom builder or a backbone tried on the space, images
            # decoded), or keras-tuner's state folder taken: a study left behind with no trials
            # would refuse the fixed space as "a different search space", so it goes, and the
            # fixed space starts afresh.
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
    ray: str | None = None,
    cpus_per_worker: float | None = None,
) -> StudySummary:
    """Go on with a stored study (its `space` as stored), to `target` or to the target it was
    last driven to, within a total search time of `timeout` seconds or the budget it was last
    given: what `resume` does, and `worker` (`joining` others, maybe on other machines) does
    anywhere. `workers`, `gpus_per_worker`, `ray`, `cpus_per_worker`: see `start`."""
    name = study.study_name
    backend = BACKENDS[space.search.backend]
    _check_backend(backend, space, ray, target)
    with _cluster(ray, url, cpus_per_worker, gpus_per_worker) as cluster:
        where = placements(space, workers, gpus_per_worker, cluster)
        workers = len(where)
        warning = check_data(space, f"study {name!r}", _here(workers, cluster))
        check_same_data(study, space, accept_changed_data)
        settle_models(study, url)
        target = target or target_of(study)
        set_timeout(study, timeout or timeout_of(study))
        _say_about_data(space, warning, on_event)
        _say_about_cluster(cluster, on_event)
        backend.check_workers(name, workers, joining)
        return backend.run(
            study, url, space, target=target, workers=workers, recycle_every=recycle_every,
            on_event=on_event, joining=joining, placements=where, cluster=cluster,
        )  # fmt: skip


def _here(workers: int, cluster: Any) -> int:
    """How many of the workers run on this machine, for the memory check: all of them
    without Ray or on a local Ray instance; on a cluster, the check is for one worker."""
    return workers if cluster is None or cluster.local else 1


def _say_about_cluster(cluster: Any, on_event: EventHandler) -> None:
    problem = cluster.unplaceable() if cluster is not None else None
    if problem:
        on_event(events.Warned(problem))
