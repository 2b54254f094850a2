"""Trial models as artifacts: each complete trial among the best `search.keep_models` stores its
model in Optuna's artifact store (a folder, or an S3-compatible server: moto's, on loopback),
the study records where, `export-model` uses it without retraining, the dashboard serves it,
and copies of the study carry it. Bad stores are refused with exit 2 before anything is kept."""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml

from conftest import TINY_SPACE, call_wsgi, cli_command, cli_env, deep_update, load, system_attrs
from dlboost_search import reports, shipping, transfer
from dlboost_search.artifacts import settle_models
from dlboost_search.dashboard import dashboard_app
from dlboost_search.errors import ArtifactError
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import create_or_check, delete_study

pytestmark = pytest.mark.slow  # real studies through the CLI

# val_mae: no regularization penalty in the logged value, so a stored model's validation score
# must equal its trial's value to float32 rounding.
SPACE = deep_update(
    TINY_SPACE,
    {"objective": {"metric": "val_mae"}, "search": {"trials": 4, "keep_models": 2}},
)
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def cli(
    folder: Path, *args: str, env: dict[str, str] | None = None, drop: tuple[str, ...] = ()
) -> Any:
    """`dlboost-search ARGS` in `folder`, with `env` added and the variables `drop` removed
    (unless `env` gives them)."""
    env = env or {}
    environment = {k: v for k, v in {**cli_env(), **env}.items() if k not in drop or k in env}
    return subprocess.run(
        cli_command(*args), cwd=folder, env=environment, capture_output=True, text=True,
        timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip


def write_space(folder: Path, changes: dict[str, Any] | None = None) -> Path:
    path = folder / "space.yaml"
    path.write_text(yaml.safe_dump(deep_update(SPACE, changes or {}), sort_keys=False))
    return path


def model_ids(trial: optuna.trial.FrozenTrial) -> list[str]:
    return [
        json.loads(v)["artifact_id"]
        for k, v in trial.system_attrs.items()
        if k.startswith("artifacts:")
    ]


def best_first(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    complete = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    return sorted(complete, key=lambda t: (t.value, t.number))


@pytest.fixture(scope="module")
def diabetes(tmp_path_factory) -> dict[str, Any]:
    """A finished 4-trial study on SQLite keeping its 2 best models, in the default store."""
    folder = tmp_path_factory.mktemp("diabetes")
    write_space(folder)
    done = cli(folder, "start", "space.yaml", "--quiet")
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{folder / 'storage' / 'studies.db'}"
    return {"folder": folder, "url": url, "store": folder / "storage" / "studies.artifacts"}


def test_the_best_trials_keep_their_models_and_the_others_are_deleted(diabetes):
    study = load(diabetes["url"])
    ranked = best_first(study)
    assert len(ranked) == 4
    kept = [model_ids(t) for t in ranked]
    assert all(len(ids) == 1 for ids in kept[:2]) and kept[2:] == [[], []]
    files = sorted(p.name for p in diabetes["store"].iterdir())
    assert files == sorted(ids[0] for ids in kept[:2])
    assert system_attrs(diabetes["url"])["dlboost_models"] == {"store": None, "keep_models": 2}
    meta = json.loads(next(iter(ranked[0].system_attrs.values())))
    assert meta["filename"] == f"trial-{ranked[0].number}.keras"


def test_export_model_uses_the_stored_model_and_scores_as_the_study(diabetes, tmp_path):
    study = load(diabetes["url"])
    best, second, third = best_first(study)[:3]
    said: list[str] = []
    meta = shipping.export_model(
        "tiny", diabetes["url"], tmp_path / "model", ensemble=3, on_progress=said.append
    )
    first, then, last = meta["members"]
    assert (first["model"], then["model"], last["model"]) == ("stored", "stored", "retrained")
    # No retraining: the validation score is the study's own, to float32 rounding.
    assert first["validation_score"] == pytest.approx(best.value, rel=1e-5)
    assert then["validation_score"] == pytest.approx(second.value, rel=1e-5)
    assert "its stored model" in said[0] and "no retraining" in said[0]
    assert said[2].startswith(f"retraining trial {third.number} (3/3) (no stored model")
    assert (
        "the trial's own, stored during the search"
        in (tmp_path / "model" / "model_card.md").read_text()
    )

    # The error in the target's units each regression trial records as it ends is the one
    # its exported model scores, and the report gives it beside the loss.
    alone = shipping.export_model("tiny", diabetes["url"], tmp_path / "alone")
    assert best.user_attrs["rmse"] == pytest.approx(alone["validation"]["rmse"], rel=1e-4)
    assert best.user_attrs["mae"] == pytest.approx(alone["validation"]["mae"], rel=1e-4)
    report = reports.to_markdown(reports.build_report(study))
    assert f"in the target's own units: RMSE {best.user_attrs['rmse']:.4g}" in report

    said.clear()
    meta = shipping.export_model(
        "tiny", diabetes["url"], tmp_path / "refit", refit_all=True, on_progress=said.append
    )
    assert meta["members"][0]["model"] == "retrained"
    assert said[0].startswith(f"retraining trial {best.number} (1/1) (--refit-all)")


def test_the_dashboard_serves_each_stored_model(diabetes):
    study = load(diabetes["url"])
    best = best_first(study)[0]
    (artifact_id,) = model_ids(best)
    app = dashboard_app(diabetes["url"], token=None)
    status, _, body = call_wsgi(app, f"/artifacts/{study._study_id}/{best._trial_id}/{artifact_id}")
    assert status == 200
    assert body == (diabetes["store"] / artifact_id).read_bytes()
    status, _, listing = call_wsgi(app, f"/api/studies/{study._study_id}")
    assert status == 200 and artifact_id in listing.decode()


def test_a_store_other_than_the_studys_is_refused_and_nothing_changes(diabetes):
    before = sorted(p.name for p in diabetes["store"].iterdir())
    done = cli(diabetes["folder"], "start", "space.yaml", "--artifacts", "elsewhere", "--quiet")
    assert done.returncode == 2
    assert "keeps its trial models in" in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in diabetes["store"].iterdir()) == before
    assert len(load(diabetes["url"]).get_trials()) == 4
    assert not (diabetes["folder"] / "elsewhere").exists()


def test_export_import_and_merge_carry_the_models(diabetes, tmp_path):
    source = load(diabetes["url"])
    kept = {i for t in source.get_trials() for i in model_ids(t)}
    copy_url = f"sqlite:///{tmp_path / 'copy.db'}"
    transfer.copy("tiny", diabetes["url"], copy_url)
    assert {p.name for p in (tmp_path / "copy.artifacts").iterdir()} == kept
    assert system_attrs(copy_url)["dlboost_models"] == {"store": None, "keep_models": 2}

    # A copy run apart, with none of the trials yet: merging brings them with their models.
    merged_url = f"sqlite:///{tmp_path / 'merged.db'}"
    create_or_check(space_from_dict(SPACE, "test"), merged_url)
    result = transfer.merge("tiny", diabetes["url"], merged_url)
    assert result.added == 4
    assert {p.name for p in (tmp_path / "merged.artifacts").iterdir()} == kept

    delete_study(load(copy_url), copy_url)  # its models go with it, the original's stay
    assert list((tmp_path / "copy.artifacts").iterdir()) == []
    assert {p.name for p in diabetes["store"].iterdir()} == kept


@pytest.mark.parametrize("any_storage", ["postgresql", "mysql"], indirect=True)
def test_a_folder_store_on_a_database_server_keeps_the_hyperband_backends_models(
    any_storage, tmp_path
):
    """PostgreSQL and MariaDB (SQLite: the module's study): the store is recorded, and
    keep_models deletes the other trials' models and their attributes on either server."""
    write_space(
        tmp_path,
        {
            "training": {"max_epochs": 2},
            "search": {"backend": "hyperband", "factor": 3, "keep_models": 1},
        },
    )
    done = cli(
        tmp_path,
        "start",
        "space.yaml",
        "--storage",
        any_storage,
        "--artifacts",
        "models",
        "--quiet",
    )
    assert done.returncode == 0, done.stderr
    study = load(any_storage)
    ranked = best_first(study)
    assert len(ranked) >= 2
    folder = tmp_path / "models"
    assert system_attrs(any_storage)["dlboost_models"] == {"store": str(folder), "keep_models": 1}
    assert [p.name for p in folder.iterdir()] == model_ids(ranked[0])
    assert all(model_ids(t) == [] for t in study.get_trials() if t.number != ranked[0].number)


@pytest.fixture
def s3_server(monkeypatch):
    """moto's S3-compatible server on a free loopback port, with a bucket `models`; stopped
    after the test. Its credentials are set here and for the CLI processes."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        for name, value in S3_CREDENTIALS.items():
            monkeypatch.setenv(name, value)
        client = boto3.client("s3", endpoint_url=endpoint)
        client.create_bucket(Bucket="models")
        yield {"endpoint": endpoint, "client": client}
    finally:
        server.stop()


def test_an_s3_compatible_store_keeps_and_serves_the_models(s3_server, tmp_path, monkeypatch):
    location = f"s3://models?endpoint_url={s3_server['endpoint']}"
    write_space(tmp_path, {"search": {"trials": 2, "keep_models": 1, "artifacts": location}})
    done = cli(tmp_path, "start", "space.yaml", "--quiet", env=S3_CREDENTIALS)
    assert done.returncode == 0, done.stderr
    url = f"sqlite:///{tmp_path / 'storage' / 'studies.db'}"
    study = load(url)
    best = best_first(study)[0]
    listed = s3_server["client"].list_objects_v2(Bucket="models").get("Contents", [])
    assert [o["Key"] for o in listed] == model_ids(best)
    assert system_attrs(url)["dlboost_models"] == {"store": location, "keep_models": 1}
    assert not (tmp_path / "storage" / "studies.artifacts").exists()

    app = dashboard_app(url, token=None)
    status, _, body = call_wsgi(
        app, f"/artifacts/{study._study_id}/{best._trial_id}/{model_ids(best)[0]}"
    )
    assert status == 200 and body[:2] == b"PK"  # a .keras file is a zip
    # A worker on a machine without the credentials stops before any trial.
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    with pytest.raises(ArtifactError, match="no S3 credentials"):
        settle_models(study, url)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "store, env, said",
    [
        ("{folder}/a-file/models", S3_CREDENTIALS, "cannot create it"),
        ("s3://models?endpoint_url=http://127.0.0.1:{closed}", S3_CREDENTIALS, "cannot reach"),
        (
            "s3://models?endpoint_url=http://127.0.0.1:{closed}",
            {
                "AWS_SHARED_CREDENTIALS_FILE": "{folder}/none",
                "AWS_CONFIG_FILE": "{folder}/none",
                "AWS_EC2_METADATA_DISABLED": "true",
            },
            "no S3 credentials",
        ),
    ],
    ids=["folder-not-writable", "unreachable", "no-credentials"],
)
def test_a_store_that_cannot_be_used_is_refused_before_anything_is_kept(tmp_path, store, env, said):
    (tmp_path / "a-file").write_text("not a folder")
    fill = {"folder": str(tmp_path), "closed": str(_closed_port())}
    env = {k: v.format(**fill) for k, v in env.items()}
    write_space(tmp_path)
    done = cli(
        tmp_path, "start", "space.yaml", "--artifacts", store.format(**fill), "--quiet", env=env,
        drop=("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"),
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert said in done.stderr and "Nothing was stored" in done.stderr
    assert "Traceback" not in done.stderr and done.stderr.count("error:") == 1
    url = f"sqlite:///{tmp_path / 'storage' / 'studies.db'}"
    assert optuna.get_all_study_names(url) == []  # the study made for it is gone
    assert not (tmp_path / "storage" / "studies.artifacts").exists()


@pytest.mark.parametrize(
    "store, said",
    [
        ("ftp://host/models", "neither a folder nor an s3:// URL"),
        ("s3://models/inside", "no folder inside the bucket"),
        ("s3://models?region=x", "nothing else"),
    ],
)
def test_a_store_that_is_no_folder_or_bucket_is_refused(storage, store, said):
    study = create_or_check(space_from_dict(SPACE, "test"), storage)
    with pytest.raises(ArtifactError, match=said) as refused:
        settle_models(study, storage, store)
    assert refused.value.exit_code == 2
    assert "dlboost_models" not in system_attrs(storage)
