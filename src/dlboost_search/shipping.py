"""Take the result away: the best trial's model (or the K best, as an ensemble), as stored
during the search (artifacts.py) or else retrained, saved with everything prediction needs;
and predict on new files.

A model directory holds
    model.keras           the Keras model (an ensemble is one model averaging its members)
    dlboost_model.json    preprocessing (columns, scaling, categories), class labels or the
                          target's scale, the trials it came from, validation scores (the
                          objective's, and under `validation` figures in the data's own terms:
                          RMSE and MAE in the target's units, or accuracy and loss)
    model_card.md         the same for people: data, parameters, scores, study and storage
The files are written in a temporary folder first. A new folder is then renamed into place;
into an earlier export's folder the three files are moved one by one, replacing only them:
any other file there (predictions, notes) stays. The old dlboost_model.json goes first and
the new one comes last, so an interrupted export leaves a folder that `predict` refuses,
never one that mixes two models.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from dlboost_search import limits, outputs, records
from dlboost_search.artifacts import open_models
from dlboost_search.errors import ArtifactError, DataError, OutputError, StudyError, TrialFailed

__all__ = [
    "CARD_FILE",
    "META_FILE",
    "MODEL_FILE",
    "describe_validation",
    "export_model",
    "predict",
]

MODEL_FILE = "model.keras"
META_FILE = "dlboost_model.json"
CARD_FILE = "model_card.md"
FORMAT = 1


def export_model(
    name: str,
    url: str,
    out_dir: Path,
    *,
    refit_all: bool = False,
    ensemble: int = 1,
    smallest_within: float | None = None,
    on_progress: Callable[[str], None] = lambda line: None,
) -> dict[str, Any]:
    """Save the best `ensemble` trials of study `name` to `out_dir`; with `smallest_within`
    (a fraction: 0.01 for 1 %), the one trial with the fewest parameters whose value is within
    that fraction of the best's. Only trials within the study's objective.constraints are
    chosen.

    Each trial's model is the one the search stored, else (none stored, or `refit_all`)
    retrained from a fresh model for the epochs at which it scored best, on the training rows
    (plus the validation rows with `refit_all`). `on_progress` hears which it did for each.
    Returns the saved metadata."""
    from optuna.trial import TrialState

    from dlboost_search.storage import load_study, masked
    from dlboost_search.study import space_of

    _check_out_dir(out_dir)
    study = load_study(name, url)
    space = space_of(study)
    constraints = space.objective.constraints
    finished = limits.ranked(study, constraints)  # best first
    if not finished and study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise StudyError(f"{limits.none_feasible(study, constraints)} Nothing was written.")
    if not finished:
        raise StudyError(
            f"study {name!r} has no complete trial to export yet; run or resume it first "
            f"(`dlboost-search status` shows its trials)."
        )
    within = " within objective.constraints" if constraints.given() else ""
    if ensemble > len(finished):
        raise StudyError(
            f"--ensemble {ensemble}: study {name!r} has only {len(finished)} complete trials"
            f"{within}; ask for at most {len(finished)}."
        )
    chosen = finished[:ensemble]
    picked = None
    if smallest_within is not None:
        chosen = [limits.smallest_within(finished, smallest_within, space.direction == "minimize")]
        picked = _why_picked(chosen[0], finished[0], smallest_within, space, within)
        on_progress(picked)

    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(None)
    import keras

    from dlboost_search.trial import TrialContext

    context = TrialContext(space, f"study {name!r}")
    prepared = context.data
    metric = space.objective.metric
    models = open_models(study, url)
    members, described = [], []
    for rank, trial in enumerate(chosen, start=1):
        params = space.resolve(trial.params)
        epochs = records.epochs_from_scratch(trial, space.training.max_epochs)
        counted = f"trial {trial.number} ({rank}/{len(chosen)})"
        model, why = (None, "--refit-all") if refit_all else _stored_model(models, trial)
        if model is not None:
            epochs = int(trial.user_attrs.get(records.BEST_EPOCH) or epochs)
            on_progress(f"{counted}: its stored model from {models.shown} (no retraining)")
        else:
            on_progress(
                f"retraining {counted} ({why}): {epochs} epochs on "
                f"{context.rows_for_retraining(refit_all)} rows"
            )
        try:
            if model is None:
                model = context.model(params, trial.number)
                context.retrain(model, params, trial.number, epochs, refit_all)
            model.name = f"trial_{trial.number}"  # unique inside an ensemble
        except TrialFailed as exc:
            hint = (
                " With --refit-all the extra rows can make it diverge: try without."
                if refit_all
                else ""
            )
            raise StudyError(
                f"retraining trial {trial.number} of study {name!r} failed: {exc}. Nothing was "
                f"written.{hint}"
            ) from None
        predicted = _validation_predictions(model, prepared)
        described.append(
            {
                "trial": trial.number,
                "trial_value": trial.value,
                "params": params,
                "epochs": epochs,
                "model": "retrained" if why else "stored",
                "validation_score": _score(prepared, metric, predicted),
            }
        )
        members.append((model, predicted))
    final = members[0][0] if len(members) == 1 else _average(members, prepared.input_shape)
    predicted = np.mean([p for _, p in members], axis=0)
    meta = {
        "format": FORMAT,
        "study": name,
        "storage": masked(url),
        "space": space.to_dict(),
        "task": prepared.task,
        "class_labels": prepared.class_labels,
        "target_mean": prepared.target_mean,
        "target_std": prepared.target_std,
        "target_transform": prepared.target_transform,
        "preparation": list(prepared.notes),
        "preprocessing": prepared.preprocessing,
        "objective": {"metric": metric, "direction": space.direction},
        "refit_all": refit_all,
        "members": described,
        **({"picked": picked} if picked else {}),
        "validation_score": _score(prepared, metric, predicted),
        "versions": {"keras": keras.__version__},
    }
    meta["validation"] = {
        "rows": prepared.n_val,
        "from": prepared.validation_rows,
        **_readable_scores(meta, prepared, predicted),
    }
    _write(out_dir, final, meta)
    return meta


def _stored_model(models: Any, trial: Any) -> tuple[Any, str | None]:
    """The trial's model from the store, or None with why it must be retrained."""
    import keras

    meta = models.model_of(trial)
    if meta is None:
        return None, (
            f"no stored model in {models.shown}: search.keep_models left it out, or the trial "
            f"ran before models were stored"
        )
    with tempfile.TemporaryDirectory(prefix="dlboost-model-") as folder:
        try:
            path = models.download(meta, Path(folder))
            # Not compiled: prediction needs no loss or metric (ours are not registered).
            return keras.saving.load_model(path, compile=False), None
        except ArtifactError as exc:
            return None, f"its stored model {meta['filename']}: {exc}"
        except Exception as exc:  # Keras raises many types for a damaged file
            return None, f"its stored model cannot be loaded ({type(exc).__name__})"


