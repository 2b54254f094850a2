"""Datasets: built-in ones by name, a user's CSV / Parquet / NPZ file, or a folder of images
(one sub-folder per class) -> prepared arrays.

Preparation (split, one-hot encoding, standardization fitted on the training split only) runs
once per process and is cached: every trial of a worker reuses the same arrays. Each prepared
dataset also carries its `preprocessing`, a JSON-able recipe that `predict` applies to new rows.
Only image folders import TensorFlow (Keras' image loader decodes them), and only in `prepare`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlboost_search import streams, tables
from dlboost_search.catalog import BUILTIN_TASKS
from dlboost_search.devices import machine_memory
from dlboost_search.errors import DataError, shown

if TYPE_CHECKING:
    import pandas as pd

    from dlboost_search.spaces import DataSpec

__all__ = [
    "BUILTIN_TASKS",
    "IMAGE_SUFFIXES",
    "PreparedData",
    "StreamedData",
    "fingerprint",
    "preparation_notes",
    "prepare",
    "prepare_streamed",
    "RowsToPredict",
    "always_in_memory",
    "errors_in_target_units",
    "rmse_and_mae",
    "in_target_units",
    "read_for_prediction",
    "streaming",
    "task_and_shape",
]

SUNSPOT_WINDOW = 24  # two solar cycles
# Images decoded at a time by predict: 1,024 of 224 x 224 x 3 pixels take 0.6 GB as float32.
PREDICT_IMAGES = 1024
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

MIN_TRAIN_ROWS = 8
MIN_VALIDATION_ROWS = 2
# An integer target with at most this many distinct values is taken for classes.
MAX_INFERRED_CLASSES = 20
# `data.target_transform: auto` takes log(1 + y) of a positive regression target whose sample
# skewness is above this: a long right tail, as prices, incomes and counts have.
SKEWED_TARGET = 1.0
# What a message quotes of a value: a cell or a column name can be megabytes long.
QUOTE_LIMIT = 80


@dataclass(frozen=True, kw_only=True)
class DataFacts:
    """What training, export-model and the model card need to know of prepared data, however
    it is held: in arrays (PreparedData) or read in chunks (StreamedData)."""

    task: str
    n_outputs: int
    feature_names: list[str]
    class_labels: list[Any] = field(default_factory=list)
    # Regression targets are standardized; predictions are y * target_std + target_mean.
    target_mean: float = 0.0
    target_std: float = 1.0
    # How raw input becomes x (see `read_for_prediction`): {"kind": "table", ...} or
    # {"kind": "array", ...}.
    preprocessing: dict[str, Any] = field(default_factory=dict)
    # Where the validation rows come from, in words: the model card says what its scores measure.
    validation_rows: str = ""
    # A regression target's transform before standardizing: "log1p" or "none".
    target_transform: str = "none"
    # What preparation did that the user should hear of (imputed, dropped, ignored columns...),
    # one line each: validate and start print them, the model card lists them.
    notes: tuple[str, ...] = ()

    def summary(self) -> str:
        classes = f", {len(self.class_labels)} classes" if self.class_labels else ""
        shape = self.input_shape  # each subclass has it, as n_train and n_val
        return (
            f"{self.task}{classes}: {self.n_train} training rows, "
            f"{self.n_val} validation rows, "
            + (f"{len(self.feature_names)} features" if len(shape) == 1
               else f"each shaped {shape}")
        )  # fmt: skip


@dataclass(frozen=True, kw_only=True)
class PreparedData(DataFacts):
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def n_train(self) -> int:
        return len(self.x_train)

    @property
    def n_val(self) -> int:
        return len(self.x_val)


def in_target_units(standardized: Any, mean: float, std: float, transform: str) -> np.ndarray:
    """Regression values back in the target's own units: training saw the target
    standardized (mean, std), after log(1 + y) when `transform` is "log1p"."""
    values = np.asarray(standardized, dtype="float64") * std + mean
    if transform == "log1p":
        with np.errstate(over="ignore"):
            values = np.expm1(values)
    return values


def errors_in_target_units(data: PreparedData, predicted: Any) -> dict[str, float]:
    """RMSE and MAE of a regression model's validation predictions (standardized, as the
    model outputs them) in the target's own units: what a trial's loss means to its user."""
    units = (data.target_mean, data.target_std, data.target_transform)
    return rmse_and_mae(
        in_target_units(np.asarray(predicted)[:, 0], *units) - in_target_units(data.y_val, *units)
    )


def rmse_and_mae(error: np.ndarray) -> dict[str, float]:
    """The root mean square and the mean absolute value of prediction errors."""
    return {"rmse": float(np.sqrt(np.mean(error**2))), "mae": float(np.mean(np.abs(error)))}


@functools.lru_cache(maxsize=4)
def prepare(spec: DataSpec, seed: int = 0) -> PreparedData:
    """Load and prepare the data a search space names. Cached per process."""
    if spec.builtin in ARRAY_BUILTINS:
        return ARRAY_BUILTINS[spec.builtin](spec, seed)
    if spec.images:
        return _prepare_images(spec, seed)
    if spec.builtin:
        frame, target = _load_builtin(spec.builtin)
        task = BUILTIN_TASKS[spec.builtin]
        validation = None
        source = f"built-in dataset {spec.builtin!r}"
    else:
        path = Path(spec.path)
        source = str(path)
        if path.suffix.lower() == ".npz":
            return _prepare_npz(path, spec, seed)
        frame = _read_table(path, "data.path")
        target = _check_target(frame, spec.target, source)
        validation = None
        if spec.validation_path:
            validation = _read_table(Path(spec.validation_path), "data.validation_path")
            _check_same_columns(frame, validation, spec.validation_path)
        task = None
    _check_values(frame, source, target, spec)
    types, notes = tables.column_types(frame.drop(columns=[target]), dict(spec.columns), source)
    _check_types(frame, types, source)
    frame, dropped = _drop_missing(frame, target, types, spec.missing, source)
    notes += dropped
    if validation is not None:
        val_source = spec.validation_path
        _check_values(validation, val_source, target, spec)
        _check_kinds(validation, types, spec.columns, val_source, predicting=False)
        _check_types(validation, types, val_source)
        validation, dropped = _drop_missing(validation, target, types, spec.missing, val_source)
        notes += dropped
    # Inferred only now: a list cell or a typo in the target would mislead the inference.
    task = task or spec.task or _infer_task(frame[target])
    return _prepare_frame(
        frame, validation, target, task, spec, seed, (source, spec.validation_path or source),
        types, notes,
    )  # fmt: skip


def task_and_shape(
    spec: DataSpec, seed: int = 0, streamed: bool = False
) -> tuple[str, tuple[int, ...]]:
    """The task and one row's shape, for checks before a search starts. An image folder is
    only listed (decoding it needs TensorFlow, which the command's own process avoids)."""
    if spec.images:
        classes = _image_classes(Path(spec.images))
        channels = 1 if spec.color_mode == "grayscale" else 3
        return ("binary" if len(classes) == 2 else "multiclass"), (*spec.image_size, channels)
    prepared = prepare_streamed(spec, seed) if streamed else prepare(spec, seed)
    return prepared.task, prepared.input_shape


def preparation_notes(spec: DataSpec, seed: int = 0, streamed: bool = False) -> tuple[str, ...]:
    """What preparing the data does that the user should hear of, one line each (none for an
    image folder held in memory: decoding it is left to the workers)."""
    if streamed:
        return prepare_streamed(spec, seed).notes
    return () if spec.images else prepare(spec, seed).notes


def fingerprint(spec: DataSpec) -> dict[str, str]:
    """A SHA-256 of each file the search reads (an image folder: of its images' names and
    bytes), keyed by its `data` key; empty for a built-in dataset. A study keeps it, so that a
    file changed since the study began is noticed before trials on other data join it."""
    import hashlib

    def digest(files: list[Path], root: Path) -> str:
        hashed = hashlib.sha256()
        for file in files:
            hashed.update(str(file.relative_to(root)).encode() + b"\0")
            with open(file, "rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    hashed.update(block)
        return hashed.hexdigest()

    found = {}
    for key in ("path", "validation_path"):
        name = getattr(spec, key)
        if name:
            found[key] = digest([Path(name)], Path(name).parent)
    if spec.images:
        folder = Path(spec.images)
        images = sorted(f for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        found["images"] = digest(images, folder)
    return found


def _load_builtin(name: str) -> tuple[pd.DataFrame, str]:
    from sklearn import datasets

    bunch = getattr(datasets, f"load_{name}")(as_frame=True)
    return bunch.frame, "target"


def _read_table(path: Path, key: str) -> pd.DataFrame:
    import pandas as pd

    if not path.is_file():
        raise DataError(
            f"{path}: data file not found. Check `{key}` in the search space "
            f"(relative paths are taken from the directory you run the command in)."
        )
    readers = {".csv": pd.read_csv, ".parquet": pd.read_parquet, ".pq": pd.read_parquet}
    reader = readers.get(path.suffix.lower())
    if reader is None:
        raise DataError(
            f"{path}: unsupported file type {path.suffix!r}. Use .csv, .parquet or .npz."
        )
    try:
        frame = reader(path)
    except Exception as exc:  # the parsers raise many types; all mean "cannot read"
        raise DataError(f"{path}: cannot be read as {path.suffix[1:]}: {exc}") from None
    if frame.empty:
        raise DataError(f"{path}: the file has no rows.")
    # Parquet keeps column names that are not text (0, 1, ...), but the search space names
    # columns with text: `target: "2"` must find column 2.
    names = [str(c) for c in frame.columns]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(
            f"{path}: columns {_listed(twice)} appear more than once (as text); every column "
            f"needs a name of its own. Rename them."
        )
    frame.columns = names
    return frame


def _short(text: str, limit: int = QUOTE_LIMIT) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listed(names: list[Any], limit: int = 30) -> str:
    shown = ", ".join(_short(str(n)) for n in names[:limit])
    return shown + (" ..." if len(names) > limit else "")


def _check_target(frame: pd.DataFrame, target: str, source: str) -> str:
    if target in frame.columns:
        return target
    columns = list(frame.columns)
    close = difflib.get_close_matches(target, columns, n=1)
    hint = f" Did you mean {shown(close[0])}?" if close else ""
    raise DataError(
        f"{source}: unknown target column {shown(target)}.{hint} "
        f"Columns: {_listed(columns)}. Fix `data.target` in the search space."
    )


def _check_same_columns(train: pd.DataFrame, validation: pd.DataFrame, source: str) -> None:
    missing = [repr(c) for c in train.columns if c not in validation.columns]
    extra = [repr(c) for c in validation.columns if c not in train.columns]
    if missing or extra:
        raise DataError(
            f"{source}: the validation file must have the training file's columns; "
            f"missing: {f'[{_listed(missing)}]' if missing else 'none'}, "
            f"extra: {f'[{_listed(extra)}]' if extra else 'none'}."
        )


def _check_finite(
    frame: pd.DataFrame, source: str, fix: str = "Drop or fill those rows before the search"
) -> None:
    problems = []
    for column in frame.columns:
        values = frame[column]
        bad = values.isna()
        if values.dtype.kind in "fc":
            bad |= ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        count = int(bad.sum())
        if count:
            rows = ", ".join(str(i) for i in np.flatnonzero(bad.to_numpy())[:5])
            problems.append(
                f"column {shown(column)} has {count} rows with NaN or inf (rows {rows}...)"
            )
    if problems:
        raise DataError(
            f"{source}: {'; '.join(problems)}. {fix} (row numbers count from 0, header excluded)."
        )


def _check_cells(frame: pd.DataFrame, source: str) -> None:
    """Refuse cells that hold several values (Parquet lists, structs, maps)."""
    for column in frame.columns:
        values = frame[column]
        if values.dtype != object:  # text columns hold text only
            continue
        nested = values.map(lambda v: isinstance(v, (list, tuple, dict, set, np.ndarray)))
        if nested.any():
            row = int(np.flatnonzero(nested.to_numpy())[0])
            raise DataError(
                f"{source}: column {shown(column)} holds {type(values.iloc[row]).__name__} "
                f"cells (row {row}: {shown(values.iloc[row], 40)}); a column must hold one "
                f"number or one text value per row. Split it into columns of their own, or "
                f"remove it."
            )


def _check_values(frame: pd.DataFrame, source: str, target: str, spec: DataSpec) -> None:
    """Every cell usable: no nested values, no inf, no stray text in a numeric column (unless
    `data.columns` says what the column is), and under `missing: refuse` no missing value."""
    if spec.missing == "refuse":
        _check_finite(frame, source)
    else:
        _check_infinite(frame, source)
    _check_cells(frame, source)
    for column in frame.columns:
        if column in spec.columns:
            continue
        values = frame[column]
        rows = tables.stray_text(values)
        if rows is not None:
            cells = ", ".join(f"row {i} {shown(values.iloc[i], 40)}" for i in rows[:5])
            cells += "..." if len(rows) > 5 else ""
            fix = (
                "drop those rows"
                if column == target
                else f"declare the column in `data.columns`: {shown(column)}: numeric reads "
                f"those cells as missing values, categorical keeps every value as a category"
            )
            raise DataError(
                f"{source}: column {shown(column)} holds numbers except in {len(rows)} "
                f"row{'s' if len(rows) > 1 else ''}: {cells} (row numbers count from 0, "
                f"header excluded). Read as text, the column would be encoded as categories, "
                f"one per distinct value. Fix those cells, or {fix}."
            )


def _check_infinite(frame: pd.DataFrame, source: str) -> None:
    """inf is no missing value: it is refused, where an empty cell is imputed or dropped."""
    problems = []
    for column in frame.columns:
        values = frame[column]
        if values.dtype.kind not in "fc":
            continue
        bad = np.isinf(values.to_numpy(dtype=float, na_value=np.nan))
        if bad.any():
            rows = ", ".join(str(i) for i in np.flatnonzero(bad)[:5])
            problems.append(
                f"column {shown(column)} has {int(bad.sum())} rows with inf (rows {rows}...)"
            )
    if problems:
        raise DataError(
            f"{source}: {'; '.join(problems)}. An infinite value is not a missing one: replace "
            f"it with a number, or empty the cell to have it treated as missing (`data.missing`) "
            f"(row numbers count from 0, header excluded)."
        )


def _check_types(frame: pd.DataFrame, types: dict[str, str], source: str) -> None:
    """Dates that do not parse, named by their row in the file, before any split."""
    for column, kind in types.items():
        if kind == "datetime":
            tables.dates(frame[column], column, source)


def _check_kinds(
    frame: pd.DataFrame, types: dict[str, str], declared: Any, source: str, predicting: bool
) -> None:
    """A column read as numbers in training (and not declared numeric, whose text cells are
    missing values) that holds text in `frame`: the validation file, or rows to predict."""
    wrong = [
        c for c, kind in types.items()
        if kind == "numeric" and c not in declared and frame[c].dtype.kind == "O"
        and tables.text_cells(frame[c]).any()
    ]  # fmt: skip
    if wrong and not predicting:
        raise DataError(
            f"{source}: column {shown(wrong[0])} holds numbers in the training rows but text "
            f"here; a column must hold the same kind of values in both files. Fix those values."
        )
    if wrong:
        raise DataError(
            f"{source}: columns {_listed(wrong)} were numbers in the training data but "
            f"hold text here; fix those values."
        )


def _missing_rows(frame, target, types, missing: str) -> tuple[np.ndarray, np.ndarray]:
    """Rows without a target, and (under `missing: drop`) other rows with a missing feature."""
    no_target = frame[target].isna().to_numpy()
    holes = np.zeros(len(frame), dtype=bool)
    if missing == "drop":
        for column, kind in types.items():
            if kind == "ignore":
                continue
            holes |= frame[column].isna().to_numpy()
            if kind == "numeric":
                holes |= tables.text_cells(frame[column])
        holes &= ~no_target
    return no_target, holes


def _drop_missing(frame, target, types, missing: str, source: str):
    """Rows without a target go (never imputed), and under `missing: drop` rows with a
    missing feature; each count in a note."""
    no_target, holes = _missing_rows(frame, target, types, missing)
    notes = [_no_target_note(source, np.flatnonzero(no_target), int(no_target.sum()))]
    if holes.any():
        notes.append(_dropped_note(source, int(holes.sum())))
    kept = ~(no_target | holes)
    if not kept.any():
        raise DataError(f"{source}: no row is left once rows with missing values are dropped.")
    return (frame if kept.all() else frame[kept]), [n for n in notes if n]


def _no_target_note(source: str, first_rows: Any, count: int) -> str:
    if not count:
        return ""
    rows = ", ".join(str(i) for i in first_rows[:5])
    return (
        f"{source}: {count} rows without a target value dropped (rows "
        f"{rows}{'...' if count > 5 else ''}; a target is never imputed)"
    )


def _dropped_note(source: str, count: int) -> str:
    return f"{source}: {count} rows with a missing value dropped (`data.missing: drop`)"


def _infer_task(target: pd.Series) -> str:
    if target.dtype.kind not in "iufb":
        return "binary" if target.nunique() == 2 else "multiclass"
    values = target.to_numpy(dtype=float)
    distinct = np.unique(values)
    if len(distinct) == 2:
        return "binary"
    if np.all(values == np.round(values)) and len(distinct) <= MAX_INFERRED_CLASSES:
        return "multiclass"
    return "regression"


def _split(n_rows: int, y: np.ndarray | None, fraction: float, seed: int, source: str):
    from sklearn.model_selection import train_test_split

    n_val = int(np.ceil(n_rows * fraction))
    if n_rows - n_val < MIN_TRAIN_ROWS or n_val < MIN_VALIDATION_ROWS:
        raise DataError(
            f"{source}: {n_rows} rows are too few for a validation split of {fraction:g} "
            f"(need at least {MIN_TRAIN_ROWS} training and {MIN_VALIDATION_ROWS} validation "
            f"rows). Add rows, change `data.validation_split`, or give `data.validation_path`."
        )
    if y is not None:
        _check_stratifiable(y, n_rows, n_val, fraction, source)
    try:
        return train_test_split(np.arange(n_rows), test_size=n_val, random_state=seed, stratify=y)
    except ValueError as exc:  # whatever _check_stratifiable did not foresee
        raise DataError(
            f"{source}: cannot split into training and validation rows with every class "
            f"on both sides ({exc})."
        ) from None


def _held_out(fraction: float, seed: int, stratified: bool) -> str:
    """The validation rows of a `_split`, in words."""
    how = ", stratified by class" if stratified else ""
    return f"held out at random by `data.validation_split: {fraction:g}` (seed {seed}{how})"


def _check_stratifiable(y: np.ndarray, n_rows: int, n_val: int, fraction: float, source: str):
    """Each side of a stratified split needs a row of every class."""
    import pandas as pd

    counts = pd.Series(y).value_counts()
    single = counts.index[counts < 2].tolist()
    if single:
        if len(single) == 1:
            classes, fix = f"class {shown(single[0])} has", "that class, drop its row"
        else:
            classes = f"classes {_listed([shown(c) for c in single], 10)} have"
            fix = "those classes, drop their rows"
        raise DataError(
            f"{source}: cannot split into training and validation rows with every class on "
            f"both sides: {classes} a single row. Every class needs at least 2 rows. Add rows "
            f"of {fix}, or give `data.validation_path`."
        )
    n_classes, n_train = len(counts), n_rows - n_val
    if min(n_val, n_train) >= n_classes:
        return
    side, rows = ("validation", n_val) if n_val < n_classes else ("training", n_train)

    def fits(f: float) -> bool:  # as _split counts rows
        val = int(np.ceil(n_rows * f))
        return min(val, n_rows - val) >= n_classes and val >= MIN_VALIDATION_ROWS and (
            n_rows - val >= MIN_TRAIN_ROWS)  # fmt: skip

    # Round splits first (0.25 rather than 0.21), any hundredth when none of them fits.
    fractions = [f / 100 for f in range(5, 100, 5) if fits(f / 100)]
    fractions = fractions or [f / 100 for f in range(1, 100) if fits(f / 100)]
    if fractions:
        closest = min(fractions, key=lambda f: abs(f - fraction))
        fix = f"Set `data.validation_split: {closest:g}`, or give `data.validation_path`."
    else:
        fix = f"No split of {n_rows} rows can; add rows, or give `data.validation_path`."
    raise DataError(
        f"{source}: the {side} split holds {rows} of the {n_rows} rows "
        f"(`data.validation_split: {fraction:g}`) but there are {n_classes} classes, and each "
        f"side needs a row of every class. {fix}"
    )


def _target_transform(y_train: np.ndarray, setting: str, source: str, target: str) -> str:
    """log1p or none: `auto` takes log1p when the training targets are all above 0 and skewed
    (sample skewness above SKEWED_TARGET), as prices and counts are."""
    if setting == "none":
        return "none"
    if setting == "log":
        if np.min(y_train) <= -1:
            raise DataError(
                f"{source}: `data.target_transform: log` takes log(1 + y), but target "
                f"{shown(target)} goes down to {np.min(y_train):g}; it needs values above -1. "
                f"Set `data.target_transform: none` or auto."
            )
        return "log1p"
    positive = np.min(y_train) > 0
    return "log1p" if positive and tables.skewness(y_train) > SKEWED_TARGET else "none"


def _encode_target(
    y_train, y_val, task: str, source: str, target: str, val_source=None, transform="none"
):
    """Targets as float32 arrays, plus class labels or the regression scale and transform."""
    if task == "regression":
        if y_train.dtype.kind not in "iuf":
            raise DataError(
                f"{source}: target {shown(target)} is not numeric ({y_train.dtype}), so it "
                f"cannot be regressed. Set `data.task: binary` or `multiclass` for a class label."
            )
        transform = _target_transform(y_train.astype("float64"), transform, source, target)
        if transform == "log1p":
            y_train = np.log1p(y_train.astype("float64"))
            with np.errstate(invalid="ignore", divide="ignore"):  # a validation y <= -1: NaN
                y_val = np.log1p(y_val.astype("float64"))
            if not np.isfinite(y_val).all():
                raise DataError(
                    f"{val_source or source}: target {shown(target)} has values of -1 or below "
                    f"in the validation rows, which log(1 + y) cannot take. Set "
                    f"`data.target_transform: none`."
                )
        what = f"target {shown(target)}"
        mean, std = _statistics(y_train[:, np.newaxis], source, [what])
        mean, std = float(mean[0]), float(std[0])
        if std == 0:
            raise DataError(
                f"{source}: target {shown(target)} has a single value ({mean:g}) in the "
                f"training rows; there is nothing to learn. Check `data.target`."
            )
        scaled = []
        for y, side in ((y_train, source), (y_val, val_source or source)):
            scaled.append(_standardized(y[:, np.newaxis], [mean], [std], side, [what])[:, 0])
        return *scaled, [], mean, std, transform
    labels = set(y_train.tolist()) | set(y_val.tolist())
    numeric = all(isinstance(v, (int, float)) for v in labels)
    labels = sorted(labels, key=None if numeric else str)
    if len(labels) < 2:
        raise DataError(
            f"{source}: target {shown(target)} has a single value ({shown(labels[0])}); there is "
            f"nothing to learn. Check `data.target`."
        )
    if task == "binary" and len(labels) != 2:
        raise DataError(
            f"{source}: a binary task needs exactly 2 classes in {shown(target)}, found "
            f"{len(labels)}. Set `data.task: multiclass` or `regression`."
        )
    index = {label: i for i, label in enumerate(labels)}
    encode = lambda y: np.array([index[v] for v in y.tolist()], dtype="float32")  # noqa: E731
    return encode(y_train), encode(y_val), labels, 0.0, 1.0, "none"


def _prepare_frame(
    frame, validation, target, task, spec, seed, sources, types, notes
) -> PreparedData:
    source, val_source = sources
    fraction = spec.validation_split
    y_all = frame[target].to_numpy()
    if y_all.dtype.kind == "f" and task != "regression" and np.all(y_all == np.round(y_all)):
        y_all = y_all.astype("int64")  # whole-number classes of a column that had empty cells
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{source}: no feature columns besides the target {shown(target)}.")
    if all(kind == "ignore" for kind in types.values()):
        raise DataError(
            f"{source}: every column besides the target {shown(target)} is ignored "
            f"({_listed(list(types))}), so there is nothing to learn from. Declare the columns "
            f"to use in `data.columns` (numeric, categorical or datetime)."
        )
    if validation is None:
        stratify = y_all if task != "regression" else None
        train_idx, val_idx = _split(len(frame), stratify, fraction, seed, source)
        x_train_df, x_val_df = features.iloc[train_idx], features.iloc[val_idx]
        y_train, y_val = y_all[train_idx], y_all[val_idx]
        validation_rows = f"{source}, {_held_out(fraction, seed, stratify is not None)}"
    else:
        x_train_df, y_train = features, y_all
        x_val_df, y_val = validation.drop(columns=[target]), validation[target].to_numpy()
        if y_val.dtype.kind == "f" and y_all.dtype.kind == "i":
            y_val = y_val.astype("int64")
        validation_rows = f"{val_source} (`data.validation_path`)"
    x_train, x_val, names, recipe, fitted = _encode_features(
        x_train_df, x_val_df, types, spec, source, val_source
    )
    raw_y = y_train
    y_train, y_val, labels, mean, std, transform = _encode_target(
        y_train, y_val, task, source, target, val_source, spec.target_transform
    )
    if transform == "log1p":
        fitted.append(
            f"target {shown(target)} learned as log(1 + y) (`data.target_transform: "
            f"{spec.target_transform}`, skewness {tables.skewness(raw_y):.2g}); predictions "
            f"and scores are in its own units"
        )
    return PreparedData(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, task=task,
        n_outputs=len(labels) if task == "multiclass" else 1,
        feature_names=names, class_labels=labels, target_mean=mean, target_std=std,
        preprocessing={**recipe, "target": target, "target_transform": transform},
        validation_rows=validation_rows, target_transform=transform,
        notes=tuple(notes) + tuple(fitted),
    )  # fmt: skip


def _encode_features(train, val, types, spec, source: str, val_source: str, sample=False):
    """The table recipe fitted on `train` (tables.py), applied to both sides; numeric features
    standardized with the training rows' statistics, the others one-hot encoded."""
    recipe = tables.fit(
        train, types, missing=spec.missing, max_categories=spec.max_categories, source=source
    )
    applied = tables.apply(recipe, train, source)
    what = [f"column {shown(n)}" for n in applied.numeric_names]
    if applied.numeric_names:
        mean, std = _statistics(applied.numeric, source, what)
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(0), np.ones(0)
    sides, done_sides = [], []
    for frame, side in ((train, source), (val, val_source)):
        done = applied if frame is train else tables.apply(recipe, frame, side)
        done_sides.append(done)
        numeric = np.zeros((len(frame), 0), dtype="float32")
        if applied.numeric_names:
            numeric = _standardized(done.numeric, mean, std, side, what)
        sides.append(np.concatenate([numeric, done.onehot.astype("float32")], axis=1))
    recipe.update(numeric=applied.numeric_names, mean=mean.tolist(), scale=std.tolist())
    recipe["coerce"] = [c for c, kind in spec.columns.items() if kind == "numeric"]
    return (
        *sides,
        applied.numeric_names + applied.onehot_names,
        recipe,
        _fitted_notes(recipe, train, *done_sides, sample=sample),
    )


def _fitted_notes(
    recipe: dict[str, Any], train: pd.DataFrame, applied, val_applied, sample: bool = False
) -> list[str]:
    """What the recipe does to the training and validation rows (with `sample`: to the
    streamed training rows it was fitted on), one line per column it changes."""
    notes = []

    def both(counts: str) -> dict[str, tuple[int, int]]:
        first, second = getattr(applied, counts), getattr(val_applied, counts)
        return {c: (first.get(c, 0), second.get(c, 0)) for c in {**first, **second}}

    def rows(pair: tuple[int, int]) -> str:
        if sample:
            return f"{pair[0]} (of the training rows it was fitted on)"
        return f"{sum(pair)} ({pair[0]} training, {pair[1]} validation rows)"

    for column, pair in sorted(both("coerced").items()):
        notes.append(
            f"column {shown(column)}: {rows(pair)} text cells read as missing (declared numeric)"
        )
    for column, pair in sorted(both("imputed").items()):
        kind = recipe["types"][column]
        if kind == "categorical":
            how = f"the category {tables.MISSING!r}"
        elif kind == "datetime":
            how = "the training rows' median year, month, day..."
        else:
            how = f"the training median {recipe['fill'][column]:.6g}"
        if column in recipe["indicators"]:
            how += f", plus a was-missing column {column}.missing"
        notes.append(f"column {shown(column)}: {rows(pair)} missing values imputed with {how}")
    for column in recipe["other"]:
        kept = len(recipe["categorical"][column])
        notes.append(
            f"column {shown(column)}: {train[column].nunique()} categories capped at "
            f"{kept + 1} (`data.max_categories`): the {kept} most frequent, the other "
            f"{applied.unknown.get(column, 0)} rows grouped as {tables.OTHER!r}"
        )
    for column, parts in recipe["dates"].items():
        notes.append(f"column {shown(column)}: dates, as {', '.join(parts)}")
    return notes


def _too_large(source: str, what: str, values: np.ndarray, how: str) -> DataError:
    largest = float(np.max(np.abs(values)))
    return DataError(
        f"{source}: {what} holds values too large to train on (largest magnitude {largest:.3g}; "
        f"{how}). Training uses float32, which holds at most about 3.4e38: rescale the values "
        f"before the search (take a log, or divide them by a power of ten)."
    )


def _statistics(raw: np.ndarray, source: str, what: list[str]):
    """Mean and standard deviation of each feature (the last axis), which must not overflow:
    values near float64's limit have squares beyond it. `what` names each feature."""
    flat = raw.reshape(-1, raw.shape[-1]).astype("float64")
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = flat.mean(axis=0), flat.std(axis=0)
    bad = np.flatnonzero(~(np.isfinite(mean) & np.isfinite(std)))
    if len(bad):
        i = bad[0]
        raise _too_large(source, what[i], flat[:, i], "their mean and spread overflow")
    return mean, std


def _check_standardized(x, raw, mean, std, source: str, what: list[str]) -> None:
    """`x` (float32) is `raw` standardized: a value far enough from the training rows' mean,
    in their standard deviations, overflows float32."""
    bad = np.flatnonzero(~np.isfinite(x.reshape(-1, x.shape[-1])).all(axis=0))
    if len(bad):
        i = bad[0]
        values = raw.reshape(-1, raw.shape[-1])[:, i].astype("float64")
        with np.errstate(over="ignore"):
            far = float(np.max(np.abs((values - mean[i]) / std[i])))
        how = f"{far:.3g} standard deviations of the training rows from their mean"
        raise _too_large(source, what[i], values, how)


def _standardized(raw, mean, std, source: str, what: list[str]) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # checked just below
        x = ((raw.astype("float64") - mean) / std).astype("float32")
    _check_standardized(x, raw, np.asarray(mean), np.asarray(std), source, what)
    return x


def _prepare_npz(path: Path, spec: DataSpec, seed: int) -> PreparedData:
    arrays = _read_npz(path)
    if {"x", "y"} <= arrays.keys():
        x, y, classes = _checked_pair(path, arrays, "x", "y")
        task = spec.task or _npz_task(y, classes)
        train_idx, val_idx = _split(
            len(x), y if task != "regression" else None, spec.validation_split, seed, str(path)
        )
        x_train, x_val, y_train, y_val = x[train_idx], x[val_idx], y[train_idx], y[val_idx]
        names = ("x", "x")
        held = f"{path}, {_held_out(spec.validation_split, seed, task != 'regression')}"
    elif {"x_train", "y_train", "x_val", "y_val"} <= arrays.keys():
        x_train, y_train, classes = _checked_pair(path, arrays, "x_train", "y_train")
        x_val, y_val, val_classes = _checked_pair(path, arrays, "x_val", "y_val")
        if x_train.shape[1:] != x_val.shape[1:]:
            raise DataError(
                f"{path}: x_train rows have shape {x_train.shape[1:]} but x_val rows have "
                f"{x_val.shape[1:]}; both must have the same features."
            )
        if classes != val_classes:
            held = lambda k: f"one-hot rows of {k} classes" if k else "one value per row"  # noqa: E731
            raise DataError(
                f"{path}: y_train holds {held(classes)} but y_val holds {held(val_classes)}; "
                f"give both the same way."
            )
        task = spec.task or _npz_task(y_train, classes)
        names = ("x_train", "x_val")
        held = f"{path}, arrays x_val and y_val"
    else:
        raise DataError(
            f"{path}: an NPZ file holds arrays `x` and `y` (split by `data.validation_split`) "
            f"or `x_train`, `y_train`, `x_val`, `y_val`; found: "
            f"{_listed(list(arrays)) or 'none'}."
        )
    return _prepare_arrays(
        x_train, y_train, x_val, y_val, task, str(path), validation_rows=held, names=names,
        target_transform=spec.target_transform,
    )  # fmt: skip


def _npz_task(y: np.ndarray, classes: int | None) -> str:
    if classes:  # one-hot rows: classes, however many
        return "binary" if classes == 2 else "multiclass"
    return _infer_task(_series(y))


def _prepare_arrays(
    x_train, y_train, x_val, y_val, task, source, *, validation_rows, scale=None,
    names=("x_train", "x_val"), target_transform="none",
) -> PreparedData:  # fmt: skip
    """Arrays of any row shape whose last axis is the features (or channels).

    Each feature is standardized with the training split's statistics, or divided by `scale`
    (images: their pixel range) when given. `names`: the arrays of the file that x_train and
    x_val come from, for messages; `validation_rows`: where x_val comes from, in words."""
    what = [f"array {names[0]}, feature {i}" for i in range(x_train.shape[-1])]
    if scale is None:
        mean, std = _statistics(x_train, source, what)
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(x_train.shape[-1]), np.full(x_train.shape[-1], float(scale))
    x_train = _standardized(x_train, mean, std, source, what)
    what = [f"array {names[1]}, feature {i}" for i in range(x_val.shape[-1])]
    x_val = _standardized(x_val, mean, std, source, what)
    y_train, y_val, labels, t_mean, t_std, transform = _encode_target(
        y_train, y_val, task, source, "y", transform=target_transform
    )
    recipe = {
        "kind": "array",
        "shape": list(x_train.shape[1:]),
        "mean": mean.tolist(),
        "std": std.tolist(),
        "target_transform": transform,
    }
    return PreparedData(
        x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val, task=task,
        n_outputs=len(labels) if task == "multiclass" else 1,
        feature_names=[f"x{i}" for i in range(x_train.shape[-1])],
        class_labels=labels, target_mean=t_mean, target_std=t_std, preprocessing=recipe,
        validation_rows=validation_rows, target_transform=transform,
    )  # fmt: skip


def _digits_images(spec: DataSpec, seed: int) -> PreparedData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images[..., np.newaxis], digits.target  # (1797, 8, 8, 1), pixels 0-16
    source = "built-in dataset 'digits_images'"
    train_idx, val_idx = _split(len(x), y, spec.validation_split, seed, source)
    return _prepare_arrays(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], "multiclass", source, scale=16.0,
        validation_rows=f"{source}, {_held_out(spec.validation_split, seed, True)}",
    )  # fmt: skip


def _sunspots(spec: DataSpec, seed: int) -> PreparedData:
    """Forecast next year's sunspot number from the previous SUNSPOT_WINDOW years. The split
    is chronological (the last years validate): shuffled windows would leak the future."""
    from statsmodels.datasets import sunspots

    series = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype="float64")
    windows = np.lib.stride_tricks.sliding_window_view(series, SUNSPOT_WINDOW + 1)
    x, y = windows[:, :-1, np.newaxis], windows[:, -1]  # (samples, steps, 1 feature)
    n_val = int(np.ceil(len(x) * spec.validation_split))
    source = "built-in dataset 'sunspots'"
    held = f"{source}, its last {n_val} years (`data.validation_split: {spec.validation_split:g}`)"
    return _prepare_arrays(
        x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], "regression", source, validation_rows=held
    )


