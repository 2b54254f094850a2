"""Closing what a worker left behind (pool.close_abandoned_trials), on a real SQLite study."""

from __future__ import annotations

import socket
from datetime import datetime, timedelta

import optuna
from optuna.trial import TrialState

from dlboost_search.pool import close_abandoned_trials


def test_a_dead_workers_trials_are_closed_and_others_are_left_alone(storage):
    study = optuna.create_study(storage=storage)
    before = datetime.now() - timedelta(seconds=1)
    mine = study.ask()
    mine.set_user_attr("worker", f"{socket.gethostname()}:123")
    theirs = study.ask()
    theirs.set_user_attr("worker", f"{socket.gethostname()}:456")
    unlabelled = study.ask()  # stopped while sampling, before the objective's first line

    closed = close_abandoned_trials(study, 123, before, "the worker process died")

    assert closed == [mine.number, unlabelled.number]
    trials = study.get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.RUNNING, TrialState.FAIL]
    assert trials[0].user_attrs["fail_reason"] == "the worker process died"


def test_unlabelled_trials_older_than_the_worker_are_not_its_own(storage):
    study = optuna.create_study(storage=storage)
    older = study.ask()
    assert close_abandoned_trials(study, 123, datetime.now() + timedelta(seconds=5), "x") == []
    assert study.trials[older.number].state == TrialState.RUNNING
