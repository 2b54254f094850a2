"""Optuna studies that remember their search space: create, check, resume, summarize.

This module never imports TensorFlow.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlboost_search import __version__, limits, records
from dlboost_search.artifacts import open_models
from dlboost_search.data import fingerprint
from dlboost_search.errors import StudyError
from dlboost_search.spaces import SearchSettings, SearchSpace, space_from_dict
from dlboost_search.storage import (
    RetryLostTrial,
    masked,
    open_storage,
    owns_state_dir,
    state_dir,
    storage_option,
    stored_spec,
)

if TYPE_CHECKING:
    import optuna

__all__ = [
    "LostTrials",
    "SearchClock",
    "StudySummary",
    "all_summaries",
    "check_same_data",
    "as_stored",
    "create_or_check",
    "delete_study",
    "fail_trial",
    "make_pruner",
    "make_sampler",
    "set_target",
    "set_timeout",
    "space_differences",
    "space_of",
    "summarize",
    "target_of",
    "timeout_of",
]

# What steers the next trials and when to stop, not what they mean: may change from one run to
# the next (the CLI sets `search.trials` and `search.timeout`); everything else defines the study.
_NOT_DEFINING = (
    "search.trials",
    "search.timeout",
    "search.startup_trials",
    "search.halving_bootstrap",
    "search.artifacts",
    "search.keep_models",
    "training.checkpoint_every",
)

# Data settings whose default changed when tables got their own preparation (issue 17): a study
# stored before them prepared its data as these values do, and keeps doing so (its trials stay
# comparable: a log target would change the objective's scale) unless its YAML sets them.
_BEFORE_TABLES = {"target_transform": "none", "max_categories": None}


def make_sampler(
    space: SearchSpace, trials_so_far: int, stream: int = 0
) -> optuna.samplers.BaseSampler:
    """The sampler of one worker process.

    Offsetting the seed by the trials already in the study keeps a recycled worker from
    replaying its predecessor's random start-up points; `stream` (0 for a study's only worker,
    else something unique to the worker) keeps workers running side by side apart. TPE's
    constant liar counts other workers' running trials as bad, so they sample elsewhere.
    """
    import optuna

    seed = None
    if space.search.seed is not None:
        seed = space.search.seed + trials_so_far + (stream * 1_000_003) % 2**31
    if space.search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if space.search.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=space.search.seed, warn_independent_sampling=False)
    return optuna.samplers.TPESampler(
        seed=seed,
        multivariate=True,
        constant_liar=True,
        n_startup_trials=space.search.startup(),
    )


def make_pruner(space: SearchSpace) -> optuna.pruners.BasePruner:
    import optuna

    max_epochs = space.training.max_epochs
    name = space.search.pruner
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    if name == "successive_halving":
        # Asynchronous successive halving with rungs at 1, 3, 9, 27... epochs: every trial
        # faces the cut, where the Hyperband pruner splits a small study into brackets too
        # thin to compare within. The default since the search-quality benchmark
        # (benchmarks/README.md).
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=1, reduction_factor=3, bootstrap_count=space.search.bootstrap()
        )
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if name == "patient":
        return optuna.pruners.PatientPruner(
            optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2), patience=3
        )
    return optuna.pruners.NopPruner()


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{path}."))
        else:
            flat[path] = value
    return flat


def space_differences(stored: dict[str, Any], new: dict[str, Any]) -> list[str]:
    old_flat, new_flat = _flatten(stored), _flatten(new)
    return [
        f"{key}: {old_flat.get(key, '(absent)')!r} -> {new_flat.get(key, '(absent)')!r}"
        for key in sorted(old_flat.keys() | new_flat.keys())
        if key not in _NOT_DEFINING and old_flat.get(key) != new_flat.get(key)
    ]


def create_or_check(space: SearchSpace, url: str) -> optuna.Study:
    """The study named by `space`: created with its spec stored, or loaded if it matches."""
    import optuna

    storage = open_storage(url, create=True)
    study = optuna.create_study(
        study_name=space.name,
        storage=storage,
        direction=space.direction,
        load_if_exists=True,
    )
    if records.study_record(study, records.SPEC) is None:
        spec = {"space": space.to_dict(), "version": __version__}
        records.set_study_record(study, records.SPEC, spec)
        study.set_user_attr(records.VERSION, __version__)
        return study
    # Through today's model: settings added since the study was made compare as their defaults
    # (or as it was made, for those of _BEFORE_TABLES).
    stored = _stored_space(study, space.name).to_dict()
    differences = space_differences(stored, as_stored(space, study).to_dict())
    if differences:
        listed = "; ".join(differences[:8]) + (" ..." if len(differences) > 8 else "")
        raise StudyError(
            f"study {space.name!r} in {masked(url)} was created with a different search space "
            f"({listed}). Nothing was changed. To continue it as stored, run "
            f"`dlboost-search resume {space.name}{storage_option(url)}`; to search the new "
            f"space, give it another `name:` in the YAML or pass --study-name."
        )
    return study


def space_of(study: optuna.Study) -> SearchSpace:
    """The search space a study was created with."""
    return _stored_space(study, study.study_name)


def _stored_space(study: optuna.Study, name: str) -> SearchSpace:
    raw = dict(stored_spec(study)["space"])
    if isinstance(raw.get("data"), dict):
        raw["data"] = {**_BEFORE_TABLES, **raw["data"]}
    return space_from_dict(raw, f"study {name!r}")


def as_stored(space: SearchSpace, study: optuna.Study) -> SearchSpace:
    """`space` (from a YAML file) for the stored `study`: the data settings of _BEFORE_TABLES
    that the file leaves to their defaults are the study's own, so that `start` on a study
    made before them goes on preparing its data as its trials were."""
    stored = _stored_space(study, study.study_name).data
    kept = {
        key: getattr(stored, key)
        for key in _BEFORE_TABLES
        if key not in space.data.model_fields_set
        and getattr(stored, key) != getattr(space.data, key)
    }
    if not kept:
        return space
    return space.model_copy(update={"data": space.data.model_copy(update=kept)})


def fail_trial(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, reason: str
) -> optuna.trial.FrozenTrial | None:
    """Close a running trial that nobody will finish as FAIL, with `reason` as its
    fail_reason; None when another process finished or closed it first (the storage decides
    atomically, so of two runners closing one lost trial only one retries it)."""
    import optuna
    from optuna.trial import TrialState

    # _trial_id is the storage key; Optuna exposes no public setter by trial number.
    storage, trial_id = study._storage, trial._trial_id
    try:
        storage.set_trial_user_attr(trial_id, records.FAIL_REASON, reason)
        if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
            return None
    except optuna.exceptions.UpdateFinishedTrialError:
        return None
    return storage.get_trial(trial_id)


def _heartbeat_ages(study: optuna.Study) -> dict[int, float | None]:
    """Seconds since the last heartbeat of each running trial (by trial id), measured on the
    database's clock as Optuna writes them; None for a trial that never sent one."""
    import sqlalchemy
    from optuna.storages._rdb import models
    from optuna.trial import TrialState

    # Optuna wraps its RDBStorage in a cache; the heartbeats are in the database only.
    storage = getattr(study._storage, "_backend", study._storage)
    session = storage.scoped_session()
    try:
        now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar_one()
        rows = session.execute(
            sqlalchemy.select(models.TrialModel.trial_id, models.TrialHeartbeatModel.heartbeat)
            .outerjoin(models.TrialHeartbeatModel)
            .where(models.TrialModel.study_id == study._study_id)
            .where(models.TrialModel.state == TrialState.RUNNING)
        ).all()
    finally:
        session.close()
    now = now.replace(tzinfo=None)  # PostgreSQL's is aware, the stored heartbeats are not
    return {
        trial_id: None if beat is None else (now - beat).total_seconds() for trial_id, beat in rows
    }


