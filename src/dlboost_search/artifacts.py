"""Trial models kept in Optuna's artifact store, which optuna-dashboard shows on each trial's
page.

A trial that completes among the study's `search.keep_models` best uploads its model (the
best epoch's weights in a `.keras` file) with `optuna.artifacts.upload_artifact`, while it
still runs: Optuna records the upload as the trial's system attribute `artifacts:<id>`, where
the dashboard and `optuna.artifacts.get_all_artifact_meta` find it. After each trial the
models of trials that fell out of the best K are deleted, file and record, so the store stays
bounded.

Where the models go (`search.artifacts` or `start --artifacts`):
    a folder                      FileSystemArtifactStore (a shared file system: many machines)
    s3://BUCKET                   Boto3ArtifactStore on S3 or any S3-compatible server: the
    s3://BUCKET?endpoint_url=URL  endpoint from the URL, else $AWS_ENDPOINT_URL_S3 or
                                  $AWS_ENDPOINT_URL; credentials as boto3 finds them, never stored
    (nothing)                     NAME.artifacts/ beside the SQLite file NAME.db
                                  (storage.models_dir)
The study records its store and K (records.MODELS), so `resume`, a `worker` on another machine,
`export-model`, `dashboard` and copies find the same store from the storage alone.

This module never imports TensorFlow: the model saves itself (`model.save`).
"""

from __future__ import annotations

import io
import json
import mimetypes
import os
import tempfile
import uuid
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from dlboost_search import limits, records
from dlboost_search.errors import ArtifactError, shown
from dlboost_search.storage import masked, models_dir

__all__ = [
    "Checkpoints",
    "TrialModels",
    "carry_models",
    "models_for_dashboard",
    "open_models",
    "settle_models",
]

# Optuna's key prefix for an artifact's record on a trial (optuna/artifacts/_upload.py), which
# the dashboard reads too: the Hyperband backend writes it into the trials it creates.
ARTIFACT_PREFIX = "artifacts:"
MODEL_SUFFIX = ".keras"
S3 = "s3://"
ENDPOINT_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")
LOCATION_HELP = (
    "Give a folder (a shared file system for many machines), or s3://BUCKET for S3-compatible "
    "object storage, its endpoint as s3://BUCKET?endpoint_url=http://HOST:PORT or in "
    "$AWS_ENDPOINT_URL."
)


def _s3_parts(location: str) -> tuple[str, str | None]:
    """The bucket and endpoint of an s3:// location; ArtifactError for anything else in it."""
    parts = urlsplit(location)
    query = parse_qs(parts.query)
    extra = sorted(set(query) - {"endpoint_url"})
    if not parts.netloc or parts.path.strip("/") or extra or parts.fragment:
        raise ArtifactError(
            f"artifact store {shown(location)}: an S3 store is s3://BUCKET, optionally with "
            f"?endpoint_url=URL, and nothing else (no folder inside the bucket"
            f"{', no ' + ', '.join(extra) if extra else ''}). Models are named by unique ids, so "
            f"studies can share a bucket."
        )
    endpoint = query.get("endpoint_url", [None])[0]
    if endpoint is None:
        endpoint = next((os.environ[name] for name in ENDPOINT_ENV if os.environ.get(name)), None)
    return parts.netloc, endpoint


def _resolved(location: str) -> str:
    """`location` as the study records it: an s3:// URL as given, a folder made absolute (a
    worker started elsewhere on the machine must find it)."""
    if location.startswith(S3):
        _s3_parts(location)
        return location
    if "://" in location:
        raise ArtifactError(
            f"artifact store {shown(location)} is neither a folder nor an s3:// URL. "
            f"{LOCATION_HELP}"
        )
    return str(Path(location).expanduser().resolve())