ARRAY_BUILTINS = {"digits_images": _digits_images, "sunspots": _sunspots}


def _image_classes(folder: Path) -> list[str]:
    """The class names of an image folder: its sub-folders that hold images, checked."""
    if not folder.is_dir():
        raise DataError(
            f"{folder}: image folder not found. `data.images` names a folder with one "
            f"sub-folder of images per class (relative paths: from where you run the command)."
        )
    classes = sorted(d.name for d in folder.iterdir() if d.is_dir())
    empty = [
        c for c in classes
        if not any(f.suffix.lower() in IMAGE_SUFFIXES for f in (folder / c).iterdir())
    ]  # fmt: skip
    if len(classes) < 2 or empty:
        found = f"empty class folders: {', '.join(empty)}" if empty else f"classes: {classes}"
        raise DataError(
            f"{folder}: an image folder needs at least 2 sub-folders (one per class), each with "
            f"{'/'.join(IMAGE_SUFFIXES)} files; {found}."
        )
    return classes


def _prepare_images(spec: DataSpec, seed: int) -> PreparedData:
    """Decode a class-per-folder image tree with Keras' own loader, resized to image_size."""
    folder = Path(spec.images)
    classes = _image_classes(folder)
    import keras

    try:
        dataset = keras.utils.image_dataset_from_directory(
            folder, labels="inferred", label_mode="int", class_names=classes,
            color_mode=spec.color_mode, image_size=tuple(spec.image_size), batch_size=None,
            shuffle=False, verbose=False,
        )  # fmt: skip
        pairs = list(dataset.as_numpy_iterator())
    except Exception as exc:  # TensorFlow's decoders raise their own types
        raise DataError(f"{folder}: cannot decode the images: {exc}") from None
    x = np.stack([image for image, _ in pairs])
    y = np.array([classes[label] for _, label in pairs])
    task = "binary" if len(classes) == 2 else "multiclass"
    train_idx, val_idx = _split(len(x), y, spec.validation_split, seed, str(folder))
    prepared = _prepare_arrays(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], task, str(folder), scale=255.0,
        validation_rows=f"{folder}, {_held_out(spec.validation_split, seed, True)}",
    )  # fmt: skip
    # predict takes image files and folders: decoded and resized as these were.
    prepared.preprocessing["images"] = {
        "image_size": list(spec.image_size), "color_mode": spec.color_mode,
    }  # fmt: skip
    return prepared


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: data file not found. Check `data.path` in the search space.")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            return dict(npz)
    except Exception as exc:  # a corrupt zip, a pickled array, ...
        raise DataError(f"{path}: cannot be read as NPZ: {exc}") from None