class LostTrials:
    """Finds the running trials whose worker is gone, whatever machine ran it, and fails each
    with the reason, queuing its retry (search.retries).

    A trial is lost when its heartbeat is older than search.stale_after_seconds, or when it
    has sent none for that long since this runner first saw it: a worker killed between
    creating its trial and the first heartbeat leaves such a trial, which would otherwise
    stay RUNNING forever and hold every later run one trial short of its target. The second
    clock is this process's own, so clocks that differ between machines cannot fail a live
    trial early.
    """

    def __init__(self, settings: SearchSettings):
        self.settings = settings
        self.unbeating_since: dict[int, float] = {}  # trial id -> first seen without heartbeat

    def __call__(self, study: optuna.Study) -> list[int]:
        """Fail and retry the lost trials; return their numbers."""
        ages = _heartbeat_ages(study)
        now = time.monotonic()
        self.unbeating_since = {
            trial_id: self.unbeating_since.get(trial_id, now)
            for trial_id, age in ages.items()
            if age is None
        }
        limit = self.settings.stale_after_seconds
        lost = []
        for trial_id, age in ages.items():
            if age is not None and age > limit:
                reason = f"lost: no heartbeat for {age:.0f} s (its worker or machine is gone)"
            elif age is None and now - self.unbeating_since[trial_id] > limit:
                reason = (
                    f"lost: no heartbeat in {limit} s since it was created (its worker stopped "
                    f"before training began)"
                )
            else:
                continue
            failed = fail_trial(study, study._storage.get_trial(trial_id), reason)
            if failed is not None:
                RetryLostTrial(self.settings.retries)(study, failed)
                lost.append(failed.number)
        return lost