def _s3_store(location: str, check: bool) -> Any:
    try:
        import boto3
        import botocore.config
        import botocore.exceptions
        from optuna.artifacts import Boto3ArtifactStore
    except ImportError:
        raise ArtifactError(
            f"artifact store {location} needs boto3, which is not installed: "
            f"pip install 'dlboost-search[s3]'."
        ) from None
    bucket, endpoint = _s3_parts(location)
    shown_endpoint = endpoint or "AWS's"
    # Few, quick retries: an endpoint that is down is said within seconds, not minutes.
    config = botocore.config.Config(
        connect_timeout=5, read_timeout=60, retries={"max_attempts": 3, "mode": "standard"}
    )
    try:
        # A session of its own: credentials as the environment gives them now, not cached.
        client = boto3.session.Session().client("s3", endpoint_url=endpoint, config=config)
        if check:
            client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.NoCredentialsError, botocore.exceptions.PartialCredentialsError):
        raise ArtifactError(
            f"artifact store {location}: no S3 credentials found. Set AWS_ACCESS_KEY_ID and "
            f"AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or ~/.aws/credentials) on every machine "
            f"that runs trials; the study never stores them. Nothing was stored."
        ) from None
    except (botocore.exceptions.EndpointConnectionError, botocore.exceptions.ConnectTimeoutError):
        raise ArtifactError(
            f"artifact store {location}: cannot reach the S3 endpoint {shown_endpoint} "
            f"(nothing answers there). Start the server, or fix the endpoint "
            f"(s3://BUCKET?endpoint_url=URL, or $AWS_ENDPOINT_URL). Nothing was stored."
        ) from None
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        what = {
            "404": f"bucket {bucket!r} does not exist there: create it first",
            "NoSuchBucket": f"bucket {bucket!r} does not exist there: create it first",
            "403": "access is denied: check the credentials and the bucket's permissions",
        }.get(code, f"the server refused: {exc}")
        raise ArtifactError(
            f"artifact store {location} (endpoint {shown_endpoint}): {what}. Nothing was stored."
        ) from None
    except (botocore.exceptions.BotoCoreError, ValueError) as exc:
        raise ArtifactError(
            f"artifact store {location} (endpoint {shown_endpoint}): {exc}. {LOCATION_HELP} "
            f"Nothing was stored."
        ) from None
    return Boto3ArtifactStore(bucket, client=client)


def _folder_store(folder: Path, writing: bool) -> Any:
    from optuna.artifacts import FileSystemArtifactStore

    if writing:
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ArtifactError(
                f"artifact store {folder}: cannot create it ({exc.strerror}). Give a folder "
                f"you can write with search.artifacts or --artifacts. Nothing was stored."
            ) from None
        if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
            raise ArtifactError(
                f"artifact store {folder}: "
                + ("not a folder" if not folder.is_dir() else "not writable by this user")
                + ". Give a folder you can write with search.artifacts or --artifacts (or fix "
                "its permissions). Nothing was stored."
            )
    return FileSystemArtifactStore(folder)


def _open_store(location: str, writing: bool) -> Any:
    if location.startswith(S3):
        return _s3_store(location, check=writing)
    return _folder_store(Path(location), writing)


def _sign(study: Any) -> int:
    from optuna.study import StudyDirection

    return 1 if study.direction == StudyDirection.MINIMIZE else -1


def _ranked(study: Any) -> list[Any]:
    """The complete trials within the study's objective.constraints, best first (ties: the
    earlier trial): a model over a limit is never exported, so never kept."""
    return limits.ranked(study)


def _metas(trial: Any) -> list[tuple[str, dict[str, Any]]]:
    """The trial's artifact records: (system attribute key, meta as a dict)."""
    found = []
    for key, value in trial.system_attrs.items():
        if key.startswith(ARTIFACT_PREFIX):
            meta = json.loads(value) if isinstance(value, str) else value
            if isinstance(meta, dict):  # the dashboard marks one it deleted as null
                found.append((key, meta))
    return found


def _forget(study: Any, trial_id: int, key: str) -> None:
    """Delete one system attribute of a finished trial. Optuna has no API for it (and refuses
    to change a finished trial), so the row goes straight from its table, as the heartbeats
    are read in study.py."""
    import sqlalchemy
    from optuna.storages._rdb import models

    storage = getattr(study._storage, "_backend", study._storage)
    session = storage.scoped_session()
    try:
        table = models.TrialSystemAttributeModel
        session.execute(
            sqlalchemy.delete(table).where(table.trial_id == trial_id, table.key == key)
        )
        session.commit()
    finally:
        session.close()


