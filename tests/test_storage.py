"""Storage URLs and the SQLite tuning (storage.py), on real SQLite files; where a study keeps
its search space (records.py)."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import pytest
from sqlalchemy import text

from conftest import TINY_SPACE, call_wsgi, deep_update, load, system_attrs
from dlboost_search.dashboard import dashboard_app
from dlboost_search.errors import StorageError
from dlboost_search.spaces import space_from_dict
from dlboost_search.storage import masked, open_storage, storage_url
from dlboost_search.study import check_same_data, create_or_check, set_target, space_of


def pragmas(storage) -> list:
    with storage.engine.connect() as connection:
        return [
            connection.execute(text(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout")
        ]


def test_sqlite_is_opened_with_wal_normal_sync_and_a_busy_timeout(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'a' / 'b' / 'studies.db'}", create=True)
    assert pragmas(storage) == ["wal", 1, 60_000]  # synchronous 1 is NORMAL
    assert (tmp_path / "a" / "b" / "studies.db").is_file()


def test_other_sqlite_engines_in_the_process_keep_their_settings(tmp_path):
    open_storage(f"sqlite:///{tmp_path / 'ours.db'}", create=True)
    theirs = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'theirs.db'}")
    assert pragmas(theirs)[0] != "wal"


def test_a_study_written_through_the_tuned_storage_reads_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url, create=True))
    study.optimize(lambda trial: trial.suggest_float("x", 0, 1), n_trials=3)
    assert len(optuna.load_study(study_name="s", storage=url).trials) == 3


def test_storage_url_precedence(monkeypatch):
    monkeypatch.delenv("DLBOOST_STORAGE", raising=False)
    assert storage_url(None) == "sqlite:///storage/studies.db"
    monkeypatch.setenv("DLBOOST_STORAGE", "sqlite:///env.db")
    assert storage_url(None) == "sqlite:///env.db"
    assert storage_url("sqlite:///given.db") == "sqlite:///given.db"


@pytest.mark.parametrize(
    ("given", "hint"), [("studies.db", "write 'sqlite:///studies.db'"), ("somewhere", "Examples:")]
)
def test_a_bare_path_is_not_a_url(given, hint):
    with pytest.raises(StorageError, match=hint):
        storage_url(given)


def test_passwords_are_masked():
    assert masked("postgresql://me:s3cret@db:5432/x") == "postgresql://me:***@db:5432/x"
    assert masked("sqlite:///storage/studies.db") == "sqlite:///storage/studies.db"
    assert masked("sqlite:///data/a@b.db") == "sqlite:///data/a@b.db"
    # Up to the last @: a password may hold one (the URL is refused, but its message shows it).
    assert masked("postgresql://me:top@secret@host/db") == "postgresql://me:***@host/db"


def test_a_password_with_a_raw_at_sign_is_refused_without_showing_it():
    with pytest.raises(StorageError, match="%40") as refused:
        storage_url("postgresql://me:p4ss@w0rd@127.0.0.1/db")
    assert "p4ss" not in str(refused.value) and "w0rd" not in str(refused.value)


@pytest.mark.parametrize("url", ["sqlite:///:memory:", "sqlite://"])
def test_an_in_memory_database_is_refused(url):
    with pytest.raises(StorageError, match="in-memory SQLite database"):
        storage_url(url)


def test_a_reader_refuses_a_missing_sqlite_file_and_creates_nothing(tmp_path):
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'studies.db'}"
    with pytest.raises(StorageError, match="does not exist"):
        open_storage(url)
    assert list(tmp_path.iterdir()) == []


def test_a_reader_refuses_a_database_without_optuna_tables_and_creates_none(any_storage):
    import sqlalchemy

    if any_storage.startswith("sqlite"):
        sqlite3.connect(any_storage.removeprefix("sqlite:///")).close()  # an empty file
    with pytest.raises(StorageError, match="no Optuna tables|does not exist"):
        open_storage(any_storage)
    engine = sqlalchemy.create_engine(any_storage)
    try:
        assert sqlalchemy.inspect(engine).get_table_names() == []
    finally:
        engine.dispose()


READ_STATUS = """
import sys
from dlboost_search.study import all_summaries
print([s.name for s in all_summaries(sys.argv[1])])
"""


def test_a_read_only_sqlite_file_can_still_be_read(tmp_path):
    """Another user's file, or an archived copy: readers open it read-only. Root can write
    any file, so as root the reader runs as nobody (setpriv), in a folder nobody can write."""
    folder = Path(tempfile.mkdtemp(prefix="dlboost-read-only-"))
    try:
        folder.chmod(0o755)
        path = folder / "studies.db"
        storage = open_storage(f"sqlite:///{path}", create=True)
        optuna.create_study(study_name="kept", storage=storage)
        storage.engine.dispose()  # closed, as an archived copy is
        path.chmod(0o444)
        before = path.read_bytes()
        command = [sys.executable, "-c", READ_STATUS, f"sqlite:///{path}"]
        if os.geteuid() == 0:
            command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['kept']"
        assert path.read_bytes() == before
        assert sorted(p.name for p in folder.iterdir()) == ["studies.db"]
    finally:
        shutil.rmtree(folder)


def test_a_new_study_keeps_its_space_out_of_what_people_read(tmp_path):
    """The space (some 1,700 characters) and the data's fingerprints are study system
    attributes: the dashboard's "Study User Attributes" panel and `optuna studies` show only
    short user attributes, and every reader still finds the space."""
    rows = "\n".join(f"{i % 7},{i % 5},{i * 0.5}" for i in range(40))
    (tmp_path / "d.csv").write_text("a,b,y\n" + rows + "\n")
    changes = {"data": {"path": str(tmp_path / "d.csv"), "target": "y"}}
    space = space_from_dict(deep_update(TINY_SPACE, changes), "test")
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    # What `start` stores before its first trial.
    check_same_data(create_or_check(space, url), space, accept_changed=False)
    set_target(load(url), 40)

    shown = load(url).user_attrs
    assert sorted(shown) == ["dlboost_search_version", "dlboost_target"]
    assert all(len(json.dumps(value)) < 200 for value in shown.values()), shown
    kept = system_attrs(url)
    assert len(json.dumps(kept["dlboost_search"])) > 1000  # the whole space, there
    assert set(kept["dlboost_data_sha256"]) == {"path"}
    assert space_of(load(url)) == space

    listed = subprocess.run(
        [str(Path(sys.executable).parent / "optuna"), "studies", "--storage", url],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    assert "tiny" in listed.stdout and "dlboost_target" in listed.stdout
    assert max(len(line) for line in listed.stdout.splitlines()) < 160, listed.stdout

    status, _, body = call_wsgi(dashboard_app(url, None), "/api/studies/1")
    assert status == 200
    panel = json.loads(body)["user_attrs"]
    assert sorted(a["key"] for a in panel) == ["dlboost_search_version", "dlboost_target"]