def check_same_data(study: optuna.Study, space: SearchSpace, accept_changed: bool) -> None:
    """Keep the fingerprint of the study's data files the first time; afterwards refuse to go
    on when one changed (trials scored on two datasets are not comparable), unless
    `accept_changed`, which the study records."""
    now = fingerprint(space.data)
    before = records.study_record(study, records.DATA)
    if before is None:  # a new study, or one made before studies kept fingerprints
        records.set_study_record(study, records.DATA, now)
        return
    changed = sorted(key for key in before.keys() | now.keys() if before.get(key) != now.get(key))
    if not changed:
        return
    if not accept_changed:
        files = ", ".join(f"data.{key} {getattr(space.data, key)}" for key in changed)
        trials = len(study.get_trials(deepcopy=False))
        raise StudyError(
            f"the data of study {study.study_name!r} changed since the study began: {files} "
            f"(SHA-256 {before.get(changed[0], 'none')[:12]}... then, "
            f"{now.get(changed[0], 'none')[:12]}... now). Its {trials} trials were scored on "
            f"the old data, so nothing was run. To go on with the new data anyway, add "
            f"--accept-changed-data (the study records that you did); to search the new data "
            f"apart, start a study of another name."
        )
    change = {"at": datetime.now().isoformat(timespec="seconds"), "before": before, "after": now}
    changes = [*(records.study_record(study, records.DATA_CHANGES) or []), change]
    records.set_study_record(study, records.DATA_CHANGES, changes)
    records.set_study_record(study, records.DATA, now)


def set_target(study: optuna.Study, target: int | None) -> None:
    """Record the number of finished trials the study is being driven to (None: none, its
    time budget ends it): a `worker` joining from another machine, or a later `resume`, goes
    on to the same target."""
    _set(study, records.TARGET, target)


def target_of(study: optuna.Study) -> int | None:
    attrs = study.user_attrs
    if records.TARGET in attrs:
        return attrs[records.TARGET]
    search = space_of(study).search  # never run yet
    return search.trial_target()


def set_timeout(study: optuna.Study, seconds: float | None) -> None:
    """Record the study's time budget: the total time it may search, over all its runs
    (None: no limit), which `resume` and joining workers go on with."""
    _set(study, records.TIMEOUT, seconds)


def timeout_of(study: optuna.Study) -> float | None:
    attrs = study.user_attrs
    return attrs[records.TIMEOUT] if records.TIMEOUT in attrs else space_of(study).search.timeout


