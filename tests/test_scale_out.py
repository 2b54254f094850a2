"""Several workers on one study, on SQLite, PostgreSQL and MariaDB: the target is met exactly,
nothing is lost when workers or whole machines die, and servers that cannot be used say so."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request

import pytest
from optuna.trial import TrialState

from conftest import (
    SERVERS,
    cli_command,
    cli_env,
    interruptible,
    load,
    states,
    system_attrs,
    wait_for_running_trial,
)
from dlboost_search.worker import SURPLUS_REASON

pytestmark = pytest.mark.slow

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


def finished(url: str) -> list:
    return load(url).get_trials(deepcopy=False, states=FINISHED)


def test_workers_share_a_study_stop_at_the_target_and_resume_on_any_storage(
    write_space, any_storage, run_cli
):
    space = write_space(search={"trials": 4})
    result = run_cli("start", str(space), "--storage", any_storage, "--workers", "2", "-q")
    assert result.returncode == 0, result.stderr
    done = finished(any_storage)
    assert len(done) == 4
    assert len({t.user_attrs["worker"] for t in done}) == 2  # both workers trained
    assert len({json.dumps(t.params, sort_keys=True) for t in done}) == 4  # at different points
    assert "RUNNING" not in states(load(any_storage))
    # Resumed from the storage alone, to a new target, then to the target it remembers.
    result = run_cli("resume", "tiny", "--storage", any_storage, "--trials", "5", "-q")
    assert result.returncode == 0, result.stderr
    assert len(finished(any_storage)) == 5
    result = run_cli("resume", "tiny", "--storage", any_storage, "-q")
    assert result.returncode == 0, result.stderr
    assert len(finished(any_storage)) == 5


def test_only_a_lone_worker_samples_reproducibly(write_space, storage, run_cli):
    """A `worker` joins others (maybe on other machines that joined at the same trial count):
    with the space's seed alone they would try the same points."""
    space = write_space(search={"trials": 1})
    assert run_cli("start", str(space), "--storage", storage, "-q").returncode == 0
    lone = run_cli("resume", "tiny", "--storage", storage)  # target reached: no training
    assert "1 worker process(es) here, sampling reproducibly from search.seed" in lone.stdout
    for command in (["resume", "tiny", "-w", "2"], ["worker", "tiny"]):
        result = run_cli(*command, "--storage", storage)
        assert result.returncode == 0, result.stderr
        assert "each sampling from a random stream of its own" in result.stdout, command


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_four_workers_on_one_sqlite_file_with_the_dashboard_polling(write_space, storage, tmp_path):
    """Every trial lands: no "database is locked", from the workers or the dashboard."""
    space = write_space(search={"trials": 8})
    port = free_port()
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage, "--workers", "4",
                    "--dashboard", str(port), "-q"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    polls = 0
    while process.poll() is None:  # the dashboard's study page polls this while open
        try:
            for path in ("/api/studies", "/api/studies/1"):
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=30) as r:
                    assert r.status == 200
            polls += 1
        except (urllib.error.URLError, ConnectionError):  # not serving yet, or shut down
            pass
        time.sleep(0.1)
    _, stderr = process.communicate()
    assert process.returncode == 0, stderr
    assert polls > 10
    trials = load(storage).get_trials(deepcopy=False)
    assert len([t for t in trials if t.state in FINISHED]) == 8
    assert len({t.user_attrs["worker"] for t in trials}) == 4
    # The only failures allowed: a worker that asked for a trial the others already covered.
    assert all(
        t.user_attrs["fail_reason"] == SURPLUS_REASON for t in trials if t.state.name == "FAIL"
    )


LONG_TRIALS = {"max_epochs": 400, "early_stopping": {"patience": 400}}


