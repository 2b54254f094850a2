"""Workers on a Ray cluster (`--ray`): a real two-node cluster on loopback (a head node and a
second node, one CPU each, started once for the module) with the study in PostgreSQL; a Ray
instance a run starts for itself (`--ray local`); and what is refused before anything is
stored. The driver is the CLI, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from optuna.trial import TrialState

from conftest import (
    TINY_SPACE,
    cli_command,
    cli_env,
    deep_update,
    interruptible,
    load,
    states,
    wait_for_running_trial,
)
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import create_or_check, set_target

FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
HYPERBAND = {"training": {"max_epochs": 3}, "search": {"backend": "hyperband", "factor": 3}}
# Ray replaces a 127.0.0.1 node address with the machine's network address (and then listens
# on every interface) unless told it runs on this machine alone: with this, the nodes and the
# driver stay on loopback. No token file in the home folder, no usage report.
RAY_ENV = {
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
}
# Two nodes of one CPU each, started by Ray's own test helper in a process of their own, which
# stops exactly those nodes (their processes, by handle) when the test closes its stdin or
# sends SIGTERM.
CLUSTER = """
import signal, sys
from ray.cluster_utils import Cluster

signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # the finally below stops the nodes
port, temp_dir = int(sys.argv[1]), sys.argv[2]
cluster = Cluster()
try:
    node = dict(num_cpus=1, include_dashboard=False, temp_dir=temp_dir, node_ip_address="127.0.0.1")
    cluster.add_node(gcs_server_port=port, **node)
    cluster.add_node(**node)
    print(cluster.address, flush=True)
    sys.stdin.read()
finally:
    cluster.shutdown()
"""


def ray_env(**more: str) -> dict[str, str]:
    return {**cli_env(), **RAY_ENV, **more}


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """The address of a two-node Ray cluster on 127.0.0.1, for the module's tests."""
    # A short folder of its own: Ray's socket paths under it must fit in 107 bytes, which
    # pytest's folders under xdist (.../pytest-84/popen-gw1/...) leave no room for.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp", ignore_cleanup_errors=True) as f:
        yield from _cluster(Path(f))


def _cluster(temp_dir: Path) -> Iterator[str]:
    log = temp_dir / "nodes.log"
    # Ray's test helper writes the cluster's address into RAY_TMPDIR/ray, /tmp/ray by
    # default, which a fresh machine lacks: this cluster keeps it in its own folder.
    (temp_dir / "ray").mkdir()
    with log.open("w") as stderr:
        nodes = subprocess.Popen(
            [sys.executable, "-c", CLUSTER, str(free_port()), str(temp_dir)],
            env={**os.environ, **RAY_ENV, "RAY_TMPDIR": str(temp_dir)},
            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=stderr, text=True,
        )  # fmt: skip
    try:
        address = nodes.stdout.readline().strip()
        assert address, log.read_text()[-3000:]
        yield address
    finally:
        nodes.stdin.close()  # the nodes stop
        try:
            nodes.wait(timeout=60)
        except subprocess.TimeoutExpired:
            nodes.terminate()
            nodes.wait(timeout=60)
        nodes.stdout.close()


def write_space(folder: Path, **changes) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(deep_update(TINY_SPACE, changes), sort_keys=False))
    return path