@dataclass
class TrialModels:
    """A study's store of trial models: where (`location`, as recorded; None for the default
    beside the SQLite file, `shown` for messages), and how many best trials keep theirs."""

    store: Any
    location: str | None
    shown: str
    keep: int | None
    _removed: set[str] = field(default_factory=set)  # ids this process deleted

    def wanted(self, study: Any, value: float, number: int, attrs: dict[str, Any]) -> bool:
        """Whether a trial scoring `value`, measured as `attrs` (its training record), keeps
        to the study's limits and would be among the best `keep` complete trials."""
        if limits.over(limits.constraints_of(study), attrs):
            return False
        if self.keep is None:
            return True
        sign = _sign(study)
        better = sum((sign * t.value, t.number) < (sign * value, number) for t in _ranked(study))
        return better < self.keep

    def upload(self, trial: Any, model: Any) -> str:
        """Save the running `trial`'s model and upload it to the store; its artifact id."""
        from optuna.artifacts import upload_artifact

        with tempfile.TemporaryDirectory(prefix="dlboost-model-") as folder:
            path = Path(folder) / f"trial-{trial.number}{MODEL_SUFFIX}"
            model.save(path)
            return upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial
            )

    def write(self, model: Any, number: int) -> dict[str, str]:
        """Save and store the model of a trial not created yet (the Hyperband backend copies
        each trial in once finished); the system attributes that record it, for create_trial."""
        from optuna.artifacts import ArtifactMeta

        name = f"trial-{number}{MODEL_SUFFIX}"
        meta = ArtifactMeta(str(uuid.uuid4()), name, _mimetype(name), None)
        with tempfile.TemporaryDirectory(prefix="dlboost-model-") as folder:
            path = Path(folder) / name
            model.save(path)
            with open(path, "rb") as f:
                self.store.write(meta.artifact_id, f)
        return {ARTIFACT_PREFIX + meta.artifact_id: json.dumps(asdict(meta))}

    def prune(self, study: Any) -> list[int]:
        """Delete the models of every finished trial outside the best `keep`; their numbers."""
        from optuna.trial import TrialState

        if self.keep is None:
            return []
        best = {t.number for t in _ranked(study)[: self.keep]}
        removed = []
        for trial in study.get_trials(deepcopy=False):
            if trial.number in best or trial.state == TrialState.RUNNING:
                continue
            for key, meta in _metas(trial):
                if meta["artifact_id"] not in self._removed:
                    self._remove(study, trial, key, meta)
                    removed.append(trial.number)
        return removed

    def remove_all(self, study: Any) -> int:
        """Delete every model and checkpoint of the study from the store; how many models
        there were."""
        count = 0
        for trial in study.get_trials(deepcopy=False):
            for _, meta in _metas(trial):
                count += self._delete_file(meta["artifact_id"])
            checkpoint = trial.system_attrs.get(records.CHECKPOINT)
            if isinstance(checkpoint, dict):
                self._delete_file(checkpoint["artifact_id"])
        return count

    def checkpoints(self) -> Checkpoints:
        """The study's mid-trial checkpoints, kept in the same store as its models."""
        return Checkpoints(self.store, self.shown)

    def _remove(self, study: Any, trial: Any, key: str, meta: dict[str, Any]) -> None:
        self._delete_file(meta["artifact_id"])
        _forget(study, trial._trial_id, key)
        self._removed.add(meta["artifact_id"])

    def _delete_file(self, artifact_id: str) -> int:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self.store.remove(artifact_id)
        except ArtifactNotFound:  # another worker, or the dashboard, deleted it first
            return 0
        return 1

    def model_of(self, trial: Any) -> dict[str, Any] | None:
        """The meta of the trial's stored model, or None."""
        return next(
            (meta for _, meta in _metas(trial) if meta["filename"].endswith(MODEL_SUFFIX)), None
        )

    def download(self, meta: dict[str, Any], folder: Path) -> Path:
        """The model file, copied from the store into `folder`; ArtifactError when it is not
        there or cannot be read."""
        import shutil

        from optuna.artifacts.exceptions import ArtifactNotFound

        path = folder / meta["filename"]
        try:
            with self.store.open_reader(meta["artifact_id"]) as reader, open(path, "wb") as out:
                shutil.copyfileobj(reader, out)
        except ArtifactNotFound:
            raise ArtifactError(f"it is no longer in {self.shown}") from None
        except Exception as exc:  # an S3 client raises many types; any means "not readable"
            raise ArtifactError(f"{self.shown} could not be read ({exc})") from None
        return path


