"""Storage URLs and the SQLite tuning (storage.py), on real SQLite files."""

from __future__ import annotations

import optuna
import pytest
from sqlalchemy import text

from dlboost_search.errors import StorageError
from dlboost_search.storage import masked, open_storage, storage_url


def pragmas(storage) -> list:
    with storage.engine.connect() as connection:
        return [
            connection.execute(text(f"PRAGMA {name}")).scalar()
            for name in ("journal_mode", "synchronous", "busy_timeout")
        ]


def test_sqlite_is_opened_with_wal_normal_sync_and_a_busy_timeout(tmp_path):
    storage = open_storage(f"sqlite:///{tmp_path / 'a' / 'b' / 'studies.db'}")
    assert pragmas(storage) == ["wal", 1, 60_000]  # synchronous 1 is NORMAL
    assert (tmp_path / "a" / "b" / "studies.db").is_file()


def test_other_sqlite_engines_in_the_process_keep_their_settings(tmp_path):
    open_storage(f"sqlite:///{tmp_path / 'ours.db'}")
    theirs = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'theirs.db'}")
    assert pragmas(theirs)[0] != "wal"


def test_a_study_written_through_the_tuned_storage_reads_back(tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
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