def _checked_pair(path: Path, arrays: dict[str, np.ndarray], xs: str, ys: str):
    """Features and targets of one NPZ split, checked before anything uses them. One-hot
    targets become class indices; returns x, y and their number of classes (else None)."""
    x, y = _rows(path, xs, arrays[xs]), arrays[ys]
    if y.ndim == 0:
        raise _single_value(path, ys, y)
    if len(x) != len(y):
        raise DataError(f"{path}: {xs} has {len(x)} rows but {ys} has {len(y)}; they must match.")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{path}: array {xs} must be numeric, got dtype {x.dtype}.")
    if 0 in x.shape[1:]:
        raise DataError(
            f"{path}: array {xs} has shape {x.shape}: its rows hold no values. Each row needs "
            f"at least one feature, e.g. shape ({len(x)}, features)."
        )
    _check_rows_finite(path, xs, x)
    _check_rows_finite(path, ys, y)
    return x, *_class_indices(path, ys, y)


def _single_value(path: Path, name: str, values: np.ndarray) -> DataError:
    return DataError(
        f"{path}: array {name} is a single value ({shown(values.item())}, shape ()); it must "
        f"hold one row per example, shaped (rows,) or (rows, features, ...)."
    )


def _rows(path: Path, name: str, x: np.ndarray) -> np.ndarray:
    """Feature rows: a 1-D array is one feature per row."""
    if x.ndim == 0:
        raise _single_value(path, name, x)
    if len(x) == 0:
        raise DataError(f"{path}: array {name} has no rows (shape {x.shape}).")
    return x.reshape(-1, 1) if x.ndim == 1 else x


