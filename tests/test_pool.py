"""The worker pool's event pipes, with real worker processes (no TensorFlow): a worker killed
in the middle of sending costs nothing but itself."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from dlboost_search import events
from dlboost_search.devices import Placement
from dlboost_search.pool import WorkerPool
from dlboost_search.worker import EventPipe


def flood(*args, **kwargs) -> None:
    """A worker that sends events as fast as the pool takes them, until it is killed."""
    sent = EventPipe(args[6])
    epoch = 0
    while True:
        epoch += 1
        sent.put(events.EpochEnded(0, epoch))


def send_after(*args, signal_file: str, **kwargs) -> None:
    """A worker that waits for `signal_file`, then sends a few events and exits."""
    sent = EventPipe(args[6])
    while not os.path.exists(signal_file):
        time.sleep(0.05)
    for epoch in range(3):
        sent.put(events.EpochEnded(1, epoch + 1))
    sent.put(events.WorkerDone(0.0))


def test_a_worker_killed_while_sending_leaves_the_others_their_events(tmp_path):
    """With one queue shared by all workers, a worker SIGKILLed while it held the queue's
    write lock hung every other worker at exit (found as a hang in CI)."""
    signal_file = tmp_path / "go"
    pool = WorkerPool("any", "sqlite://", None, 2, 1, sole=False, target=None, entry=flood)
    flooder = pool.start(0)
    pool.entry = send_after
    waiter = pool.start(0, signal_file=str(signal_file))
    received: list[events.Event] = []
    deadline = time.monotonic() + 60
    while len([e for e in received if e.pid == flooder]) < 1000:
        assert time.monotonic() < deadline, "the flooding worker sent too little"
        pool.relay(received.append, timeout=0.2)
    os.kill(flooder, signal.SIGKILL)  # most likely in the middle of a write
    signal_file.touch()
    ended: dict[int, object] = {}
    while len(ended) < 2:
        assert time.monotonic() < deadline, f"workers still running: {list(pool.workers)}"
        pool.relay(received.append, timeout=0.2)
        ended.update(pool.exited())
    assert ended[flooder].process.exitcode == -signal.SIGKILL
    assert ended[waiter].process.exitcode == 0
    assert isinstance(ended[waiter].outcome, events.WorkerDone)
    assert [e.epoch for e in received if e.pid == waiter and isinstance(e, events.EpochEnded)] == [
        1,
        2,
        3,
    ]


def on_device(*args, placement, **kwargs) -> None:
    """A worker that writes the device it was given (once a standby is let go) into the
    folder named by $POOL_TEST_FOLDER, starts a trial and waits until that file is removed."""
    sent, go = EventPipe(args[6]), args[9]
    if go is not None:
        go.wait()
    mine = Path(os.environ["POOL_TEST_FOLDER"]) / str(os.getpid())
    mine.write_text(placement.device)
    sent.put(events.TrialStarted(0, {}))
    while mine.exists():
        time.sleep(0.05)
    sent.put(events.WorkerDone(0.0))


def test_a_new_worker_takes_the_free_device_and_a_standby_waits_for_its_own(tmp_path, monkeypatch):
    """Each worker keeps to a device of its own: a worker that ends frees its device for the
    next, and a standby successor goes to the device of the worker it was started for."""
    monkeypatch.setenv("POOL_TEST_FOLDER", str(tmp_path))
    gpus = [Placement("gpu:0", "GPU-a", None, None), Placement("gpu:1", "GPU-b", None, None)]
    # 11 trials per worker: a standby is started as a worker begins its first.
    pool = WorkerPool("any", "sqlite://", None, 2, 11, sole=False, target=None,
                      entry=on_device, placements=gpus)  # fmt: skip
    deadline = time.monotonic() + 60

    def device_of(pid: int) -> str:
        while not (tmp_path / str(pid)).exists():
            assert time.monotonic() < deadline, f"worker {pid} never started its trial"
            pool.relay(lambda event: None, timeout=0.2)
        return (tmp_path / str(pid)).read_text()

    def end(pid: int) -> None:
        (tmp_path / str(pid)).unlink()
        while pid in pool.workers:
            assert time.monotonic() < deadline, f"worker {pid} never exited"
            pool.relay(lambda event: None, timeout=0.2)
            pool.exited()

    try:
        first, second = pool.start(0), pool.start(0)
        assert sorted([device_of(first), device_of(second)]) == ["gpu:0", "gpu:1"]
        standby = pool.standby
        assert standby is not None
        waiting_on = standby.slot
        owner = next(pid for pid, w in pool.workers.items() if w.slot == waiting_on)
        other = first if owner == second else second
        end(other)  # the standby's device is still taken: a fresh worker takes the free one
        fresh = pool.start(0)
        assert fresh != standby.process.pid and pool.standby is standby
        assert device_of(fresh) == gpus[1 - waiting_on].device
        end(owner)  # now the standby goes on, on the device it waited for
        assert pool.start(0) == standby.process.pid
        assert device_of(standby.process.pid) == gpus[waiting_on].device
    finally:
        for worker in [*pool.workers.values(), *([pool.standby] if pool.standby else [])]:
            worker.process.kill()
            worker.process.join()
