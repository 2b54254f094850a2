"""Storage URLs -> Optuna storages, and the search space each study keeps in them.

SQLite (the default) is opened with the write-ahead log, synchronous=NORMAL and a busy
timeout: cheaper per trial than Optuna's defaults, and safe for several local processes.
This module never imports TensorFlow.
"""

from __future__ import annotations

import os
import random
import re
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlboost_search.errors import StorageError, StudyError

if TYPE_CHECKING:
    import optuna

    from dlboost_search.spaces import SearchSettings

DEFAULT_STORAGE = "sqlite:///storage/studies.db"
STORAGE_ENV = "DLBOOST_STORAGE"
SPEC_ATTR = "dlboost_search"  # study user attribute holding the space, data spec and version
SQLITE_BUSY_TIMEOUT_S = 60


def storage_url(given: str | None) -> str:
    """The URL to use: the one given, else $DLBOOST_STORAGE, else the default SQLite file."""
    url = given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    if "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith((".db", ".sqlite", ".sqlite3")) else None
        raise StorageError(
            f"storage {url!r} is not a URL. "
            + (f"For an SQLite file write {hint!r}." if hint else "")
            + " Examples: sqlite:///storage/studies.db, "
            "postgresql://user@host/db, mysql+pymysql://user@host/db."
        )
    return url


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


class RetryLostTrial:
    """Run a trial again, with the same parameters, when its worker was lost (killed, crashed,
    its machine gone), at most `retries` times. RDBStorage calls it for the trials whose
    heartbeat stopped (Optuna's stale trials); the runner for a local worker that died."""

    def __init__(self, retries: int):
        self.retries = retries

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attempt = int(trial.user_attrs.get("attempt", 1))
        if attempt > self.retries:
            return
        # Fresh user attributes: the retry must not inherit the lost trial's fail_reason.
        origin = trial.user_attrs.get("retry_of", trial.number)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": origin, "attempt": attempt + 1})


# What losing a race to create the schema looks like, on SQLite, PostgreSQL and MySQL.
_CREATION_RACE = ("already exists", "duplicate", "unique constraint", "database is locked")
CREATION_ATTEMPTS = 8


def _create_storage(url: str, heartbeat: dict[str, Any]) -> optuna.storages.RDBStorage:
    """RDBStorage, retried with jitter while other processes are creating the same schema:
    Optuna creates tables and its version row without a lock, so of several processes that
    open a new database at once, all but one fail the first time."""
    import optuna
    import sqlalchemy.exc

    attempt = 1
    while True:
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, **heartbeat)
        except sqlalchemy.exc.SQLAlchemyError as exc:
            lost_race = any(sign in str(exc).lower() for sign in _CREATION_RACE)
            if not lost_race or attempt == CREATION_ATTEMPTS:
                raise
        time.sleep(random.uniform(0.05, 0.25) * attempt)
        attempt += 1


def open_storage(url: str, recovery: SearchSettings | None = None) -> optuna.storages.RDBStorage:
    """Open (creating if needed) the storage at `url`, or raise StorageError saying why not.

    With `recovery` (what workers use), running trials send heartbeats, and trials whose
    heartbeat stopped are failed and retried as the search settings say.
    """
    import sqlalchemy.exc

    sqlite = url.startswith("sqlite:///")
    heartbeat: dict[str, Any] = {}
    if recovery is not None:
        heartbeat = {
            "heartbeat_interval": recovery.heartbeat_seconds,
            "grace_period": recovery.stale_after_seconds,
            "heartbeat_stale_trial_callback": RetryLostTrial(recovery.retries),
        }
    try:
        if sqlite:
            path = url.removeprefix("sqlite:///")
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
        storage = _create_storage(url, heartbeat)
        if sqlite:
            from sqlalchemy import event

            event.listen(storage.engine, "connect", _tune_sqlite)
            storage.engine.dispose()  # reconnect so every pooled connection is tuned
        return storage
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0].rstrip(".")
        raise StorageError(
            f"cannot open storage {masked(url)}: {reason}. Check the URL (--storage or "
            f"${STORAGE_ENV}), that the server is running and reachable, and the user and "
            f"password."
        ) from None
    except RuntimeError as exc:  # optuna's schema-version check
        raise StorageError(
            f"storage {masked(url)} was written by another Optuna version: {exc}"
        ) from None


def load_study(name: str, url: str, recovery: SearchSettings | None = None) -> optuna.Study:
    """Load an existing study, or raise StudyError listing the ones that exist."""
    import optuna

    storage = open_storage(url, recovery)
    try:
        return optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        names = [s.study_name for s in storage.get_all_studies()]
        listed = ", ".join(names) if names else "none yet"
        raise StudyError(
            f"no study named {name!r} in {masked(url)} (studies there: {listed}). "
            f"Start one with `dlboost-search start SPACE.yaml`, or pass --storage."
        ) from None


def stored_spec(study: optuna.Study) -> dict[str, Any]:
    spec = study.user_attrs.get(SPEC_ATTR)
    if not isinstance(spec, dict) or "space" not in spec:
        raise StudyError(
            f"study {study.study_name!r} was not created by dlboost-search (it has no stored "
            f"search space), so it cannot be resumed from the storage alone. Run "
            f"`dlboost-search start SPACE.yaml --study-name {study.study_name}` with its space."
        )
    return spec