def _check_rows_finite(path: Path, name: str, values: np.ndarray) -> None:
    if values.dtype.kind not in "iuf":
        return
    bad = ~np.isfinite(values).all(axis=tuple(range(1, values.ndim)))
    if bad.any():
        raise DataError(
            f"{path}: array {name} has {int(bad.sum())} rows with NaN or inf "
            f"(rows {', '.join(map(str, np.flatnonzero(bad)[:5]))}...). Drop or fill them."
        )


def _class_indices(path: Path, name: str, y: np.ndarray) -> tuple[np.ndarray, int | None]:
    """Targets as one value per row: one-hot rows become the index of their 1."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # a column of values
    if y.ndim == 1:
        return y, None
    flat = y.reshape(len(y), -1)
    one_hot = np.zeros(len(y), dtype=bool)
    if y.ndim == 2 and y.dtype.kind in "iufb":
        one_hot = ((flat == 0) | (flat == 1)).all(axis=1) & (flat.sum(axis=1) == 1)
        if one_hot.all():
            return y.argmax(axis=1), y.shape[1]
    row = int(np.flatnonzero(~one_hot)[0])
    raise DataError(
        f"{path}: array {name} has shape {y.shape}; it must hold one value per row (shape "
        f"({len(y)},)) or one-hot rows (shape ({len(y)}, classes): a single 1 per row, 0 "
        f"elsewhere), but row {row} is {shown(flat[row].tolist())}. Several targets per row "
        f"are not supported."
    )


def _series(values: np.ndarray):
    import pandas as pd

    return pd.Series(values)


def read_for_prediction(recipe: dict[str, Any], path: Path) -> tuple[np.ndarray, Any, list[str]]:
    """Rows of a new file (or image folder), prepared as the model's training data was
    (`recipe` is a PreparedData.preprocessing), all at once: the model's input, the rows'
    index (an image's path) and what was done to them that the user should hear of (imputed
    values, categories the model does not know), one line per column."""
    rows = RowsToPredict(recipe, path)
    chunks = list(rows.chunks())
    x = np.concatenate([x for x, _ in chunks])
    index = np.concatenate([np.asarray(index, dtype=object) for _, index in chunks])
    return x, index, rows.notes()


class RowsToPredict:
    """The rows of a file to predict (a table, an NPZ file, an image file or folder),
    prepared as in training a chunk at a time, so that a file larger than memory is predicted
    in pieces; then what was done to them, summed over the chunks."""

    def __init__(self, recipe: dict[str, Any], path: Path, rows: int | None = None):
        self.recipe, self.path = recipe, path
        self.rows = rows or streams.CHUNK_ROWS  # table rows a chunk
        self._counted: dict[str, dict[str, int]] = {"coerced": {}, "imputed": {}, "unknown": {}}

    def chunks(self) -> Iterator[tuple[np.ndarray, Any]]:
        """Each chunk: the model's input, and the rows' index (row numbers, or image names)."""
        recipe, path = self.recipe, self.path
        if recipe["kind"] == "array":
            if recipe.get("images") and (path.is_dir() or path.suffix.lower() in IMAGE_SUFFIXES):
                files, root = _image_files(path)
                for first in range(0, len(files), PREDICT_IMAGES):
                    chunk = files[first : first + PREDICT_IMAGES]
                    x, names = _decode_images(recipe["images"], chunk, root)
                    what = [f"channel {i}" for i in range(x.shape[-1])]
                    yield _standardized(x, recipe["mean"], recipe["std"], str(path), what), names
                return
            yield _npz_for_prediction(recipe, path)
            return
        if path.suffix.lower() not in (".csv", ".parquet", ".pq"):
            raise DataError(
                f"{path}: this model was trained on a table and takes a CSV or Parquet file "
                f"(.csv, .parquet or .pq) with the same columns, not a {shown(path.suffix)} file."
            )
        if not path.is_file():
            raise DataError(f"{path}: data file not found.")
        empty = True
        for _, frame in streams.table_chunks(path, self.rows):
            if frame.empty:  # a header alone reads as one chunk of no rows
                continue
            empty = False
            x, applied = _table_chunk_for_prediction(recipe, frame, path)
            if applied is not None:
                for kind, counts in self._counted.items():
                    for column, count in getattr(applied, kind).items():
                        counts[column] = counts.get(column, 0) + count
            yield x, frame.index
        if empty:
            raise DataError(f"{path}: the file has no rows.")

    def notes(self) -> list[str]:
        """What was done to the rows read so far, one line per column: text cells read as
        missing, values imputed, categories the model does not know."""
        return _prediction_notes(self.recipe, **self._counted)


def _table_chunk_for_prediction(recipe: dict[str, Any], frame: pd.DataFrame, path: Path):
    """One chunk of a table to predict, checked and prepared; the model's input and what
    tables.apply did (None for a model exported by 0.1.0)."""
    columns, target = recipe["columns"], recipe["target"]
    missing = [c for c in columns if c not in frame.columns]
    extra = [c for c in frame.columns if c not in columns and c != target]
    if missing or extra:
        raise DataError(
            f"{path}: the columns must be the {len(columns)} the model was trained on (listed "
            f"in its dlboost_model.json; the target {shown(target)} may be present and is "
            f"ignored). Missing: {_listed(missing) or 'none'}; extra: {_listed(extra) or 'none'}."
        )
    frame = frame[columns]
    if "version" not in recipe:  # exported by 0.1.0: no missing value, no type but its own
        return _legacy_table_rows(recipe, frame, path), None
    used = [c for c, kind in recipe["types"].items() if kind != "ignore"]
    if recipe["missing"] == "impute":
        _check_infinite(frame[used], str(path))
    else:  # the training rows had no missing value to learn a fill from
        fix = f"Drop or fill those rows before predicting (`data.missing: {recipe['missing']}`)"
        _check_finite(frame[used], str(path), fix=fix)
    _check_cells(frame[used], str(path))
    _check_kinds(frame, recipe["types"], recipe["coerce"], str(path), predicting=True)
    _check_types(frame, recipe["types"], str(path))
    return _table_rows(recipe, frame, str(path))


def _npz_for_prediction(recipe: dict[str, Any], path: Path) -> tuple[np.ndarray, Any]:
    if path.suffix.lower() != ".npz" and recipe.get("images"):
        raise DataError(
            f"{path}: this model was trained on images; give an image file "
            f"({', '.join(IMAGE_SUFFIXES)}), a folder of them (sub-folders included), or an "
            f"NPZ file with an array `x` of rows shaped {tuple(recipe['shape'])}."
        )
    arrays = _read_npz(path)
    if "x" not in arrays:
        raise DataError(
            f"{path}: this model takes an NPZ file with an array `x` of rows shaped "
            f"{tuple(recipe['shape'])}; found arrays: {_listed(list(arrays)) or 'none'}."
        )
    x = _rows(path, "x", arrays["x"])
    if list(x.shape[1:]) != recipe["shape"] or x.dtype.kind not in "iuf":
        raise DataError(
            f"{path}: array x holds {x.dtype} rows shaped {x.shape[1:]}; this model takes "
            f"numeric rows shaped {tuple(recipe['shape'])}, as it was trained on."
        )
    _check_rows_finite(path, "x", x)
    what = [f"array x, feature {i}" for i in range(x.shape[-1])]
    x = _standardized(x, recipe["mean"], recipe["std"], str(path), what)
    return x, np.arange(len(x))


def _table_rows(recipe: dict[str, Any], frame: pd.DataFrame, source: str):
    """Rows of a table as the model takes them (the recipe applied, numbers standardized with
    the training statistics, one-hot blocks after them), and what `tables.apply` did."""
    applied = tables.apply(recipe, frame, source)
    what = [f"column {shown(n)}" for n in applied.numeric_names]
    numeric = np.zeros((len(frame), 0), dtype="float32")
    if applied.numeric_names:
        numeric = _standardized(applied.numeric, recipe["mean"], recipe["scale"], source, what)
    return np.concatenate([numeric, applied.onehot.astype("float32")], axis=1), applied


def _prediction_notes(
    recipe: dict[str, Any],
    coerced: dict[str, int],
    imputed: dict[str, int],
    unknown: dict[str, int],
) -> list[str]:
    notes = []
    for column, count in coerced.items():
        notes.append(f"column {shown(column)}: {count} text cells read as missing")
    for column, count in imputed.items():
        if recipe["types"][column] != "categorical":
            notes.append(
                f"column {shown(column)}: {count} missing values imputed as in training "
                f"(the training median)"
            )
        else:
            notes.append(f"column {shown(column)}: {count} missing values as {tables.MISSING!r}")
    for column, count in unknown.items():
        where = (
            f"grouped as {tables.OTHER!r}"
            if column in recipe["other"]
            else "given no category (the training rows had no rare group to put them in)"
        )
        notes.append(
            f"column {shown(column)}: {count} values the model has no category for (unseen "
            f"in training, or too rare to keep) {where}"
        )
    return notes


def _image_files(path: Path) -> tuple[list[Path], Path]:
    """An image file, or every image under a folder (sorted), and the folder their names in
    the predictions are relative to."""
    files = [path] if path.is_file() else sorted(
        f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES
    )  # fmt: skip
    if not path.exists():
        raise DataError(f"{path}: no such image file or folder.")
    if not files:
        raise DataError(
            f"{path}: holds no image ({', '.join(IMAGE_SUFFIXES)} files, sub-folders included)."
        )
    return files, path.parent if path.is_file() else path


def _decode_images(
    settings: dict[str, Any], files: list[Path], root: Path
) -> tuple[np.ndarray, list[str]]:
    """`files` decoded, resized and colored as the training images were (Keras' own loader
    and resizing: bilinear, no crop), and their names relative to `root`."""
    import tensorflow as tf

    channels = 1 if settings["color_mode"] == "grayscale" else 3
    images = []
    for file in files:  # as keras.utils.image_dataset_from_directory loads each image
        try:
            image = tf.image.decode_image(
                tf.io.read_file(str(file)), channels=channels, expand_animations=False
            )
            image = tf.image.resize(image, tuple(settings["image_size"]), method="bilinear")
        except Exception as exc:  # TensorFlow's decoders raise their own types
            raise DataError(f"{file}: cannot be decoded as an image: {exc}") from None
        images.append(image.numpy())
    return np.stack(images), [str(f.relative_to(root)) for f in files]


def _legacy_table_rows(recipe: dict[str, Any], frame: pd.DataFrame, path: Path) -> np.ndarray:
    """Rows for a recipe of release 0.1.0: numeric columns standardized, others one-hot."""
    _check_finite(frame, str(path), fix="Drop or fill those rows before predicting")
    _check_cells(frame, str(path))
    blocks = []
    if recipe["numeric"]:
        numeric = frame[recipe["numeric"]]
        wrong = [c for c in numeric.columns if numeric[c].dtype.kind not in "iuf"]
        if wrong:
            raise DataError(
                f"{path}: columns {_listed(wrong)} were numbers in the training data but "
                f"hold text here; fix those values."
            )
        what = [f"column {shown(c)}" for c in recipe["numeric"]]
        raw = numeric.to_numpy(dtype="float64")
        blocks.append(_standardized(raw, recipe["mean"], recipe["scale"], str(path), what))
    for column, categories in recipe["categorical"].items():
        values = frame[column].to_numpy()
        # A category the training data never had gets all zeros, as OneHotEncoder does.
        blocks.append(np.stack([values == c for c in categories], axis=1))
    return np.concatenate(blocks, axis=1).astype("float32")


# Data larger than memory (docs/data.md): read in chunks each epoch through tf.data, never held
# whole. The recipe is the same one as above, fitted on a sample of the training rows.

# Distinct target values collected while streaming: more than this is no classification.
MOST_STREAMED_CLASSES = 10_000


def always_in_memory(spec: DataSpec) -> bool:
    """Built-in datasets and NPZ files: held in memory whatever their size, never streamed."""
    return bool(spec.builtin) or not (
        spec.images or Path(spec.path).suffix.lower() in TABLE_SUFFIXES
    )


def streaming(spec: DataSpec) -> tuple[bool, str]:
    """Whether `training.engine: auto` streams this data rather than hold it, and why, in words:
    a CSV or Parquet file (with its validation file) above the threshold on disk, or an image
    folder whose images, decoded at `data.image_size` as float32, are above it."""
    if always_in_memory(spec):
        return False, "built-in and NPZ data are held in memory"
    if spec.images:
        folder = Path(spec.images)
        if not folder.is_dir():
            return False, "the image folder is checked below"
        count = sum(1 for f in folder.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        channels = 1 if spec.color_mode == "grayscale" else 3
        size = count * int(np.prod(spec.image_size)) * channels * 4
        what = f"{count} images, decoded at data.image_size,"
    else:
        files = [Path(f) for f in (spec.path, spec.validation_path) if f]
        if not all(f.is_file() for f in files):
            return False, "the data file is checked below"
        size = sum(f.stat().st_size for f in files)
        what = "the data file" + ("s" if len(files) > 1 else "")
    limit = streams.threshold(machine_memory())
    set_by = (
        streams.THRESHOLD_VARIABLE
        if os.environ.get(streams.THRESHOLD_VARIABLE) is not None
        else f"1/{streams.MEMORY_SHARE} of this machine's memory"
    )
    above = size > limit
    return above, (
        f"{what} {_size(size)}, {'above' if above else 'within'} the streaming threshold of "
        f"{_size(limit)} ({set_by})"
    )


def _size(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if count < 1000 or unit == "TB":
            return f"{count:.0f} {unit}" if unit == "bytes" else f"{count:.3g} {unit}"
        count /= 1000
    raise AssertionError  # unreachable


TABLE_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass(frozen=True, kw_only=True)
class StreamedData(DataFacts):
    """Data read in chunks each epoch: what PreparedData says of the data, and tf.data
    pipelines of (x, y) batches instead of arrays. `reader` is a _TableReader or an
    _ImageReader; `training_sides` the rows trained on (the validation rows too for
    export-model --refit-all)."""

    input_shape: tuple[int, ...]
    n_train: int
    n_val: int
    class_counts: tuple[int, ...]  # training rows per class (class weights)
    reader: Any
    training_sides: tuple[str, ...] = ("train",)

    def summary(self) -> str:
        return f"{super().summary()}; streamed"

    def training_batches(self, batch_size: int, seed: int) -> Any:
        """Shuffled batches of the training rows, reshuffled each epoch (seeded)."""
        rows = self.n_train + (self.n_val if "validation" in self.training_sides else 0)
        return self.reader.dataset(self.training_sides, batch_size, seed, rows)

    def validation_batches(self, batch_size: int) -> Any:
        return self.reader.dataset(("validation",), batch_size, None, self.n_val)

    def with_validation_rows(self) -> StreamedData:
        """The same data whose training batches hold the validation rows too."""
        return dataclasses.replace(self, training_sides=("train", "validation"))

    @functools.cached_property
    def y_val(self) -> np.ndarray:
        """The validation rows' targets, as the model learns them (export-model scores on them)."""
        return self.reader.targets("validation")