def _set(study: optuna.Study, key: str, value: Any) -> None:
    attrs = study.user_attrs
    if key not in attrs or attrs[key] != value:
        study.set_user_attr(key, value)


class SearchClock:
    """The time a study has searched, against its time budget: what earlier runs stored, plus
    this run's since the clock was made. Every runner and joining worker keeps one and stores
    what it counted now and then; the stored time only grows, so runs side by side (other
    machines) count the study's time once, not once each."""

    SAVE_EVERY_S = 10.0

    def __init__(self, study: optuna.Study):
        self.study = study
        self.budget = timeout_of(study)
        self.before = float(study.user_attrs.get(records.SEARCHED_SECONDS, 0.0))
        self.started = self.saved = time.monotonic()

    def searched(self) -> float:
        return self.before + time.monotonic() - self.started

    def left(self) -> float | None:
        """Seconds of the budget left; None without a budget."""
        return None if self.budget is None else max(0.0, self.budget - self.searched())

    def spent(self) -> bool:
        return self.budget is not None and self.searched() >= self.budget

    def deadline(self) -> float | None:
        """When the budget is spent, on the wall clock (time.time()), for worker processes."""
        left = self.left()
        return None if left is None else time.time() + left

    def tick(self) -> None:
        """Store the searched time if it was last stored a while ago."""
        if time.monotonic() - self.saved >= self.SAVE_EVERY_S:
            self.save()

    def save(self) -> None:
        self.saved = time.monotonic()
        searched = round(self.searched(), 1)
        if searched > float(self.study.user_attrs.get(records.SEARCHED_SECONDS, 0.0)):
            self.study.set_user_attr(records.SEARCHED_SECONDS, searched)


@dataclass(frozen=True)
class StudySummary:
    name: str
    direction: str
    complete: int
    pruned: int
    failed: int
    running: int
    best_value: float | None
    best_trial: int | None
    last_activity: datetime | None
    devices: tuple[str, ...] = ()  # what its trials trained on ("cpu", "gpu:0"), as recorded
    # Complete trials over a limit of objective.constraints: never the best trial.
    infeasible: int = 0

    @property
    def finished(self) -> int:
        return self.complete + self.pruned


def summarize(study: optuna.Study) -> StudySummary:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    count = lambda state: sum(t.state == state for t in trials)  # noqa: E731
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    constraints = limits.constraints_of(study)
    best = limits.best_trial(study, constraints)
    stamps = [s for t in trials for s in (t.datetime_start, t.datetime_complete) if s]
    return StudySummary(
        name=study.study_name,
        direction=study.direction.name.lower(),
        complete=len(complete),
        pruned=count(TrialState.PRUNED),
        failed=count(TrialState.FAIL),
        running=count(TrialState.RUNNING),
        best_value=best.value if best else None,
        best_trial=best.number if best else None,
        last_activity=max(stamps) if stamps else None,
        devices=tuple(sorted({d for t in trials if (d := records.device_of(t))})),
        infeasible=sum(not limits.feasible(constraints, t) for t in complete),
    )


def delete_study(study: optuna.Study, url: str) -> Path | None:
    """Delete `study` from its storage, with its trial models and the Hyperband backend's
    state kept for it here; return that state's folder if there was one."""
    import shutil

    import optuna

    if any(t.system_attrs for t in study.get_trials(deepcopy=False)):  # models, maybe
        open_models(study, url).remove_all(study)
    folder = state_dir(url, study.study_name)
    mine = owns_state_dir(study, folder)  # not another same-named study's, side by side
    optuna.delete_study(study_name=study.study_name, storage=study._storage)
    if folder.is_dir() and mine:
        shutil.rmtree(folder)
        return folder
    return None


def all_summaries(url: str) -> list[StudySummary]:
    import optuna

    storage = open_storage(url)
    return [
        summarize(optuna.load_study(study_name=s.study_name, storage=storage))
        for s in storage.get_all_studies()
    ]