def test_a_killed_worker_is_replaced_and_its_trial_retried(write_space, storage, tmp_path):
    space = write_space(training=LONG_TRIALS, search={"pruner": "none", "trials": 2})
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage, "-q"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lost = wait_for_running_trial(storage)
    os.kill(int(lost.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    _, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert trials[lost.number].state == TrialState.FAIL
    assert "worker process died" in trials[lost.number].user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert "fail_reason" not in retry.user_attrs
    assert len([t for t in trials if t.state in FINISHED]) == 2


def test_ctrl_c_closes_every_workers_trial_and_queues_no_retry(write_space, storage, tmp_path):
    training = {"max_epochs": 3000, "early_stopping": {"patience": 3000}}
    space = write_space(training=training, search={"pruner": "none", "trials": 4})
    process = subprocess.Popen(
        cli_command("start", str(space), "--storage", storage, "--workers", "2"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=interruptible,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:  # both workers inside a trial's epochs
        assert time.monotonic() < deadline, "two trials never trained at once"
        try:
            running = load(storage).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:
            running = []
        if len([t for t in running if t.intermediate_values]) == 2:
            break
        time.sleep(0.2)
    process.send_signal(signal.SIGINT)
    _, stderr = process.communicate(timeout=180)
    assert process.returncode == 130, stderr
    assert "2 running trial(s) closed as failed" in stderr, stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert {t.number for t in trials if t.state == TrialState.FAIL} == {t.number for t in running}
    assert all(
        "interrupted" in t.user_attrs["fail_reason"] for t in trials if t.state.name == "FAIL"
    )
    assert "RUNNING" not in states(load(storage)) and "WAITING" not in states(load(storage))


def test_a_lost_machine_is_found_by_its_heartbeat_and_its_trial_retried(
    write_space, any_storage, tmp_path
):
    """Runner and worker both killed: nobody on that machine closes the trial. A worker
    joining from elsewhere sees the heartbeat stop, fails the trial and runs it again, from
    the checkpoint the lost one left in the study's artifact store."""
    search = {"pruner": "none", "trials": 2, "heartbeat_seconds": 1, "stale_after_seconds": 4}
    space = write_space(training={**LONG_TRIALS, "checkpoint_every": 5}, search=search)
    machine = subprocess.Popen(
        cli_command("start", str(space), "--storage", any_storage, "-q"),
        cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    lost = wait_for_running_trial(any_storage)
    deadline = time.monotonic() + 120
    while "dlboost_checkpoint" not in load(any_storage).trials[lost.number].system_attrs:
        assert time.monotonic() < deadline, "no checkpoint in time"
        time.sleep(0.05)
    # The worker first: a worker whose runner is gone closes its trial at the next epoch.
    os.kill(int(lost.user_attrs["worker"].rsplit(":", 1)[1]), signal.SIGKILL)
    machine.kill()
    machine.communicate()
    assert load(any_storage).trials[lost.number].state == TrialState.RUNNING
    joined = subprocess.run(
        cli_command("worker", "tiny", "--storage", any_storage, "-q"),
        cwd=tmp_path, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert joined.returncode == 0, joined.stderr
    trials = load(any_storage).get_trials(deepcopy=False)
    assert trials[lost.number].state == TrialState.FAIL
    assert "lost: no heartbeat for" in trials[lost.number].user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    assert retry.user_attrs["resumed_from_epoch"] == retry.user_attrs["resume_from"]["epoch"] > 0
    assert len([t for t in trials if t.state in FINISHED]) == 2
    assert "RUNNING" not in states(load(any_storage))


@pytest.mark.parametrize("any_storage", ["sqlite", "postgresql"], indirect=True)
def test_a_trial_that_never_sent_a_heartbeat_is_lost_and_retried(write_space, any_storage, run_cli):
    """A worker killed between creating its trial and its first heartbeat leaves a RUNNING
    trial that no heartbeat will ever show as stale; it used to hold every later run one trial
    short of its target, forever. A later run fails it once it has stayed silent for
    stale_after_seconds, and runs it again."""
    search = {"pruner": "none", "trials": 2, "heartbeat_seconds": 1, "stale_after_seconds": 2}
    space = write_space(search=search)
    assert run_cli("start", str(space), "--storage", any_storage, "-q").returncode == 0
    orphan = load(any_storage).ask()  # created, and never a heartbeat: that window, exactly
    done = run_cli("resume", "tiny", "--storage", any_storage, "--trials", "4", "-q")
    assert done.returncode == 0, done.stderr
    trials = load(any_storage).get_trials(deepcopy=False)
    assert trials[orphan.number].state == TrialState.FAIL
    reason = trials[orphan.number].user_attrs["fail_reason"]
    assert "lost: no heartbeat in 2 s since it was created" in reason
    assert [t.user_attrs.get("retry_of") for t in trials].count(orphan.number) == 1
    assert len([t for t in trials if t.state in FINISHED]) == 4
    assert "RUNNING" not in states(load(any_storage))


def test_a_trial_past_its_time_limit_is_failed_and_the_search_moves_on(
    write_space, storage, run_cli
):
    training = {
        "max_epochs": 5000,
        "early_stopping": {"patience": 5000},
        "trial_timeout_seconds": 2,
    }
    space = write_space(training=training, search={"pruner": "none", "max_consecutive_failures": 2})
    result = run_cli("start", str(space), "--storage", storage, "-q")
    assert result.returncode == 4, result.stderr
    assert "2 trials in a row ran past training.trial_timeout_seconds (2 s)" in result.stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]  # moved on, not retried
    for trial in trials:
        assert (
            "still running after training.trial_timeout_seconds (2 s)"
            in trial.user_attrs["fail_reason"]
        )
        assert trial.intermediate_values  # it was training, not stuck before the first epoch


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        (SERVERS["postgresql"][0].format("no_such_db"), 'database "no_such_db" does not exist'),
        ("postgresql://nobody@127.0.0.1:5432/test", 'role "nobody" does not exist'),
        ("mysql+pymysql://root:wrong@127.0.0.1:3306/test", "Access denied for user 'root'"),
        ("mysql+pymysql://root@127.0.0.1:3306/no_such_db", "Unknown database 'no_such_db'"),
        ("mysql+pymysql://root@127.0.0.1:1/test", "Can't connect to MySQL server"),
    ],
)
def test_an_unusable_server_storage_is_one_clear_error(run_cli, url, expected):
    result = run_cli("status", "--storage", url)
    assert result.returncode == 3, result.stderr
    assert expected in result.stderr and "cannot open storage" in result.stderr
    assert "wrong" not in result.stderr and "Traceback" not in result.stderr


def _create_at_the_same_moment(space_dict, url, barrier, results):
    from dlboost_search.spaces import space_from_dict
    from dlboost_search.study import create_or_check

    space = space_from_dict(space_dict, "test")
    barrier.wait()
    try:
        study = create_or_check(space, url)
        results.put(("ok", study._study_id))
    except Exception as exc:  # reported to the test, which shows it
        results.put(("error", f"{type(exc).__name__}: {exc}"))


@pytest.mark.parametrize("any_storage", ["sqlite", "postgresql", "mysql"], indirect=True)
def test_ten_processes_creating_one_new_study_at_once_make_it_once(any_storage):
    import multiprocessing

    from conftest import TINY_SPACE

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(10), context.Queue()
    processes = [
        context.Process(
            target=_create_at_the_same_moment, args=(TINY_SPACE, any_storage, barrier, results)
        )  # fmt: skip
        for _ in range(10)
    ]
    for process in processes:
        process.start()
    outcomes = [results.get(timeout=120) for _ in processes]
    for process in processes:
        process.join(timeout=60)
    assert [kind for kind, _ in outcomes] == ["ok"] * 10, outcomes
    assert len({study_id for _, study_id in outcomes}) == 1
    assert system_attrs(any_storage)["dlboost_search"]["space"]["name"] == "tiny"