def _rows_or_refuse(n_train: int, n_val: int, source: str, fraction: float) -> None:
    if n_train < MIN_TRAIN_ROWS or n_val < MIN_VALIDATION_ROWS:
        raise DataError(
            f"{source}: {n_train} training and {n_val} validation rows are too few (need at "
            f"least {MIN_TRAIN_ROWS} and {MIN_VALIDATION_ROWS}; `data.validation_split: "
            f"{fraction:g}`). Add rows, change `data.validation_split`, or give "
            f"`data.validation_path`."
        )


@functools.lru_cache(maxsize=2)
def prepare_streamed(spec: DataSpec, seed: int = 0) -> StreamedData:
    """The data a search space names, to be streamed: checked and counted in one pass, the
    recipe fitted on a sample. Cached per process."""
    if spec.images:
        return _stream_images(spec, seed)
    return _stream_table(spec, seed)


def _streamed_held_out(spec: DataSpec, seed: int) -> str:
    return (
        f"held out by a hash of each row's number in the file and the seed (seed {seed}; "
        f"`data.validation_split: {spec.validation_split:g}`, not stratified)"
    )


def _counted_from(start: int, check: Any, *args: Any) -> None:
    """Run `check` on a chunk; its row numbers count from the chunk's first row."""
    try:
        check(*args)
    except DataError as exc:
        if not start:
            raise
        raise DataError(
            f"{exc} Read in chunks: those row numbers count from row {start} of the file."
        ) from None


