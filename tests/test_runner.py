"""Closing what a worker left behind (pool.close_abandoned_trials), and what a study stores
about when to stop (its target and time budget, the time it searched), on real SQLite studies."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

import optuna
from optuna.trial import TrialState

from conftest import TINY_SPACE, deep_update
from dlboost_search import records
from dlboost_search.pool import close_abandoned_trials
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import SearchClock, create_or_check, set_timeout, timeout_of


def test_a_dead_workers_trials_are_closed_and_others_are_left_alone(storage):
    study = optuna.create_study(storage=storage)
    before = datetime.now() - timedelta(seconds=1)
    mine = study.ask()
    mine.set_user_attr("worker", f"{socket.gethostname()}:123")
    theirs = study.ask()
    theirs.set_user_attr("worker", f"{socket.gethostname()}:456")
    unlabelled = study.ask()  # stopped while sampling, before the objective's first line

    dead = records.worker_id(123)
    closed = close_abandoned_trials(study, dead, before, "the worker process died")

    assert closed == [mine.number, unlabelled.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    assert trials[0].user_attrs["fail_reason"] == "the worker process died"


def test_unlabelled_trials_older_than_the_worker_are_not_its_own(storage):
    study = optuna.create_study(storage=storage)
    older = study.ask()
    later = datetime.now() + timedelta(seconds=5)
    assert close_abandoned_trials(study, records.worker_id(123), later, "x") == []
    assert study.trials[older.number].state == TrialState.RUNNING


def test_a_changed_timeout_or_trial_count_is_the_same_study(storage):
    space = space_from_dict(deep_update(TINY_SPACE, {"search": {"timeout": "10m"}}), "a.yaml")
    study = create_or_check(space, storage)
    changed = deep_update(TINY_SPACE, {"search": {"timeout": "1h", "trials": 7}})
    again = create_or_check(space_from_dict(changed, "b.yaml"), storage)  # not refused
    assert again.study_name == study.study_name
    assert timeout_of(study) == 600  # the stored space's, until a run sets its own
    set_timeout(study, 3600)
    assert timeout_of(study) == 3600


def test_the_stored_search_time_only_grows(storage):
    study = create_or_check(space_from_dict(TINY_SPACE, "space.yaml"), storage)
    set_timeout(study, 50)
    study.set_user_attr(records.SEARCHED_SECONDS, 80.0)  # earlier runs searched past it
    clock = SearchClock(study)
    assert clock.spent() and clock.left() == 0
    assert clock.deadline() is not None

    study.set_user_attr(records.SEARCHED_SECONDS, 10_000.0)  # a run elsewhere counted more
    clock.save()
    assert study.user_attrs[records.SEARCHED_SECONDS] == 10_000.0  # never lowered

    set_timeout(study, None)
    assert not SearchClock(study).spent() and SearchClock(study).deadline() is None