def run(folder: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300):
    return subprocess.run(
        cli_command(*args), cwd=folder, env=env or ray_env(), capture_output=True, text=True,
        timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def finished(url: str) -> list:
    return load(url).get_trials(deepcopy=False, states=FINISHED)


def worker_pid(trial) -> int:
    return int(trial.user_attrs["worker"].rsplit(":", 1)[1])


def gone(pid: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("any_storage", ["postgresql"], indirect=True)
def test_ray_workers_on_two_nodes_reach_the_target_and_retry_a_killed_workers_trial(
    cluster, any_storage, tmp_path
):
    """Two workers, one per node (a CPU each); one is killed in the middle of a trial: only
    that trial is lost, and it runs again with the same parameters."""
    # Trials of a few seconds: the one found training is still training when it is killed.
    training = {"max_epochs": 200, "early_stopping": {"patience": 200}}
    space = write_space(tmp_path, training=training, search={"pruner": "none", "trials": 4})
    driver = subprocess.Popen(
        cli_command("start", str(space), "--storage", any_storage, "--ray", cluster, "-w", "2"),
        cwd=tmp_path, env=ray_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        # Generous: Ray's workers import TensorFlow on a loaded two-core machine.
        lost = wait_for_running_trial(any_storage, timeout=300)
        os.kill(worker_pid(lost), signal.SIGKILL)
        out, stderr = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:  # a failed wait: stop the driver this test started
            driver.kill()
            driver.communicate()
    assert driver.returncode == 0, stderr
    trials = load(any_storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state in FINISHED]
    assert len(done) == 4
    assert trials[lost.number].state == TrialState.FAIL
    assert "the Ray worker died" in trials[lost.number].user_attrs["fail_reason"]
    (retry,) = [t for t in trials if t.user_attrs.get("retry_of") == lost.number]
    assert retry.state == TrialState.COMPLETE and retry.params == lost.params
    # The killed worker and the other one, side by side on the two nodes (the killed one's
    # successor may find the target reached by the time TensorFlow is imported).
    assert len({t.user_attrs["worker"] for t in trials}) >= 2
    assert "RUNNING" not in states(load(any_storage))
    assert f"2 worker process(es) on the Ray cluster at {cluster} (2 nodes)" in out
    assert "worker died (lost)" in out
    for trial in done:  # the driver's progress shows every worker's trials
        assert f"trial {trial.number:>4} complete" in out


@pytest.mark.slow
@pytest.mark.parametrize("any_storage", ["postgresql"], indirect=True)
def test_ctrl_c_cancels_the_ray_workers_and_closes_their_trials(cluster, any_storage, tmp_path):
    """`worker NAME --ray auto` (the KubeRay example's command line) joins a study made
    elsewhere, with two workers; Ctrl-C reaches its driver while both train."""
    changes = {"training": {"max_epochs": 3000, "early_stopping": {"patience": 3000}}}
    changes["search"] = {"pruner": "none", "trials": 4}
    space = space_from_dict(deep_update(TINY_SPACE, changes), "s.yaml")
    set_target(create_or_check(space, any_storage), 4)
    driver = subprocess.Popen(
        cli_command("worker", "tiny", "--storage", any_storage, "--ray", "auto", "-w", "2"),
        cwd=tmp_path, env=ray_env(RAY_ADDRESS=cluster), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, preexec_fn=interruptible,
    )  # fmt: skip
    deadline = time.monotonic() + 180
    while True:  # both workers inside a trial's epochs
        assert time.monotonic() < deadline, "two trials never trained at once"
        running = load(any_storage).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if len([t for t in running if t.intermediate_values]) == 2:
            break
        time.sleep(0.2)
    driver.send_signal(signal.SIGINT)
    _, stderr = driver.communicate(timeout=180)
    assert driver.returncode == 130, stderr
    assert "2 running trial(s) closed as failed" in stderr, stderr
    trials = load(any_storage).get_trials(deepcopy=False)
    assert {t.number for t in trials if t.state == TrialState.FAIL} == {t.number for t in running}
    assert all("interrupted" in trials[t.number].user_attrs["fail_reason"] for t in running)
    assert "RUNNING" not in states(load(any_storage)) and "WAITING" not in states(load(any_storage))
    assert all(gone(worker_pid(t)) for t in running), "a Ray worker still runs"


@pytest.mark.slow  # it starts the module's cluster
def test_an_sqlite_study_is_refused_on_a_cluster_of_two_nodes(cluster, tmp_path):
    space = write_space(tmp_path)
    result = run(tmp_path, "start", str(space), "--storage", "sqlite:///s.db", "--ray", cluster)
    assert result.returncode == 2, result.stderr
    assert "is an SQLite file on this machine" in result.stderr
    assert f"the Ray cluster at {cluster} has 2 nodes" in result.stderr
    assert "--storage postgresql://" in result.stderr and "--ray local" in result.stderr
    assert not (tmp_path / "s.db").exists()  # nothing created


@pytest.mark.slow
@pytest.mark.parametrize("any_storage", ["postgresql"], indirect=True)
def test_workers_no_node_can_hold_are_withdrawn_once_the_time_budget_is_spent(
    cluster, any_storage, tmp_path
):
    """Each node has one CPU and a worker asks for two: Ray holds the task for ever, and the
    run ends when its time budget does, instead of waiting for it."""
    space = write_space(tmp_path)
    args = ["--storage", any_storage, "--ray", cluster, "--cpus-per-worker", "2"]
    result = run(tmp_path, "start", str(space), *args, "--timeout", "5s", timeout=120)
    assert result.returncode == 0, result.stderr
    assert "no node of the Ray cluster has 2 CPUs for a worker" in result.stdout + result.stderr
    assert load(any_storage).get_trials(deepcopy=False) == []  # nothing ran, nothing left


@pytest.mark.slow
def test_ray_local_runs_its_own_instance_and_stops_it(tmp_path):
    """`--ray local` with SQLite (every worker is on this machine): the instance the run
    started, and every process of it, is gone when the run ends."""
    space = write_space(tmp_path, search={"trials": 2})
    mark = uuid.uuid4().hex  # in the environment of every process the run starts
    # Ray's session folder, short: its sockets' paths must fit in 107 bytes.
    with tempfile.TemporaryDirectory(prefix="ray-", dir="/tmp") as ray_tmp:
        env = ray_env(DLBOOST_TEST_RUN=mark, RAY_TMPDIR=ray_tmp)
        result = run(tmp_path, "start", str(space), "--ray", "local", "-w", "1", "-q", env=env)
    assert result.returncode == 0, result.stderr
    assert len(finished(f"sqlite:///{tmp_path / 'storage' / 'studies.db'}")) == 2
    # Ray's shutdown signals its processes and returns; on a loaded machine the last of them
    # may take a moment to exit, so they have 30 s to be gone (they never go if not stopped).
    deadline = time.monotonic() + 30
    while left := [pid for pid in os.listdir("/proc") if pid.isdigit() and carries(pid, mark)]:
        assert time.monotonic() < deadline, f"processes of the run's Ray instance still run: {left}"
        time.sleep(0.5)


def carries(pid: str, mark: str) -> bool:
    try:
        return f"DLBOOST_TEST_RUN={mark}".encode() in Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:  # gone meanwhile, or not ours to read
        return False


def test_an_address_where_no_cluster_answers_is_refused_at_once(tmp_path):
    space = write_space(tmp_path)
    address = f"127.0.0.1:{free_port()}"
    result = run(tmp_path, "start", str(space), "--ray", address, timeout=60)
    assert result.returncode == 2, result.stderr
    assert f"--ray {address}: no Ray cluster answers at {address}" in result.stderr
    assert "--ray local" in result.stderr
    assert not (tmp_path / "storage").exists()


def test_without_ray_installed_the_error_says_how_to_install_it(tmp_path):
    space = write_space(tmp_path)
    no_ray = "import sys; sys.modules['ray'] = None; from dlboost_search.cli import main; main()"
    result = subprocess.run(
        [sys.executable, "-c", no_ray, "start", str(space), "--ray", "auto"],
        cwd=tmp_path, env=ray_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert 'Ray is not installed here. Install it with `pip install "dlboost-search[ray]"`' in (
        result.stderr
    )
    assert not (tmp_path / "storage").exists()


@pytest.mark.parametrize(
    ("changes", "args", "message"),
    [
        ({}, ["--cpus-per-worker", "2"], "--cpus-per-worker 2 sizes the workers Ray places"),
        ({}, ["--ray", "local", "--cpus-per-worker", "0"], "--cpus-per-worker takes the CPUs"),
        ({}, ["--ray", "local", "--gpus-per-worker", "2"], "--gpus-per-worker takes the share"),
        (HYPERBAND, ["--ray", "local"], "does not run on a Ray cluster"),
    ],
)
def test_what_ray_cannot_run_is_refused_before_it_starts(tmp_path, changes, args, message):
    space = write_space(tmp_path, **changes)
    result = run(tmp_path, "start", str(space), *args, timeout=120)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not (tmp_path / "storage").exists()