@dataclass
class Checkpoints:
    """Mid-trial checkpoints (training.checkpoint_every) in a study's artifact store, where
    any machine that retries a trial finds them.

    A running trial writes each checkpoint under a new id, then points its system attribute
    records.CHECKPOINT at it, then deletes the one before: a worker killed at any moment
    leaves the pointer on a whole file. A retry of a lost trial is queued carrying the pointer
    (records.RESUME_FROM, storage.RetryLostTrial); once a trial ends (complete, pruned, failed
    in its own right), its checkpoints and the one it resumed from are deleted, and those no
    trial will go on from any more (`discard`).
    """

    store: Any
    shown: str

    def saver(self, study: Any, trial: Any) -> Any:
        """save(content, epoch) for the running `trial`: store `content` (TrainingState's
        bytes) as its latest checkpoint."""
        latest: dict[str, Any] = {}

        def save(content: bytes, epoch: int) -> None:
            artifact_id = f"checkpoint-{uuid.uuid4()}"
            self.store.write(artifact_id, io.BytesIO(content))
            record = {"artifact_id": artifact_id, "epoch": epoch}
            study._storage.set_trial_system_attr(trial._trial_id, records.CHECKPOINT, record)
            if latest:
                self._delete(latest["artifact_id"])
            latest.update(record)

        return save

    def load(self, record: dict[str, Any]) -> bytes:
        """A checkpoint's bytes; ArtifactError saying why when it cannot be read."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            with self.store.open_reader(record["artifact_id"]) as reader:
                return reader.read()
        except ArtifactNotFound:
            raise ArtifactError(f"it is no longer in {self.shown}") from None
        except Exception as exc:  # an S3 client raises many types; any means "not readable"
            raise ArtifactError(f"{self.shown} could not be read ({exc})") from None

    def discard(self, study: Any, ended: Any) -> None:
        """Delete the checkpoints no trial will go on from: those of the trial that just
        `ended` in its own right (its own, and the one it resumed from), and those of trials
        that ended otherwise (a time limit, an error, lost once more than search.retries
        allow) over a minute ago, which no queued or running retry names. The minute covers
        the moment between a lost trial's failing and its retry's queueing."""
        from optuna.trial import TrialState

        trials = study.get_trials(deepcopy=False)
        live = (TrialState.WAITING, TrialState.RUNNING)
        needed = {
            t.user_attrs[records.RESUME_FROM]["artifact_id"]
            for t in trials
            if t.state in live and isinstance(t.user_attrs.get(records.RESUME_FROM), dict)
        }
        resumed = ended.user_attrs.get(records.RESUME_FROM)
        if isinstance(resumed, dict):
            self._delete(resumed["artifact_id"])
        settled = datetime.now() - timedelta(minutes=1)
        for trial in trials:
            own = trial.system_attrs.get(records.CHECKPOINT)
            if not isinstance(own, dict) or trial.state in live:
                continue
            if trial.number == ended.number or (
                own["artifact_id"] not in needed and (trial.datetime_complete or settled) < settled
            ):
                self._delete(own["artifact_id"])
                _forget(study, trial._trial_id, records.CHECKPOINT)

    def _delete(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        try:
            self.store.remove(artifact_id)
        except ArtifactNotFound:  # deleted already (a retry that ended, `delete`)
            pass


def _mimetype(name: str) -> str:
    return mimetypes.guess_type(name)[0] or "application/octet-stream"


def _recorded(study: Any) -> dict[str, Any] | None:
    record = records.study_record(study, records.MODELS)
    return record if isinstance(record, dict) else None


def _shown(location: str | None, url: str) -> str:
    return masked(location) if location else str(models_dir(url).resolve())


def open_models(study: Any, url: str, writing: bool = False) -> TrialModels:
    """The store the study records (the default for a study made before stores were
    recorded): opened to write (a folder created, an S3 bucket checked) or only to read."""
    record = _recorded(study) or {}
    location = record.get("store")
    keep = record["keep_models"] if "keep_models" in record else _default_keep()
    store = _open_store(location or str(models_dir(url)), writing)
    return TrialModels(store, location, _shown(location, url), keep)


def _default_keep() -> int | None:
    """search.keep_models' default, for studies made before it."""
    from dlboost_search.spaces import SearchSettings

    return SearchSettings().keep_models


