"""Workers placed by Ray (`--ray ADDRESS|auto|local`): the pool of pool.py, its worker
processes started as Ray tasks on the cluster's nodes, each with the CPUs and GPUs it needs
(`--cpus-per-worker`, `--gpus-per-worker`).

Each task runs worker.run_worker as a local worker process does: it rebuilds everything from
the study's name and storage URL, and trains until the study has its target. What differs:

- Events come home through a mailbox, a Ray actor on the driver's node that keeps the
  workers' messages in order until the driver has read past them. The driver polls it and
  hands the events to the display and the pool's bookkeeping (time limits, outcomes), as it
  does with a local worker's pipe, so the progress shows every worker's trials as they train.
  Polling the storage instead would show finished trials only, late, and lose the outcomes
  (done, failed, interrupted) that tell the pool how a worker ended. A read names the count
  already read, so a read cut short by Ctrl-C loses nothing (Ray's own queue would lose the
  item an abandoned `get` takes).
- A task is the process: a Ray worker process runs one task and exits (max_calls=1: a fresh
  TensorFlow each time, as recycling wants), and Ray never retries it (max_retries=0): a lost
  worker or node ends the task with an error, and pool.drive closes its running trials and
  queues them again, as for a local worker that died.
- Ctrl-C cancels the tasks (ray.cancel raises KeyboardInterrupt in each worker, as the local
  pool's SIGINT does): each closes its trial and says so, and the driver closes what a worker
  could not.

Ray is an optional extra: it is imported here only, once `--ray` is given.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import logging
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

from dlboost_search import devices, events, records
from dlboost_search.errors import ClusterError, DlboostError
from dlboost_search.pool import Worker, WorkerPool
from dlboost_search.storage import masked
from dlboost_search.worker import EventPipe, run_worker

__all__ = [
    "RayCluster",
    "RayPool",
    "connected",
]

EventHandler = Callable[[events.Event], None]

POLL_S = 0.1  # how often the driver reads the mailbox
REACH_TIMEOUT_S = 5.0  # a cluster address that takes longer to answer a connection is unreachable
# Ray's object store holds the tasks' arguments only (a search space, a few KB): a local
# instance needs little, not Ray's default of 30% of the memory.
LOCAL_OBJECT_STORE_BYTES = 128 * 2**20
INSTALL = 'pip install "dlboost-search[ray]"'


@contextmanager
def connected(
    address: str, url: str, cpus_per_worker: float | None, gpus_per_worker: float | None
) -> Iterator[RayCluster]:
    """The Ray cluster at `address` ("local": a Ray instance started for this run alone on
    127.0.0.1 and stopped after it; "auto": the one this machine belongs to, or $RAY_ADDRESS;
    else a cluster's address, host:port), connected for as long as the block runs, with
    workers of `cpus_per_worker` CPUs (default 1) and `gpus_per_worker` GPUs (default none)
    each. Refuses, before anything is stored, what cannot work: no Ray installed, no cluster
    there, a study in an SQLite file that workers on other nodes could not reach."""
    cpus = _checked_cpus(cpus_per_worker)
    gpus = _checked_gpus(gpus_per_worker)
    ray = _import_ray(address)
    _connect(ray, address)
    try:
        cluster = RayCluster(address, cpus, gpus)
        cluster.check_storage(url)
        yield cluster
    finally:
        # The local instance's processes, started by this process, stop with it; a cluster's
        # ends this run's tasks and mailbox, and goes on.
        ray.shutdown()


def _checked_cpus(cpus_per_worker: float | None) -> float:
    if cpus_per_worker is None:
        return 1.0
    if cpus_per_worker <= 0:
        raise ClusterError(
            f"--cpus-per-worker takes the CPUs Ray reserves for each worker, more than 0 "
            f"(1: one core, the default; 4: four, and four TensorFlow threads), not "
            f"{cpus_per_worker:g}."
        )
    return cpus_per_worker


def _checked_gpus(gpus_per_worker: float | None) -> float | None:
    if gpus_per_worker is not None and not 0 < gpus_per_worker <= 1:
        raise ClusterError(
            f"--gpus-per-worker takes the share of one GPU each Ray worker uses, more than 0 "
            f"and at most 1 (0.5: two workers per GPU, each limited to half its memory), not "
            f"{gpus_per_worker:g}. A trial trains on one device, so a worker never takes more "
            f"than one GPU."
        )
    return gpus_per_worker


def _import_ray(address: str) -> Any:
    if address == "local":
        # Ray replaces a 127.0.0.1 node address with this machine's network address, and its
        # servers then listen on every interface, unless it is told that it runs alone on
        # this machine: this switch (ray_constants.ENABLE_RAY_CLUSTER, read as Ray is
        # imported) keeps the whole instance on loopback.
        os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no report sent out
    try:
        import ray
    except ImportError:
        raise ClusterError(
            f"--ray {address} runs the workers on a Ray cluster, and Ray is not installed "
            f"here. Install it with `{INSTALL}` (the same Ray version on every node of the "
            f"cluster), or leave --ray out: `--workers N` runs the workers on this machine, and "
            f"`dlboost-search worker` joins the study from others."
        ) from None
    return ray


def _connect(ray: Any, address: str) -> None:
    if address == "local":
        try:
            ray.init(
                address="local",
                include_dashboard=False,
                object_store_memory=LOCAL_OBJECT_STORE_BYTES,
                logging_level=logging.ERROR,
                _node_ip_address="127.0.0.1",
            )
        except (OSError, RuntimeError) as exc:  # Ray's own words say what it lacked
            raise ClusterError(f"--ray local: Ray could not start on this machine: {exc}") from None
        return
    given = os.environ.get("RAY_ADDRESS", "") if address == "auto" else address
    if given not in ("", "auto", "local"):
        _check_reachable(address, given)
    try:
        ray.init(address=address, logging_level=logging.ERROR)
    except (ConnectionError, RuntimeError) as exc:
        if address == "auto" and isinstance(exc, ConnectionError):
            raise ClusterError(
                "--ray auto joins the Ray cluster this machine is a node of, and none runs "
                "here (no $RAY_ADDRESS, no Ray node started on this machine). Start one with "
                "`ray start --head`, give the cluster's address (`--ray HOST:6379`), or use "
                "`--ray local` for a Ray instance on this machine alone."
            ) from None
        raise ClusterError(f"--ray {address}: Ray could not connect: {exc}") from None


def _check_reachable(address: str, given: str) -> None:
    """Refuse at once an address where nothing listens: ray.init would retry it for minutes."""
    host, _, port = given.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=REACH_TIMEOUT_S).close()
    except ValueError:
        raise ClusterError(
            f"--ray {address}: {given!r} is no cluster address. Give the head node's HOST:PORT "
            f"as `ray status` shows it (port 6379 unless `ray start --head --port` said "
            f"otherwise), `auto` on a node of the cluster, or `local`."
        ) from None
    except OSError as exc:
        said = "$RAY_ADDRESS " if address == "auto" else ""
        raise ClusterError(
            f"--ray {address}: no Ray cluster answers at {said}{given} "
            f"({exc.strerror or exc}). Check that the cluster runs (`ray status` on its "
            f"head node) and that this machine reaches it, give the address `ray start "
            f"--head` printed, or use `--ray local` for a Ray instance on this machine alone."
        ) from None


class RayCluster:
    """The connected cluster, as the runner uses it: how many workers `auto` means, where
    they run, and the pool that starts them."""

    def __init__(self, address: str, cpus_per_worker: float, gpus_per_worker: float | None):
        import ray

        self.address = address
        self.cpus_per_worker, self.gpus_per_worker = cpus_per_worker, gpus_per_worker
        self.local = address == "local"
        self.nodes = [node for node in ray.nodes() if node["Alive"]]
        self.resources = ray.cluster_resources()
        # One Ray worker process per task: recycling's fresh process, TensorFlow started
        # with the task's threads and GPU. Never retried by Ray: pool.drive retries trials.
        self.entry = ray.remote(max_calls=1, max_retries=0)(_ray_worker)

    def describe(self) -> str:
        nodes = f"{len(self.nodes)} node{'s' if len(self.nodes) > 1 else ''}"
        if self.local:
            return f"on a Ray instance of this run ({nodes}, 127.0.0.1)"
        return f"on the Ray cluster at {self.address} ({nodes})"

    def check_storage(self, url: str) -> None:
        """SQLite is a file on one machine: refused when workers may run on other nodes. A
        driver runs on a node of its cluster (Ray's rule), so a one-node cluster is here."""
        if not url.startswith("sqlite") or self.local or len(self.nodes) == 1:
            return
        raise ClusterError(
            f"storage {masked(url)} is an SQLite file on this machine, and the Ray cluster at "
            f"{self.address} has {len(self.nodes)} nodes: workers on the others could not "
            f"reach the file (nor could SQLite's locks be trusted over a network file "
            f"system). Keep the study in PostgreSQL or MySQL/MariaDB, which every node "
            f"reaches (--storage postgresql://user@host/db, extra postgresql; `dlboost-search "
            f"export` copies an SQLite study there), or run the workers on this machine "
            f"alone: `--ray local`, or --workers without --ray."
        )

    def worker_count(self, workers: int | None) -> int:
        """`workers`, or for auto (None) as many as the cluster's GPUs, or else its CPUs, hold."""
        if workers is not None:
            return workers
        if self.gpus_per_worker:
            return max(1, int(self.resources.get("GPU", 0) / self.gpus_per_worker + 1e-9))
        return max(1, int(self.resources.get("CPU", 0) / self.cpus_per_worker + 1e-9))

    def placements(self, workers: int) -> list[devices.Placement]:
        """What the progress says of each worker's device before it starts: Ray chooses the
        GPU, and the worker records which (_placement)."""
        device = "gpu" if self.gpus_per_worker else "cpu"
        return [devices.Placement(device, threads=self.threads()) for _ in range(workers)]

    def threads(self) -> int:
        return max(1, round(self.cpus_per_worker))

    def unplaceable(self) -> str | None:
        """Why no node can take a worker now, if none can (Ray would hold the workers until
        one can: an autoscaler may add it, so this is said, not refused)."""
        gpus = self.gpus_per_worker or 0
        if any(
            node["Resources"].get("CPU", 0) >= self.cpus_per_worker
            and node["Resources"].get("GPU", 0) >= gpus
            for node in self.nodes
        ):
            return None
        return (
            f"no node of the Ray cluster has {self.cpus_per_worker:g} CPUs"
            + (f" and {gpus:g} GPU" if gpus else "")
            + " for a worker (--cpus-per-worker, --gpus-per-worker): the workers wait until "
            "the cluster has such a node, or until the time budget (--timeout) is spent."
        )

    def pool(self) -> Callable[..., RayPool]:
        """The pool class for pool.drive (its make_pool), placing workers on this cluster."""
        return functools.partial(RayPool, cluster=self)

    def submit(self, key: int, mailbox: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        options = {"num_cpus": self.cpus_per_worker, "num_gpus": self.gpus_per_worker or 0}
        return self.entry.options(**options, name=f"dlboost-worker-{args[0]}").remote(
            key, mailbox, self.threads(), self.gpus_per_worker, args, kwargs
        )


class _Mailbox:
    """A Ray actor: the workers' messages, (worker key, worker id, event or None), in order."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.first = 0  # how many messages were read and dropped before messages[0]

    def put(self, message: Any) -> None:
        self.messages.append(message)

    def read(self, since: int) -> list[Any]:
        """The messages after the first `since`: those the reader has are dropped."""
        del self.messages[: since - self.first]
        self.first = since
        return self.messages


class _Outbox:
    """A Ray worker's end of the mailbox, as EventPipe sends through it (a pipe's `send`)."""

    def __init__(self, mailbox: Any, key: int):
        self.mailbox, self.key, self.id = mailbox, key, records.worker_id()

    def send(self, event: events.Event | None) -> None:
        import ray

        try:  # waited for: whatever a task sent is in the mailbox once the task has ended
            ray.get(self.mailbox.put.remote((self.key, self.id, event)))
        except ray.exceptions.RayError:
            raise BrokenPipeError from None  # the driver is gone: nobody is left to tell


def _ray_worker(
    key: int,
    mailbox: Any,
    threads: int,
    gpus_per_worker: float | None,
    args: tuple,
    kwargs: dict[str, Any],
) -> None:
    """A Ray task: one worker (worker.run_worker) in the Ray worker process it is given.
    `args`: run_worker's arguments up to its event pipe."""
    outbox = _Outbox(mailbox, key)
    outbox.send(None)  # its worker id, before any trial carries it
    try:
        placement = _placement(threads, gpus_per_worker)
    except DlboostError as exc:
        EventPipe(outbox).put(events.WorkerFailed(exc))
        return
    sole, deadline = kwargs.pop("sole"), kwargs.pop("deadline")
    run_worker(
        *args, outbox, placement.threads, sole, None, deadline=deadline, placement=placement,
        **kwargs,
    )  # fmt: skip


def _placement(threads: int, gpus_per_worker: float | None) -> devices.Placement:
    """This worker's device: the GPU Ray gave it (Ray sets CUDA_VISIBLE_DEVICES), with memory
    growth or its share's memory limit, as devices.plan gives one worker of that share; and
    `threads` TensorFlow threads, its CPUs."""
    gpus = devices.visible_gpus() if gpus_per_worker else []
    placement = devices.plan(1, gpus_per_worker, gpus, devices.cpu_cores())[0]
    return dataclasses.replace(placement, threads=threads)


class _RayTask:
    """A worker placed by Ray, as the pool sees a process: `pid` is its key in the pool."""

    def __init__(self, key: int, ref: Any):
        self.pid, self.ref = key, ref
        self.exitcode: int | None = None  # 0 once it returned; Ray passes no exit code on
        self.error = ""  # how Ray says it was lost

    def kill(self) -> None:
        import ray

        ray.cancel(self.ref, force=True)  # the worker process is killed

    def interrupt(self) -> None:
        import ray

        ray.cancel(self.ref)  # KeyboardInterrupt in the worker: it closes its trial

    def ended(self) -> None:
        import ray

        try:
            ray.get(self.ref, timeout=0)
            self.exitcode = 0
        except ray.exceptions.RayError as exc:
            self.error = type(exc).__name__


class RayPool(WorkerPool):
    """WorkerPool whose workers are Ray tasks on `cluster`, their events read from a mailbox.

    No standby successor: Ray places a worker's successor wherever resources are free, and a
    standby would hold its CPUs idle while it waits."""

    def __init__(self, *args: Any, cluster: RayCluster, **kwargs: Any):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        super().__init__(*args, **kwargs)
        self.cluster, self.where = cluster, cluster.describe()
        # Ray starts its workers in folders of its own: an SQLite path must not be relative.
        self.url = _absolute_sqlite(self.url)
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
        self.mailbox = ray.remote(num_cpus=0)(_Mailbox).options(scheduling_strategy=here).remote()
        self.read = 0  # messages read from the mailbox so far
        self.unrelayed: list[tuple[int, str, events.Event | None]] = []
        self.keys = itertools.count(1)

    def _spawn(self, failures_in_a_row: int, go: Any, kwargs: dict[str, Any], slot: int) -> Worker:
        key = next(self.keys)
        args = (
            self.name, self.url, self.space, self.target, self.recycle_every, failures_in_a_row,
        )  # fmt: skip
        kwargs = {**kwargs, "sole": self.sole, "deadline": self.deadline}
        ref = self.cluster.submit(key, self.mailbox, args, kwargs)
        return Worker(_RayTask(key, ref), datetime.now(), slot=slot)

    def prepare_successor(self, worker: Worker) -> None:
        pass  # no standby (see the class)

    def _fetch(self) -> None:
        import ray

        messages = ray.get(self.mailbox.read.remote(self.read))
        self.read += len(messages)
        self.unrelayed += messages

    def relay(self, on_event: EventHandler, timeout: float) -> int | None:
        failures = None
        deadline = time.monotonic() + timeout
        while True:
            self._fetch()
            messages, self.unrelayed = self.unrelayed, []
            for key, worker_id, event in messages:
                worker = self.workers.get(key)
                if worker is None:  # cannot be: a worker goes once its messages were relayed
                    continue
                worker.id = worker_id
                if event is not None:
                    reported = self._pass_on(worker, event, on_event)
                    failures = failures if reported is None else reported
            left = deadline - time.monotonic()
            if left <= 0:
                return failures
            time.sleep(min(POLL_S, left))

    def exited(self) -> list[tuple[int, Worker]]:
        """The workers whose task has ended and whose messages were all relayed."""
        import ray

        if not self.workers:
            return []
        tasks = {w.process.ref: key for key, w in self.workers.items()}
        done, _ = ray.wait(list(tasks), num_returns=len(tasks), timeout=0)
        if not done:
            return []
        self._fetch()  # all that the ended tasks sent is in the mailbox: see if it was relayed
        unrelayed = {key for key, _, _ in self.unrelayed}
        ended = []
        for ref in done:
            key = tasks[ref]
            if key not in unrelayed:
                worker = self.workers.pop(key)
                worker.process.ended()
                ended.append((key, worker))
        return ended

    def interrupt(self) -> None:
        for worker in self.workers.values():
            worker.process.interrupt()

    def withdraw_unstarted(self) -> None:
        """Cancel the tasks that never started (a task sends its worker id first of all):
        Ray holds a task until a node has room for it, which may be never, and the search
        waits for every task it placed."""
        self._fetch()
        started = {key for key, _, _ in self.unrelayed}
        for key, worker in self.workers.items():
            if worker.id is None and key not in started and not worker.withdrawn:
                worker.withdrawn = True
                worker.process.kill()

    def death(self, worker: Worker) -> str:
        return f"the Ray worker died ({worker.process.error or 'lost'})"


def _absolute_sqlite(url: str) -> str:
    scheme, sep, rest = url.partition(":///")
    if not scheme.startswith("sqlite") or not sep or rest.startswith("/"):
        return url
    path, query = rest.split("?", 1) if "?" in rest else (rest, "")
    return f"{scheme}:///{Path(path).resolve()}" + (f"?{query}" if query else "")
