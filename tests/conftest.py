"""Shared fixtures: tiny search spaces, fresh storages (SQLite, and databases on the local
PostgreSQL and MariaDB servers), the CLI as a subprocess, and helpers to watch a study."""

from __future__ import annotations

import gc
import os
import signal
import subprocess
import sys
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

# A small, fast study on the diabetes data: a handful of epochs, tiny networks.
TINY_SPACE: dict[str, Any] = {
    "name": "tiny",
    "data": {"builtin": "diabetes"},
    "model": {"family": "mlp"},
    "objective": {"metric": "val_loss"},
    "training": {"max_epochs": 4, "batch_size": 64, "early_stopping": {"patience": 2}},
    "search": {"sampler": "tpe", "pruner": "median", "trials": 3, "seed": 0},
    "params": {
        "units": {"type": "int", "low": 4, "high": 16},
        "learning_rate": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True},
        "dropout": {"type": "float", "low": 0.0, "high": 0.3},
        "l2": {"type": "float", "low": 1e-6, "high": 1e-2, "log": True},
        "clipvalue": {"type": "float", "low": 0.5, "high": 2.0},
        "layers": 1,
    },
}


def deep_update(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in changes.items():
        if (
            isinstance(value, dict)
            and isinstance(merged.get(key), dict)
            and key not in ("params", "data")
        ):
            merged[key] = deep_update(merged[key], value)
        else:
            merged[key] = value
    return merged


@pytest.fixture
def write_space(tmp_path: Path):
    """write_space(**changes) -> path of a YAML file: TINY_SPACE with `changes` merged in."""

    def write(name: str = "space.yaml", **changes: Any) -> Path:
        path = tmp_path / name
        path.write_text(yaml.safe_dump(deep_update(TINY_SPACE, changes), sort_keys=False))
        return path

    return write


@pytest.fixture
def storage(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'studies.db'}"


# The servers on loopback (.ci/run starts them): a fresh database per test, dropped after.
SERVERS = {
    "postgresql": ("postgresql://postgres@127.0.0.1:5432/{}", "test"),
    "mysql": ("mysql+pymysql://root@127.0.0.1:3306/{}", "test"),
}


@pytest.fixture(params=["sqlite", "postgresql", "mysql"])
def any_storage(request, tmp_path: Path):
    """The same test on SQLite, PostgreSQL and MariaDB: a storage URL with no study in it."""
    if request.param == "sqlite":  # another file than `storage`'s, for tests that use both
        yield f"sqlite:///{tmp_path / 'other-studies.db'}"
        return
    import sqlalchemy

    url, admin_db = SERVERS[request.param]
    name = f"dlboost_{uuid.uuid4().hex[:12]}"
    admin = sqlalchemy.create_engine(url.format(admin_db), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sqlalchemy.text(f"CREATE DATABASE {name}"))
    try:
        yield url.format(name)
    finally:
        if url.format(name) in _storages:  # `load` kept connections open
            _storages.pop(url.format(name)).engine.dispose()
        force = " WITH (FORCE)" if request.param == "postgresql" else ""
        with admin.connect() as connection:
            connection.execute(sqlalchemy.text(f"DROP DATABASE {name}{force}"))
        admin.dispose()


_storages: dict[str, optuna.storages.RDBStorage] = {}


def _opened(url: str) -> optuna.storages.RDBStorage:
    """One storage object per URL, closed when its test ends."""
    if url not in _storages:
        _storages[url] = optuna.storages.RDBStorage(url)
    return _storages[url]


def load(url: str, name: str = "tiny") -> optuna.Study:
    """The study as stored now."""
    return optuna.load_study(study_name=name, storage=_opened(url))


def system_attrs(url: str, name: str = "tiny") -> dict[str, Any]:
    """The study's system attributes as stored now: its space, data fingerprints, dashboard
    notes (Optuna's Study has no reader of them; its storage's is public)."""
    storage = _opened(url)
    return storage.get_study_system_attrs(storage.get_study_id_from_name(name))


@pytest.fixture(autouse=True)
def _close_storages():
    yield
    while _storages:
        _storages.popitem()[1].engine.dispose()
    # Storages a test opened through the product's own functions (which leave closing to the
    # process's exit) go now, not in the middle of a later test, which would see the
    # database driver's "connection deleted while open" warning as an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


def states(study: optuna.Study) -> list[str]:
    return [t.state.name for t in study.get_trials(deepcopy=False)]


def wait_for_running_trial(url: str, timeout: float = 120) -> optuna.trial.FrozenTrial:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = load(url).get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        except KeyError:  # the study is not created yet
            running = []
        # Wait for an epoch to be reported: the trial is then inside model.fit.
        if running and running[0].intermediate_values:
            return running[0]
        time.sleep(0.2)
    raise AssertionError("no trial started training in time")


def worker_of(pid: int) -> int:
    """The worker process the CLI process `pid` started (not multiprocessing's helper)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    (worker,) = [
        int(c) for c in children
        if "spawn_main" in Path(f"/proc/{c}/cmdline").read_text()
        and "resource_tracker" not in Path(f"/proc/{c}/cmdline").read_text()
    ]  # fmt: skip
    return worker


def cli_command(*args: str) -> list[str]:
    return [sys.executable, "-m", "dlboost_search", *args]


def interruptible() -> None:
    """preexec_fn of a CLI process that a test interrupts: Ctrl-C reaches it as from a
    terminal even where the test run itself has SIGINT ignored (a shell's background job),
    which dlboost-search, as every program, would respect."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("DLBOOST_STORAGE", None)
    env["COLUMNS"] = "200"  # keep rich from wrapping messages the tests read
    return env


def run_in(folder: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """`dlboost-search ARGS` run in `folder`, as a script would: no terminal to answer on."""
    return subprocess.run(
        cli_command(*args),
        cwd=folder,
        env=cli_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def run_cli(tmp_path: Path):
    """run_cli(*args) -> CompletedProcess of `dlboost-search ARGS` run in tmp_path."""

    def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_in(tmp_path, *args, timeout=timeout)

    return run


def call_wsgi(app, path: str, headers: dict[str, str] | None = None, method: str = "GET"):
    """Call a WSGI app in-process: (status code, headers, body bytes)."""
    from wsgiref.util import setup_testing_defaults

    path, _, query = path.partition("?")
    environ: dict[str, Any] = {"PATH_INFO": path, "QUERY_STRING": query, "REQUEST_METHOD": method}
    setup_testing_defaults(environ)
    for name, value in (headers or {}).items():
        environ[f"HTTP_{name.upper().replace('-', '_')}"] = value
    captured: dict[str, Any] = {}

    def start_response(status, response_headers, exc_info=None):
        captured["status"], captured["headers"] = int(status.split()[0]), response_headers

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        if hasattr(result, "close"):  # as a WSGI server must: a static file's body is open
            result.close()
    return captured["status"], dict(captured["headers"]), body