def settle_models(
    study: Any, url: str, given: str | None = None, keep: int | None | bool = False
) -> TrialModels:
    """What `start`, `resume` and `worker` do before any trial: open the study's store to
    write, checked (a folder writable, an S3 bucket reachable with credentials), and record it
    with `keep` (False: as recorded). A store `given` (search.artifacts, --artifacts) must be
    the one the study records, if it records one: its models are there."""
    record = _recorded(study)
    location = _resolved(given) if given else None
    if record is not None and given and record.get("store") != location:
        raise ArtifactError(
            f"study {study.study_name!r} keeps its trial models in "
            f"{_shown(record.get('store'), url)}, not {masked(location or '')}: nothing was "
            f"changed. Leave out search.artifacts / --artifacts to go on with its store, or "
            f"start a study of another name for the new store."
        )
    if record is not None and not given:
        location = record.get("store")
    if keep is False:
        keep = record.get("keep_models") if record else _default_keep()
    if location is None and not url.startswith("sqlite:///"):
        # A database server has no file to sit beside: the folder is recorded, absolute.
        location = str(models_dir(url).resolve())
    store = _open_store(location or str(models_dir(url)), writing=True)
    wanted = {"store": location, "keep_models": keep}
    if record != wanted:
        records.set_study_record(study, records.MODELS, wanted)
    return TrialModels(store, location, _shown(location, url), keep)


def carry_models(
    source: Any,
    source_url: str,
    destination: Any,
    destination_url: str,
    trials: list[Any],
    new_copy: bool,
) -> int:
    """Copy the models of `trials` (copied from study `source` into study `destination`) into
    the destination's store, under the same ids, which the copied trials' records name; how
    many were copied. A `new_copy` (export, import) gets a store of its own, its storage's
    default, as if it had started there: the record it was copied with names the source's (a
    study without a record has the default store, wherever it is)."""
    from_models = open_models(source, source_url)
    to_models = None
    if new_copy and _recorded(destination) is not None:
        records.set_study_record(destination, records.MODELS, None)
        to_models = settle_models(destination, destination_url, keep=from_models.keep)
    if not any(_metas(t) for t in trials):
        return 0
    to_models = to_models or open_models(destination, destination_url, writing=True)
    return _copy_models(from_models, to_models, trials)


def _copy_models(source: TrialModels, destination: TrialModels, trials: list[Any]) -> int:
    """Copy the models of `trials` from one store to another, under the same ids; how many
    were copied. Nothing to do when both are one store."""
    from optuna.artifacts.exceptions import ArtifactNotFound

    if source.shown == destination.shown:
        return 0
    copied = 0
    for trial in trials:
        for _, meta in _metas(trial):
            try:
                with source.store.open_reader(meta["artifact_id"]) as reader:
                    destination.store.write(meta["artifact_id"], reader)
            except ArtifactNotFound:  # deleted (keep_models, the dashboard): nothing to carry
                continue
            copied += 1
    return copied


class _AnyStore:
    """The dashboard's one artifact store over every store the storage's studies use: artifact
    ids are unique, so a read tries each in turn. Uploads from the dashboard go to the first."""

    def __init__(self, stores: list[Any]):
        self.stores = stores

    def open_reader(self, artifact_id: str) -> Any:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                return store.open_reader(artifact_id)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the stores")

    def write(self, artifact_id: str, content_body: Any) -> None:
        self.stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self.stores:
            try:
                store.remove(artifact_id)
                return
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of the stores")


def models_for_dashboard(storage: Any, url: str) -> Any:
    """One artifact store for optuna-dashboard on `storage`: the default store, and every
    store a study there records. A store that cannot be opened (boto3 missing) is left out:
    the rest of the dashboard still works."""
    locations = [str(models_dir(url))]
    for summary in storage.get_all_studies():
        record = storage.get_study_system_attrs(summary._study_id).get(records.MODELS)
        if isinstance(record, dict) and record.get("store"):
            locations.append(record["store"])
    stores = []
    for location in dict.fromkeys(locations):
        try:
            stores.append(_open_store(location, writing=False))
        except ArtifactError:
            continue
    return _AnyStore(stores)
