"""Storage URLs -> Optuna storages, and the search space each study keeps in them.

SQLite (the default) is opened with the write-ahead log, synchronous=NORMAL and a busy
timeout: cheaper per trial than Optuna's defaults, and safe for several local processes.
Only `start` and a copy's destination create a storage; every other command refuses one that
does not exist, and creates nothing. A read-only SQLite file is opened read-only, so reports
can be made from an archived copy. This module never imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import random
import re
import time
import urllib.parse
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlboost_search import records
from dlboost_search.errors import StorageError, StudyError

if TYPE_CHECKING:
    import optuna

    from dlboost_search.spaces import SearchSettings

__all__ = [
    "DEFAULT_STORAGE",
    "storage_option",
    "RetryLostTrial",
    "SERVER_CHECK",
    "SQLITE_DAMAGE",
    "driver_reason",
    "load_study",
    "masked",
    "models_dir",
    "open_storage",
    "claim_state_dir",
    "owns_state_dir",
    "state_dir",
    "storage_url",
    "stored_spec",
]

DEFAULT_STORAGE = "sqlite:///storage/studies.db"
STORAGE_ENV = "DLBOOST_STORAGE"
SQLITE_BUSY_TIMEOUT_S = 60
# What to look at when a storage fails, opening it or later.
SQLITE_DAMAGE = (
    "an SQLite file may be damaged (`sqlite3 FILE 'PRAGMA integrity_check'` tells): restore it "
    "from a copy, or copy out what still reads with `dlboost-search export NAME --to "
    "sqlite:///rescued.db`"
)
SERVER_CHECK = "check that the server is running and reachable, and the user and password."


def storage_url(given: str | None) -> str:
    """The URL to use: the one given, else $DLBOOST_STORAGE, else the default SQLite file."""
    url = given or os.environ.get(STORAGE_ENV) or DEFAULT_STORAGE
    if "://" not in url:
        hint = f"sqlite:///{url}" if url.endswith((".db", ".sqlite", ".sqlite3")) else None
        raise StorageError(
            f"storage {masked(url)!r} is not a URL. "
            + (f"For an SQLite file write {hint!r}." if hint else "")
            + " Examples: sqlite:///storage/studies.db, "
            "postgresql://user@host/db, mysql+pymysql://user@host/db."
        )
    if url.startswith("sqlite:") and _sqlite_path(url) in ("", ":memory:"):
        raise StorageError(
            f"storage {url} is an in-memory SQLite database, which lives inside one process: "
            f"the worker processes could not see the study, and nothing would be kept. Give a "
            f"file, e.g. sqlite:///storage/studies.db."
        )
    authority = url.split("://", 1)[1].split("?", 1)[0]
    if not authority.startswith("/") and authority.count("@") > 1:
        # The driver would cut the password at its first @ and show the rest as the host.
        raise StorageError(
            f"storage {masked(url)}: more than one '@' before the host. Write each '@' of the "
            f"user name or password as %40 (URL encoding), e.g. postgresql://me:top%40secret@host/db."
        )
    return url


def storage_option(url: str) -> str:
    """What a command we suggest needs to reach the storage: ` --storage URL` (its password
    masked), unless it is the default one, which the command finds alone."""
    return "" if url == DEFAULT_STORAGE else f" --storage {masked(url)}"


def masked(url: str) -> str:
    """The URL with its password replaced by ***, for messages: everything between the user's
    colon and the last '@', since a password may hold '@' itself."""
    return re.sub(r"(://[^:/@]*:).*@", r"\1***@", url)


def _sqlite_path(url: str) -> str:
    return url.split("://", 1)[1].removeprefix("/").split("?", 1)[0]


def _tune_sqlite(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_S * 1000}")
    cursor.execute("PRAGMA journal_mode = WAL")
    cursor.execute("PRAGMA synchronous = NORMAL")
    cursor.close()


def _read_only_url(path: Path) -> str | None:
    """An SQLite URL that reads `path` without writing anything, when this process may not
    write it (an archived copy, another user's file), else None. Reading a write-ahead-log
    database needs a writable folder; a file with no log open beside it (nobody writes it)
    is opened as immutable instead."""
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK):
        return None
    quoted = urllib.parse.quote(str(path.resolve()))
    in_use = path.with_name(path.name + "-wal").exists()
    return f"sqlite:///file:{quoted}?mode=ro{'' if in_use else '&immutable=1'}&uri=true"


def _has_optuna_tables(url: str) -> bool:
    import sqlalchemy

    engine = sqlalchemy.create_engine(url)
    try:
        return sqlalchemy.inspect(engine).has_table("studies")
    finally:
        engine.dispose()


class RetryLostTrial:
    """Run a trial again, with the same parameters, when its worker was lost (killed, crashed,
    its machine gone), at most `retries` times, from its last mid-trial checkpoint if any.
    RDBStorage calls it for the trials whose heartbeat stopped (Optuna's stale trials); the
    runner for a local worker that died; a worker for its trial stopped after a checkpoint."""

    def __init__(self, retries: int):
        self.retries = retries

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        attempt = int(trial.user_attrs.get(records.ATTEMPT, 1))
        if attempt > self.retries:
            return
        # Fresh user attributes: the retry must not inherit the lost trial's fail_reason.
        origin = trial.user_attrs.get(records.RETRY_OF, trial.number)
        attrs = {records.RETRY_OF: origin, records.ATTEMPT: attempt + 1}
        # Its latest mid-trial checkpoint, or, lost before its first, the one it resumed from.
        checkpoint = trial.system_attrs.get(records.CHECKPOINT) or trial.user_attrs.get(
            records.RESUME_FROM
        )
        if checkpoint:
            attrs[records.RESUME_FROM] = checkpoint
        study.enqueue_trial(trial.params, user_attrs=attrs)


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


# Optuna's own check of stale heartbeats would fail a lost trial without saying why; the
# runner's `lost_trials` does it instead, with a reason. Optuna's is kept off with this grace.
_NEVER_S = 10**9


def open_storage(
    url: str, recovery: SearchSettings | None = None, *, create: bool = False
) -> optuna.storages.RDBStorage:
    """Open the storage at `url`, or raise StorageError saying why not. Only with `create`
    (what `start` and a copy's destination do) is a missing SQLite file, or a database
    without Optuna's tables, made: readers never create or change a storage.

    With `recovery` (what workers use), running trials send heartbeats; the runners fail and
    retry the trials whose heartbeat stopped (`lost_trials`).
    """
    import optuna
    import sqlalchemy.exc

    if optuna.logging.get_verbosity() < optuna.logging.WARNING:
        # Its INFO lines ("A new study created ...") would come before our messages.
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    sqlite = url.startswith("sqlite:///")
    heartbeat: dict[str, Any] = {}
    if recovery is not None:
        heartbeat = {"heartbeat_interval": recovery.heartbeat_seconds, "grace_period": _NEVER_S}
    try:
        tune = sqlite
        if sqlite:
            path = Path(_sqlite_path(url))
            if create:
                path.parent.mkdir(parents=True, exist_ok=True)
            elif not path.is_file():
                raise StorageError(
                    f"no storage at {masked(url)}: {path} does not exist (nothing was created). "
                    f"Check --storage or ${STORAGE_ENV}; `dlboost-search start SPACE.yaml` "
                    f"creates it."
                )
            elif read_only := _read_only_url(path):
                url, tune = read_only, False
        if not create and not _has_optuna_tables(url):
            raise StorageError(
                f"no studies in {masked(url)}: the database holds no Optuna tables (nothing was "
                f"created). Check --storage or ${STORAGE_ENV}; `dlboost-search start "
                f"SPACE.yaml --storage URL` creates them."
            )
        storage = _create_storage(url, heartbeat)
        if tune:
            from sqlalchemy import event

            event.listen(storage.engine, "connect", _tune_sqlite)
            storage.engine.dispose()  # reconnect so every pooled connection is tuned
        return storage
    except (sqlalchemy.exc.SQLAlchemyError, ImportError, ValueError, OSError) as exc:
        check = f"{SQLITE_DAMAGE}." if sqlite else SERVER_CHECK
        raise StorageError(
            f"cannot open storage {masked(url)}: {driver_reason(exc)}. Check the URL (--storage "
            f"or ${STORAGE_ENV}); {check}"
        ) from None
    except RuntimeError as exc:  # optuna's schema-version check
        raise StorageError(
            f"storage {masked(url)} was written by another Optuna version: {exc}"
        ) from None


def state_dir(url: str, study_name: str) -> Path:
    """Where the Hyperband backend keeps keras-tuner's state for a study: beside the SQLite
    file, else under storage/keras-tuner/ of the working directory."""
    from dlboost_search.spaces import check_study_name

    check_study_name(study_name, "study")  # a folder name: never one that climbs out
    if url.startswith("sqlite:///"):
        return Path(_sqlite_path(url)).parent / f"{study_name}.keras-tuner"
    return Path("storage") / "keras-tuner" / study_name


# In keras-tuner's state folder: which study it is (records.HYPERBAND_STATE's token). The folder
# is named by the study alone, so two SQLite files side by side could otherwise share it.
STATE_OWNER = "dlboost-study.json"


def _state_owner(folder: Path) -> str | None:
    try:
        return json.loads((folder / STATE_OWNER).read_text())["study"]
    except (OSError, ValueError, KeyError, TypeError):
        return None  # no folder yet, or one an earlier release made


def owns_state_dir(study: optuna.Study, folder: Path) -> bool:
    """Whether keras-tuner's state in `folder` is `study`'s (or unmarked: an earlier release's)."""
    owner = _state_owner(folder)
    return owner is None or owner == records.study_record(study, records.HYPERBAND_STATE)


def claim_state_dir(study: optuna.Study, url: str) -> Path:
    """keras-tuner's state folder for `study`, marked as the study's; StudyError, nothing
    changed, when another study of the same name marked it first."""
    import uuid

    folder = state_dir(url, study.study_name)
    if not owns_state_dir(study, folder):
        raise StudyError(
            f"keras-tuner's state at {folder.resolve()} belongs to another study named "
            f"{study.study_name!r} (in another SQLite file of this folder, or another database "
            f"used from this directory): sharing it would mix the two schedules. Nothing was "
            f"changed. Start this study under another name, or keep each SQLite file in a "
            f"folder of its own."
        )
    token = records.study_record(study, records.HYPERBAND_STATE)
    if token is None:
        token = str(uuid.uuid4())
        records.set_study_record(study, records.HYPERBAND_STATE, token)
    if _state_owner(folder) is None:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / STATE_OWNER).write_text(json.dumps({"study": token}))
    return folder


def models_dir(url: str) -> Path:
    """Where a study's trial models go unless told otherwise (artifacts.py): NAME.artifacts/
    beside an SQLite file NAME.db, so the folder travels with it; for a database server,
    storage/artifacts/ of the working directory."""
    if url.startswith("sqlite:///"):
        path = Path(_sqlite_path(url))
        return path.parent / f"{path.stem}.artifacts"
    return Path("storage") / "artifacts"


def driver_reason(exc: BaseException) -> str:
    """The first line of a database driver's error, without SQLAlchemy's wrapping."""
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines() or [type(exc).__name__]
    return lines[0].rstrip(".")


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
    spec = records.study_record(study, records.SPEC)
    if not isinstance(spec, dict) or "space" not in spec:
        raise StudyError(
            f"study {study.study_name!r} was not created by dlboost-search (it has no stored "
            f"search space), so it cannot be resumed from the storage alone. Run "
            f"`dlboost-search start SPACE.yaml --study-name {study.study_name}` with its space."
        )
    return spec
