"""The worker pool's event pipes, with real worker processes (no TensorFlow): a worker killed
in the middle of sending costs nothing but itself."""

from __future__ import annotations

import os
import signal
import time

from dlboost_search import events
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