def _validation_predictions(model: Any, prepared: Any) -> np.ndarray:
    """The model's outputs on the validation rows: arrays in memory, or batches streamed."""
    from dlboost_search.data import StreamedData

    if isinstance(prepared, StreamedData):
        inputs = prepared.validation_batches(4096).map(lambda x, y: x)
        return model.predict(inputs, verbose=0)
    return model.predict(prepared.x_val, batch_size=4096, verbose=0)


def _why_picked(picked: Any, best: Any, fraction: float, space: Any, within: str) -> str:
    """--smallest-within's choice in words: which trial, and why."""
    metric = space.objective.metric

    def shown(trial: Any) -> str:
        count = trial.user_attrs.get(records.N_PARAMS)
        size = "parameters not recorded" if count is None else f"{count:,} parameters"
        return f"trial {trial.number} ({size}, {metric} {trial.value:.5g})"

    percent = f"{fraction * 100:g}%"
    if picked.number == best.number:
        return (
            f"--smallest-within {percent}: the best trial{within}, {shown(best)}, has the "
            f"fewest parameters of those within {percent} of its {metric}"
        )
    return (
        f"--smallest-within {percent}: {shown(picked)}, the fewest parameters of the "
        f"trials{within} whose {metric} is within {percent} of the best, {shown(best)}"
    )


def _is_export(folder: Path) -> bool:
    """Whether `folder` holds an earlier export (or one interrupted while its files moved)."""
    return any((folder / name).is_file() for name in (META_FILE, CARD_FILE))