def _stream_table(spec: DataSpec, seed: int) -> StreamedData:
    """One pass over the file(s): the columns checked, each row's side counted, rows without
    a target (or, under `missing: drop`, with holes) counted, the class labels collected and
    the sample of training rows kept. Column kinds are inferred from the file's first chunk."""
    import pandas as pd

    path, target, source = Path(spec.path), spec.target, spec.path
    files = [(path, "split" if not spec.validation_path else "train")]
    if spec.validation_path:
        files.append((Path(spec.validation_path), "validation"))
    types: dict[str, str] | None = None
    notes: list[str] = []
    counts = {"train": 0, "validation": 0}
    no_target, no_target_rows, dropped = 0, [], 0
    labels: dict[Any, int] = {}  # target value -> training rows (classification)
    collecting = True
    sample = None
    for file, side in files:
        for start, chunk in streams.table_chunks(file):
            where = str(file)
            if types is None:
                _check_target(chunk, target, where)
                types, notes = tables.column_types(
                    chunk.drop(columns=[target]), dict(spec.columns), where
                )
                header = chunk.iloc[:0]
            elif start == 0:  # the validation file's first chunk
                _check_same_columns(header, chunk, where)
            _counted_from(start, _check_values, chunk, where, target, spec)
            _counted_from(start, _check_types, chunk, types, where)
            empty, holes = _missing_rows(chunk, target, types, spec.missing)
            no_target += int(empty.sum())
            no_target_rows += chunk.index[empty][: 5 - len(no_target_rows)].tolist()
            dropped += int(holes.sum())
            chunk = chunk[~(empty | holes)]
            rows = chunk.index.to_numpy()
            validation = (
                streams.held_out(rows, spec.validation_split, seed)
                if side == "split"
                else np.full(len(rows), side == "validation")
            )
            counts["validation"] += int(validation.sum())
            counts["train"] += int((~validation).sum())
            if collecting:
                found = chunk[target][~validation].value_counts()
                for value in chunk[target][validation].unique():
                    labels.setdefault(value, 0)
                for value, count in found.items():
                    labels[value] = labels.get(value, 0) + int(count)
                collecting = len(labels) <= MOST_STREAMED_CLASSES
            training = chunk[~validation]
            training = training.assign(_key=streams.sample_key(training.index.to_numpy(), seed))
            sample = training if sample is None else pd.concat([sample, training])
            if len(sample) > streams.SAMPLE_ROWS:
                sample = sample.nsmallest(streams.SAMPLE_ROWS, "_key")
    n_train, n_val = counts["train"], counts["validation"]
    _rows_or_refuse(n_train, n_val, source, spec.validation_split)
    sample = sample.sort_index().drop(columns=["_key"])
    if no_target:
        notes.append(_no_target_note(source, no_target_rows, no_target))
    if dropped:
        notes.append(_dropped_note(source, dropped))
    if all(kind == "ignore" for kind in types.values()):
        raise DataError(
            f"{source}: every column besides the target {shown(target)} is ignored "
            f"({_listed(list(types))}), so there is nothing to learn from. Declare the columns "
            f"to use in `data.columns` (numeric, categorical or datetime)."
        )
    y_sample = sample[target].to_numpy()
    task = spec.task or _infer_task(sample[target])
    if task != "regression" and y_sample.dtype.kind == "f" and np.all(y_sample == y_sample // 1):
        y_sample = y_sample.astype("int64")
    if task != "regression" and not collecting:
        raise DataError(
            f"{source}: target {shown(target)} holds more than {MOST_STREAMED_CLASSES} distinct "
            f"values, too many classes for a {task} task. Set `data.task: regression`."
        )
    features = sample.drop(columns=[target])
    _, _, names, recipe, fitted = _encode_features(
        features, features.iloc[:0], types, spec, source, source, sample=True
    )
    every_label = np.array(list(labels), dtype=object if y_sample.dtype.kind == "O" else None)
    if task != "regression" and every_label.dtype.kind == "f":
        every_label = every_label.astype("int64")
    _, _, class_labels, mean, std, transform = _encode_target(
        y_sample, every_label if task != "regression" else y_sample, task, source, target,
        source, spec.target_transform,
    )  # fmt: skip
    if transform == "log1p":
        fitted.append(
            f"target {shown(target)} learned as log(1 + y) (`data.target_transform: "
            f"{spec.target_transform}`, skewness {tables.skewness(y_sample):.2g} in the sample); "
            f"predictions and scores are in its own units"
        )
    recipe = {**recipe, "target": target, "target_transform": transform}
    index = {label: i for i, label in enumerate(class_labels)}
    class_counts = tuple(
        sum(n for value, n in labels.items() if index.get(value) == i) for i in range(len(index))
    )
    whole = len(sample) == n_train
    sampled = (
        f"the recipe (kinds, fills, categories, scaling) fitted on all {n_train} training rows"
        if whole
        else f"the recipe (kinds, fills, categories, scaling) fitted on a sample of "
        f"{len(sample)} of the {n_train} training rows, drawn evenly by a hash of the row "
        f"numbers"
    )
    reader = _TableReader(
        files=tuple((str(f), side) for f, side in files), target=target,
        fraction=spec.validation_split, seed=seed, missing=spec.missing,
        recipe=json.dumps(recipe), labels=tuple(class_labels), target_mean=mean,
        target_std=std, n_features=len(names),
    )  # fmt: skip
    validation_rows = (
        f"{spec.validation_path} (`data.validation_path`)"
        if spec.validation_path
        else f"{source}, {_streamed_held_out(spec, seed)}"
    )
    return StreamedData(
        task=task, n_outputs=len(class_labels) if task == "multiclass" else 1,
        feature_names=names, input_shape=(len(names),), n_train=n_train, n_val=n_val,
        class_counts=class_counts, reader=reader, class_labels=list(class_labels),
        target_mean=mean, target_std=std, preprocessing=recipe,
        validation_rows=validation_rows, target_transform=transform,
        notes=(f"{source}: streamed in chunks of {streams.CHUNK_ROWS} rows; {sampled}",
               *notes, *fitted),
    )  # fmt: skip


@dataclass(frozen=True)
class _TableReader:
    """A table's rows, chunk by chunk, prepared by its recipe (kept as JSON text: hashable,
    and the same object predict reads)."""

    files: tuple[tuple[str, str], ...]  # (file, "split" | "train" | "validation")
    target: str
    fraction: float
    seed: int
    missing: str
    recipe: str
    labels: tuple[Any, ...]
    target_mean: float
    target_std: float
    n_features: int

    def chunks(self, side: str):
        """(x, y) of each chunk's rows of `side` ("train" or "validation")."""
        recipe = json.loads(self.recipe)
        index = {label: i for i, label in enumerate(self.labels)}
        columns = recipe["columns"]
        for file, kind in self.files:
            if kind not in ("split", side):
                continue
            for _, chunk in streams.table_chunks(Path(file)):
                empty, holes = _missing_rows(chunk, self.target, recipe["types"], self.missing)
                chunk = chunk[~(empty | holes)]
                if kind == "split":
                    validation = streams.held_out(chunk.index.to_numpy(), self.fraction, self.seed)
                    chunk = chunk[validation if side == "validation" else ~validation]
                if not len(chunk):
                    continue
                x, _ = _table_rows(recipe, chunk[columns], file)
                yield x, self._targets(chunk[self.target], recipe, index)

    def _targets(self, values: pd.Series, recipe: dict[str, Any], index: dict) -> np.ndarray:
        if not self.labels:  # regression, standardized after its transform
            y = values.to_numpy(dtype="float64")
            if recipe["target_transform"] == "log1p":
                with np.errstate(invalid="ignore", divide="ignore"):
                    y = np.log1p(y)
            return ((y - self.target_mean) / self.target_std).astype("float32")
        import pandas as pd

        codes, distinct = pd.factorize(values)  # each distinct label looked up once
        return np.array([index[v] for v in distinct.tolist()], dtype="float32")[codes]

    def targets(self, side: str) -> np.ndarray:
        parts = [y for _, y in self.chunks(side)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype="float32")

    def dataset(self, sides: tuple[str, ...], batch_size: int, seed: int | None, rows: int):
        """A tf.data pipeline of (x, y) batches; with a seed, each chunk's rows shuffled anew
        each epoch (the chunks come in file order: a file cannot be shuffled whole)."""
        import itertools

        import tensorflow as tf

        epochs = itertools.count()

        def generate():
            rng = None if seed is None else np.random.default_rng([seed, next(epochs)])
            for side in sides:
                for x, y in self.chunks(side):
                    if rng is not None:
                        order = rng.permutation(len(x))
                        x, y = x[order], y[order]
                    yield x, y

        signature = (
            tf.TensorSpec((None, self.n_features), tf.float32),
            tf.TensorSpec((None,), tf.float32),
        )
        return (
            tf.data.Dataset.from_generator(generate, output_signature=signature)
            .rebatch(batch_size)
            .apply(tf.data.experimental.assert_cardinality(-(-rows // batch_size)))
            .prefetch(2)
        )


def _stream_images(spec: DataSpec, seed: int) -> StreamedData:
    """An image folder listed, not decoded: each image's side by a hash of its path."""
    import zlib

    folder = Path(spec.images)
    classes = _image_classes(folder)
    files: dict[str, list[tuple[str, int]]] = {"train": [], "validation": []}
    for label, name in enumerate(classes):
        images = sorted(f for f in (folder / name).rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        keys = np.array([zlib.crc32(str(f.relative_to(folder)).encode()) for f in images])
        validation = streams.held_out(keys, spec.validation_split, seed)
        for image, held in zip(images, validation, strict=True):
            files["validation" if held else "train"].append((str(image), label))
    n_train, n_val = len(files["train"]), len(files["validation"])
    _rows_or_refuse(n_train, n_val, str(folder), spec.validation_split)
    channels = 1 if spec.color_mode == "grayscale" else 3
    task = "binary" if len(classes) == 2 else "multiclass"
    recipe = {
        "kind": "array", "shape": [*spec.image_size, channels], "mean": [0.0] * channels,
        "std": [255.0] * channels, "target_transform": "none",
        "images": {"image_size": list(spec.image_size), "color_mode": spec.color_mode},
    }  # fmt: skip
    counts = np.bincount([label for _, label in files["train"]], minlength=len(classes))
    reader = _ImageReader(
        train=tuple(files["train"]), validation=tuple(files["validation"]),
        image_size=tuple(spec.image_size), channels=channels,
    )  # fmt: skip
    return StreamedData(
        task=task, n_outputs=len(classes) if task == "multiclass" else 1,
        feature_names=[f"x{i}" for i in range(channels)],
        input_shape=(*spec.image_size, channels), n_train=n_train, n_val=n_val,
        class_counts=tuple(int(c) for c in counts), reader=reader, class_labels=list(classes),
        preprocessing=recipe,
        validation_rows=f"{folder}, {_streamed_held_out(spec, seed).replace('row', 'image')}",
        notes=(f"{folder}: images decoded in batches each epoch (streamed), scaled to [0, 1]",),
    )  # fmt: skip


@dataclass(frozen=True)
class _ImageReader:
    """Image files decoded, resized and scaled in the pipeline, as Keras' loader does."""

    train: tuple[tuple[str, int], ...]
    validation: tuple[tuple[str, int], ...]
    image_size: tuple[int, int]
    channels: int

    def targets(self, side: str) -> np.ndarray:
        return np.array([label for _, label in getattr(self, side)], dtype="float32")

    def dataset(self, sides: tuple[str, ...], batch_size: int, seed: int | None, rows: int):
        import tensorflow as tf

        pairs = [pair for side in sides for pair in getattr(self, side)]
        paths = tf.constant([p for p, _ in pairs])
        labels = tf.constant([label for _, label in pairs], dtype=tf.float32)
        size, channels = self.image_size, self.channels

        def load(path, label):
            image = tf.image.decode_image(
                tf.io.read_file(path), channels=channels, expand_animations=False
            )
            image = tf.image.resize(image, size, method="bilinear")
            image.set_shape((*size, channels))
            return image / 255.0, label

        dataset = tf.data.Dataset.from_tensor_slices((paths, labels))
        if seed is not None:
            dataset = dataset.shuffle(len(pairs), seed=seed, reshuffle_each_iteration=True)
        return (
            dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
