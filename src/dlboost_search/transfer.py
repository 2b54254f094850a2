"""Moving studies between storages, and merging two copies of one study.

A copy carries everything: trials with their parameters, values, intermediate values and
attributes, and the study's user and system attributes (records.py): its target, stored space
and data fingerprints, and its dashboard notes and figures; and the trials' stored models, into
the destination's store (artifacts.py). The source is only read.
This module never imports TensorFlow.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from dlboost_search.artifacts import carry_models
from dlboost_search.errors import StudyError
from dlboost_search.spaces import SearchSpace, check_study_name
from dlboost_search.storage import load_study, masked, open_storage
from dlboost_search.study import fail_trial, space_differences, space_of

__all__ = [
    "copy",
    "merge",
]

MOVED_REASON = "was running in {source} when the study was copied; nobody runs it here"


def copy(name: str, source_url: str, destination_url: str, new_name: str | None = None) -> int:
    """Copy study `name` into another storage (as `new_name`); return its number of trials.

    Trials that were running in the source are closed as failed in the copy: nobody runs them
    there. A copy that fails half-way is deleted, so the destination holds all or nothing.
    """
    import optuna
    from optuna.trial import TrialState

    to_name = new_name or name
    check_study_name(to_name, "--as")
    source = load_study(name, source_url)
    space_of(source)  # refuse a study dlboost-search cannot resume, before writing anything
    destination = open_storage(destination_url, create=True)
    if to_name in {s.study_name for s in destination.get_all_studies()}:
        raise StudyError(
            f"{masked(destination_url)} already has a study named {to_name!r}; nothing was "
            f"copied. Give the copy another name with --as, or combine the two with "
            f"`dlboost-search merge {to_name}`."
        )
    try:
        optuna.copy_study(
            from_study_name=name,
            from_storage=source._storage,
            to_storage=destination,
            to_study_name=to_name,
        )
        copied = optuna.load_study(study_name=to_name, storage=destination)
        reason = MOVED_REASON.format(source=masked(source_url))
        for trial in copied.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            fail_trial(copied, trial, reason)
        carry_models(
            source, source_url, copied, destination_url, copied.get_trials(deepcopy=False),
            new_copy=True,
        )  # fmt: skip
    except BaseException:
        if to_name in {s.study_name for s in destination.get_all_studies()}:
            optuna.delete_study(study_name=to_name, storage=destination)
        raise
    return len(copied.get_trials(deepcopy=False))


@dataclass(frozen=True)
class MergeResult:
    added: int
    already_there: int
    skipped_unfinished: int
    study: Any  # the destination's copy, merged
    space: SearchSpace  # its search space


def _identity(trial: Any) -> str:
    """What makes two stored trials the same trial: when it began and what it tried. Copies
    (export, import, a copied database file) keep both, to the second (MySQL's precision)."""
    started = trial.datetime_start.replace(microsecond=0).isoformat()
    return json.dumps([started, trial.params], sort_keys=True)


def _load_copy(name: str, url: str, hint: str) -> Any:
    """Study `name` in `url`, or a StudyError listing the studies there, with `hint`."""
    import optuna

    storage = open_storage(url)
    names = [s.study_name for s in storage.get_all_studies()]
    if name not in names:
        raise StudyError(
            f"no study named {name!r} in {masked(url)} (studies there: "
            f"{', '.join(names) or 'none'}); nothing was merged. {hint}"
        )
    return optuna.load_study(study_name=name, storage=storage)


def merge(
    name: str, source_url: str, destination_url: str, destination_name: str | None = None
) -> MergeResult:
    """Add to the destination's copy of study `name` (named `destination_name` there, when a
    copy renamed it) the trials of the source's copy that it lacks. Both copies must have the
    same stored search space, or they are not copies of one study. Trials still running or
    waiting in the source are left out: nobody would run them in the destination."""
    from optuna.trial import TrialState

    into = destination_name or name
    source = _load_copy(
        name,
        source_url,
        "NAME is the study's name in the --from storage; --as gives its name here when it differs.",
    )
    destination = _load_copy(
        into,
        destination_url,
        f"If the copy here has another name (as `import --as` gives it), pass it with --as; "
        f"to copy the study here instead, run `dlboost-search import {name} --from "
        f"{masked(source_url)}`.",
    )
    space = space_of(destination)
    differences = space_differences(space.to_dict(), space_of(source).to_dict())
    if differences:
        raise StudyError(
            f"study {into!r} in {masked(destination_url)} and study {name!r} in "
            f"{masked(source_url)} have different search spaces "
            f"({'; '.join(differences[:8])}), so they are not copies of one study; nothing "
            f"was merged. Copy it under another name instead: `dlboost-search export {name} "
            f"--storage {masked(source_url)} --to {masked(destination_url)} --as NEW_NAME`."
        )
    known = {_identity(t) for t in destination.get_trials(deepcopy=False) if t.datetime_start}
    finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    new, already_there, unfinished = [], 0, 0
    for trial in source.get_trials(deepcopy=False):
        if trial.state not in finished:
            unfinished += 1
        elif _identity(trial) in known:
            already_there += 1
        else:
            new.append(trial)
    # The models first: trials added without theirs would be retrained by export-model.
    carry_models(source, source_url, destination, destination_url, new, new_copy=False)
    destination.add_trials(new)
    return MergeResult(len(new), already_there, unfinished, destination, space)