def _check_out_dir(out_dir: Path) -> None:
    """Before any retraining: a folder the export can write, that is new, empty, or an earlier
    export's."""
    outputs.check_folder(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _is_export(out_dir):
        raise OutputError(
            f"--out {out_dir}: it exists, holds other files and is not an exported model; give "
            f"a new or empty folder. An export writes {MODEL_FILE}, {META_FILE} and "
            f"{CARD_FILE}, and into an earlier export's folder replaces only those."
        )


def _average(members: list[tuple[Any, Any]], input_shape: tuple[int, ...]) -> Any:
    """One Keras model whose output is the mean of its members' outputs."""
    import keras

    inputs = keras.Input(shape=input_shape)
    outputs = keras.layers.Average(name="average")([model(inputs) for model, _ in members])
    return keras.Model(inputs, outputs, name="ensemble")


def _score(prepared: Any, metric: str, predicted: np.ndarray) -> float:
    """`metric` (its validation form) of predictions on the validation rows, as Keras logs it
    less any regularization penalty."""
    y, p = prepared.y_val, np.asarray(predicted, dtype="float64")
    name = metric.removeprefix("val_")
    if prepared.task == "regression":
        error = p[:, 0] - y
        return float(np.mean(error**2) if name == "loss" else np.mean(np.abs(error)))
    if name in ("macro_f1", "balanced_accuracy"):
        from sklearn.metrics import balanced_accuracy_score, f1_score

        chosen = (p[:, 0] >= 0.5) if prepared.task == "binary" else np.argmax(p, axis=1)
        if name == "macro_f1":
            return float(f1_score(y, chosen.astype(int), average="macro", zero_division=0))
        return float(balanced_accuracy_score(y, chosen.astype(int)))
    if prepared.task == "binary":
        q = np.clip(p[:, 0], 1e-7, 1 - 1e-7)
        if name == "auc":
            from sklearn.metrics import roc_auc_score

            return float(roc_auc_score(y, q))
        if name == "accuracy":
            return float(np.mean((q >= 0.5) == y))
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))
    if name == "accuracy":
        return float(np.mean(np.argmax(p, axis=1) == y))
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y.astype(int)], 1e-7, 1))))


def _readable_scores(meta: dict[str, Any], prepared: Any, predicted: Any) -> dict[str, float]:
    """The exported model's validation scores in the data's own terms: for regression RMSE and
    MAE in the target's units, for classifiers the accuracy and the loss. Predictions go
    through `predict`'s own path (`_predictions`), so they are what a user will get."""
    from dlboost_search.data import rmse_and_mae

    shown = _predictions(meta, predicted)["prediction"].to_numpy()
    if meta["task"] == "regression":
        return rmse_and_mae(shown - _in_target_units(meta, prepared.y_val))
    labels = np.array(meta["class_labels"], dtype=object)
    return {
        "accuracy": float(np.mean(shown == labels[prepared.y_val.astype(int)])),
        "loss": _score(prepared, "loss", predicted),
    }


def _write(out_dir: Path, model: Any, meta: dict[str, Any]) -> None:
    out_dir = out_dir.resolve()
    existed = out_dir.is_dir()
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    # On the same file system as the destination, so every move below is a rename.
    staging = Path(tempfile.mkdtemp(dir=out_dir if existed else out_dir.parent, prefix=".export-"))
    try:
        model.save(staging / MODEL_FILE)
        (staging / CARD_FILE).write_text(model_card(meta))
        (staging / META_FILE).write_text(json.dumps(meta, indent=2, default=str) + "\n")
        if not existed:
            staging.rename(out_dir)
            return
        (out_dir / META_FILE).unlink(missing_ok=True)
        for name in (MODEL_FILE, CARD_FILE, META_FILE):
            os.replace(staging / name, out_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def model_card(meta: dict[str, Any]) -> str:
    """A Markdown model card: what the model is, where it came from, how well it did."""
    data = meta["space"]["data"]
    source = data.get("builtin") and f"built-in dataset `{data['builtin']}`"
    source = source or f"`{data.get('path') or data.get('images')}`"
    metric = meta["objective"]["metric"].removeprefix("val_")
    members = meta["members"]
    trained = "training + validation rows (--refit-all)" if meta["refit_all"] else "training rows"
    validation = meta["validation"]
    standardized = (
        "; in standardized units: training scales the target to mean 0 and standard deviation 1"
        + (", after log(1 + y)" if meta.get("target_transform") == "log1p" else "")
        if meta["task"] == "regression"
        else ""
    )
    lines = [
        f"# Model card: {meta['study']}",
        "",
        f"- **Task**: {meta['task']}"
        + (
            f", classes {', '.join(map(str, meta['class_labels']))}" if meta["class_labels"] else ""
        ),
        f"- **Data**: {source}; trained on the {trained}",
        f"- **Study**: `{meta['study']}` in `{meta['storage']}`",
        f"- **Model**: {meta['space']['model']['family']} family"
        + (
            f", ensemble of the {len(members)} best trials (predictions averaged)"
            if len(members) > 1
            else f", trial {members[0]['trial']}"
        ),  # fmt: skip
        *([f"- **Chosen by** {meta['picked']}"] if meta.get("picked") else []),
        f"- **Validation {metric}** (objective: {meta['objective']['direction']} "
        f"{meta['objective']['metric']}{standardized}): {meta['validation_score']:.5g}",
        f"- **Validation scores of the exported model**: {describe_validation(validation)}",
        f"- **Validation rows**: the {validation['rows']} rows the study scored its trials on: "
        f"{validation['from']}"
        + (
            " — the model was trained on them too (--refit-all), so every validation score "
            "here is optimistic"
            if meta["refit_all"]
            else ""
        ),
        "",
        "| trial | value in the study | validation " + metric + " exported | epochs | model |",
        "|---|---|---|---|---|",
        *(
            f"| {m['trial']} | {m['trial_value']:.5g} | {m['validation_score']:.5g} | "
            f"{m['epochs']} | {_model_source(m)} |"
            for m in members
        ),
    ]
    if meta.get("preparation"):
        lines += ["", "## Data preparation", "", *(f"- {note}" for note in meta["preparation"])]
        lines += [
            "",
            "`predict` prepares new rows the same way: the same fills, categories and columns.",
        ]
    if len(members) > 1:
        lines += [
            "",
            f"The ensemble scores {meta['validation_score']:.5g} against "
            f"{members[0]['validation_score']:.5g} for the best trial alone.",
        ]
    for m in members:
        lines += [
            "",
            f"## Parameters of trial {m['trial']}",
            "",
            "| parameter | value |",
            "|---|---|",
        ]
        lines += [f"| {k} | {v} |" for k, v in m["params"].items()]
    lines += [
        "",
        "## Use",
        "",
        "```",
        "dlboost-search predict THIS_FOLDER new_rows.csv --out predictions.csv",
        "```",
        "",
        "Or in Python: `keras.saving.load_model('model.keras')` takes rows prepared as "
        "`dlboost_model.json` describes (its `preprocessing`).",
        "",
    ]
    return "\n".join(lines)


def _model_source(member: dict[str, Any]) -> str:
    """How an export got a member's model: the trial's own, stored during the search, or
    retrained (exports of 0.1.0 were all retrained)."""
    if member.get("model", "retrained") == "stored":
        return "the trial's own, stored during the search"
    return "retrained"


def describe_validation(validation: dict[str, Any]) -> str:
    """The figures of an export's `validation` in words, for its card and summary."""
    if "rmse" in validation:
        return f"RMSE {validation['rmse']:.5g}, MAE {validation['mae']:.5g} (in the target's units)"
    return f"accuracy {validation['accuracy']:.4f}, loss {validation['loss']:.5g}"


def _read_model(model_dir: Path) -> tuple[dict[str, Any], Path]:
    """The exported model's description and its model file's path, refused when either is
    missing or unreadable."""
    meta_path, model_path = model_dir / META_FILE, model_dir / MODEL_FILE
    remake = f"Export it again with `dlboost-search export-model STUDY --out {model_dir}`."
    if not meta_path.is_file():
        raise DataError(
            f"{model_dir}: not an exported model (no {META_FILE}). Make one with "
            f"`dlboost-search export-model STUDY --out {model_dir}`."
        )
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        missing = [key for key in _META_KEYS if key not in meta]
    except (ValueError, TypeError) as exc:  # not JSON, not UTF-8, not a mapping
        raise DataError(
            f"{meta_path}: not a readable model description ({exc}). {remake}"
        ) from None
    if missing:
        raise DataError(f"{meta_path}: lacks {', '.join(missing)}. {remake}")
    if not model_path.is_file():
        raise DataError(f"{model_dir}: {MODEL_FILE} is missing. {remake}")
    return meta, model_path


# What predict reads from dlboost_model.json.
_META_KEYS = ("task", "class_labels", "target_mean", "target_std", "preprocessing")


def predict(
    model_dir: Path,
    data_path: Path,
    out_path: Path,
    on_note: Callable[[str], None] = lambda line: None,
) -> int:
    """Predict every row of `data_path` (a table, an NPZ file, or for a model trained on
    images an image file or folder) with an exported model; write them to `out_path` (CSV, or
    Parquet by its suffix). A table or folder is read, predicted and written a chunk at a
    time, so one larger than memory is predicted too. `on_note` hears what was done to the
    rows (values imputed, categories the model does not know). Returns the number of rows."""
    outputs.check_file(out_path, "--out", keep=(data_path,))
    meta, model_path = _read_model(model_dir)
    from dlboost_search.data import RowsToPredict

    rows = RowsToPredict(meta["preprocessing"], data_path)
    chunks = rows.chunks()
    first = next(chunks)  # a file the model cannot take is refused before the model loads

    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(None)
    import keras

    try:
        # Not compiled: prediction needs no loss or metric (and ours are not registered here).
        model = keras.saving.load_model(model_path, compile=False)
    except Exception as exc:  # Keras raises many types for a damaged file
        raise DataError(
            f"{model_path}: cannot be loaded as a Keras model ({type(exc).__name__}: "
            f"{str(exc)[:200]}). Export it again with `dlboost-search export-model STUDY "
            f"--out {model_dir}`."
        ) from None
    count = 0
    with _PredictionsFile(out_path) as written:
        for x, index in itertools.chain([first], chunks):
            frame = _predictions(meta, model.predict(x, batch_size=4096, verbose=0))
            frame.index = index
            if meta["preprocessing"].get("images"):  # each prediction names its image
                frame.insert(0, "image", list(index))
            written.append(frame)
            count += len(frame)
    for note in rows.notes():
        on_note(note)
    return count


class _PredictionsFile:
    """The predictions written chunk by chunk: CSV (a header, then rows appended), or Parquet
    (one row group per chunk). Written beside `path` and moved there once complete, so a run
    that fails midway leaves no half file."""

    def __init__(self, path: Path):
        self.path = path
        self.partial = path.with_name(f".{path.name}.partial")
        self.parquet = path.suffix.lower() in (".parquet", ".pq")
        self._writer: Any = None

    def __enter__(self) -> _PredictionsFile:
        return self

    def append(self, frame: Any) -> None:
        if not self.parquet:
            header = self._writer is None
            frame.to_csv(self.partial, index=False, header=header, mode="w" if header else "a")
            self._writer = True
            return
        import pyarrow as pa
        import pyarrow.parquet as pq

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self._writer is None:
            self._writer = pq.ParquetWriter(self.partial, table.schema)
        self._writer.write_table(table)

    def __exit__(self, kind: Any, *_: Any) -> None:
        if self.parquet and self._writer is not None:
            self._writer.close()
        if kind is None:
            os.replace(self.partial, self.path)
        else:
            self.partial.unlink(missing_ok=True)


def _predictions(meta: dict[str, Any], outputs: Any) -> Any:
    """The model's `outputs` as `predict` writes them, a pandas DataFrame: `prediction` (the
    class label, or the value in the target's units) and each class's `probability_LABEL`."""
    import pandas as pd

    p = np.asarray(outputs, dtype="float64")
    labels = np.array(meta["class_labels"], dtype=object)
    if meta["task"] == "regression":
        return pd.DataFrame({"prediction": _in_target_units(meta, p[:, 0])})
    if meta["task"] == "binary":
        return pd.DataFrame({"prediction": labels[(p[:, 0] >= 0.5).astype(int)],
                             f"probability_{labels[1]}": p[:, 0]})  # fmt: skip
    frame = pd.DataFrame({"prediction": labels[np.argmax(p, axis=1)]})
    for i, label in enumerate(labels):
        frame[f"probability_{label}"] = p[:, i]
    return frame


def _in_target_units(meta: dict[str, Any], standardized: np.ndarray) -> np.ndarray:
    """Regression values in the target's own units (exports of 0.1.0 have no transform)."""
    from dlboost_search.data import in_target_units

    transform = meta.get("target_transform", "none")
    return in_target_units(standardized, meta["target_mean"], meta["target_std"], transform)
