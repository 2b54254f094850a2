"""Datasets: built-in ones by name, a user's CSV / Parquet / NPZ file, or a folder of images
(one sub-folder per class) -> prepared arrays.

Preparation (split, one-hot encoding, standardization fitted on the training split only) runs
once per process and is cached: every trial of a worker reuses the same arrays. Each prepared
dataset also carries its `preprocessing`, a JSON-able recipe that `predict` applies to new rows.
Only image folders import TensorFlow (Keras' image loader decodes them), and only in `prepare`.
"""

from __future__ import annotations

import difflib
import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from dlboost_search.errors import DataError

if TYPE_CHECKING:
    import pandas as pd

    from dlboost_search.spaces import DataSpec

# Datasets that packages ship inside their wheels (nothing is downloaded), with their task:
# scikit-learn's tables, digits as 8x8 images, and statsmodels' yearly sunspot numbers as
# windows of SUNSPOT_WINDOW years -> the next year.
BUILTIN_TASKS = {
    "diabetes": "regression",
    "breast_cancer": "binary",
    "digits": "multiclass",
    "wine": "multiclass",
    "iris": "multiclass",
    "digits_images": "multiclass",
    "sunspots": "regression",
}
SUNSPOT_WINDOW = 24  # two solar cycles
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

MIN_TRAIN_ROWS = 8
MIN_VALIDATION_ROWS = 2
# An integer target with at most this many distinct values is taken for classes.
MAX_INFERRED_CLASSES = 20


@dataclass(frozen=True)
class PreparedData:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
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

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    def summary(self) -> str:
        classes = f", {len(self.class_labels)} classes" if self.class_labels else ""
        return (
            f"{self.task}{classes}: {len(self.x_train)} training rows, "
            f"{len(self.x_val)} validation rows, "
            + (f"{len(self.feature_names)} features" if len(self.input_shape) == 1
               else f"each shaped {self.input_shape}")
        )  # fmt: skip


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
        if validation is not None:
            _check_same_columns(frame, validation, spec.validation_path)
        task = spec.task or _infer_task(frame[target])
    _check_finite(frame, source)
    if validation is not None:
        _check_finite(validation, spec.validation_path)
    return _prepare_frame(frame, validation, target, task, spec.validation_split, seed, source)


def task_and_shape(spec: DataSpec, seed: int = 0) -> tuple[str, tuple[int, ...]]:
    """The task and one row's shape, for checks before a search starts. An image folder is
    only listed (decoding it needs TensorFlow, which the command's own process avoids)."""
    if spec.images:
        classes = _image_classes(Path(spec.images))
        channels = 1 if spec.color_mode == "grayscale" else 3
        return ("binary" if len(classes) == 2 else "multiclass"), (*spec.image_size, channels)
    prepared = prepare(spec, seed)
    return prepared.task, prepared.input_shape


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
    return frame


def _check_target(frame: pd.DataFrame, target: str, source: str) -> str:
    if target in frame.columns:
        return target
    columns = [str(c) for c in frame.columns]
    close = difflib.get_close_matches(target, columns, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise DataError(
        f"{source}: unknown target column {target!r}.{hint} "
        f"Columns: {', '.join(columns[:30])}{' ...' if len(columns) > 30 else ''}. "
        f"Fix `data.target` in the search space."
    )


def _check_same_columns(train: pd.DataFrame, validation: pd.DataFrame, source: str) -> None:
    missing = [c for c in train.columns if c not in validation.columns]
    extra = [c for c in validation.columns if c not in train.columns]
    if missing or extra:
        raise DataError(
            f"{source}: the validation file must have the training file's columns; "
            f"missing: {missing or 'none'}, extra: {extra or 'none'}."
        )


def _check_finite(frame: pd.DataFrame, source: str) -> None:
    problems = []
    for column in frame.columns:
        values = frame[column]
        bad = values.isna()
        if values.dtype.kind in "fc":
            bad |= ~np.isfinite(values.to_numpy(dtype=float, na_value=np.nan))
        count = int(bad.sum())
        if count:
            rows = ", ".join(str(i) for i in np.flatnonzero(bad.to_numpy())[:5])
            problems.append(f"column {column!r} has {count} rows with NaN or inf (rows {rows}...)")
    if problems:
        raise DataError(
            f"{source}: {'; '.join(problems)}. Drop or fill those rows before the search "
            f"(row numbers count from 0, header excluded)."
        )


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
    try:
        return train_test_split(np.arange(n_rows), test_size=n_val, random_state=seed, stratify=y)
    except ValueError as exc:  # a class with a single row cannot be stratified
        raise DataError(
            f"{source}: cannot split into training and validation rows with every class "
            f"on both sides ({exc}). Every class needs at least 2 rows."
        ) from None


def _encode_target(y_train, y_val, task: str, source: str, target: str):
    """Targets as float32 arrays, plus class labels or the regression scale."""
    if task == "regression":
        if y_train.dtype.kind not in "iuf":
            raise DataError(
                f"{source}: target {target!r} is not numeric ({y_train.dtype}), so it cannot "
                f"be regressed. Set `data.task: binary` or `multiclass` for a class label."
            )
        mean, std = float(y_train.mean()), float(y_train.std())
        if std == 0:
            raise DataError(
                f"{source}: target {target!r} has a single value ({mean:g}) in the training "
                f"rows; there is nothing to learn. Check `data.target`."
            )
        scale = lambda y: ((y.astype("float64") - mean) / std).astype("float32")  # noqa: E731
        return scale(y_train), scale(y_val), [], mean, std
    labels = set(y_train.tolist()) | set(y_val.tolist())
    numeric = all(isinstance(v, (int, float)) for v in labels)
    labels = sorted(labels, key=None if numeric else str)
    if len(labels) < 2:
        raise DataError(
            f"{source}: target {target!r} has a single value ({labels[0]!r}); there is "
            f"nothing to learn. Check `data.target`."
        )
    if task == "binary" and len(labels) != 2:
        raise DataError(
            f"{source}: a binary task needs exactly 2 classes in {target!r}, found "
            f"{len(labels)}. Set `data.task: multiclass` or `regression`."
        )
    index = {label: i for i, label in enumerate(labels)}
    encode = lambda y: np.array([index[v] for v in y.tolist()], dtype="float32")  # noqa: E731
    return encode(y_train), encode(y_val), labels, 0.0, 1.0


def _prepare_frame(frame, validation, target, task, fraction, seed, source) -> PreparedData:
    y_all = frame[target].to_numpy()
    features = frame.drop(columns=[target])
    if features.shape[1] == 0:
        raise DataError(f"{source}: no feature columns besides the target {target!r}.")
    if validation is None:
        stratify = y_all if task != "regression" else None
        train_idx, val_idx = _split(len(frame), stratify, fraction, seed, source)
        x_train_df, x_val_df = features.iloc[train_idx], features.iloc[val_idx]
        y_train, y_val = y_all[train_idx], y_all[val_idx]
    else:
        x_train_df, y_train = features, y_all
        x_val_df, y_val = validation.drop(columns=[target]), validation[target].to_numpy()
    x_train, x_val, names, recipe = _encode_features(x_train_df, x_val_df)
    y_train, y_val, labels, mean, std = _encode_target(y_train, y_val, task, source, target)
    return PreparedData(
        x_train, y_train, x_val, y_val, task,
        n_outputs=len(labels) if task == "multiclass" else 1,
        feature_names=names, class_labels=labels, target_mean=mean, target_std=std,
        preprocessing={**recipe, "target": target},
    )  # fmt: skip


def _encode_features(train: pd.DataFrame, val: pd.DataFrame):
    """Standardize numeric columns and one-hot encode the others, fitted on `train` only."""
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numeric = [c for c in train.columns if train[c].dtype.kind in "iuf"]
    categorical = [c for c in train.columns if c not in numeric]
    transformer = ColumnTransformer(
        [
            ("numeric", StandardScaler(), numeric),
            (
                "categorical",
                OneHotEncoder(handle_unknown="ignore", sparse_output=False),
                categorical,
            ),
        ],
        verbose_feature_names_out=False,
    )
    x_train = transformer.fit_transform(train).astype("float32")
    x_val = transformer.transform(val).astype("float32")
    scaler = transformer.named_transformers_["numeric"]
    encoder = transformer.named_transformers_["categorical"]
    recipe = {
        "kind": "table",
        "columns": [str(c) for c in train.columns],
        "numeric": [str(c) for c in numeric],
        "mean": scaler.mean_.tolist() if numeric else [],
        "scale": scaler.scale_.tolist() if numeric else [],
        "categorical": {
            str(c): [v.item() if hasattr(v, "item") else v for v in cats]
            for c, cats in zip(categorical, getattr(encoder, "categories_", []), strict=True)
        },
    }
    return x_train, x_val, [str(n) for n in transformer.get_feature_names_out()], recipe


def _prepare_npz(path: Path, spec: DataSpec, seed: int) -> PreparedData:
    arrays = _read_npz(path)
    if {"x", "y"} <= arrays.keys():
        x, y = _checked_pair(path, arrays, "x", "y")
        task = spec.task or _infer_task(_series(y))
        train_idx, val_idx = _split(
            len(x), y if task != "regression" else None, spec.validation_split, seed, str(path)
        )
        x_train, x_val, y_train, y_val = x[train_idx], x[val_idx], y[train_idx], y[val_idx]
    elif {"x_train", "y_train", "x_val", "y_val"} <= arrays.keys():
        x_train, y_train = _checked_pair(path, arrays, "x_train", "y_train")
        x_val, y_val = _checked_pair(path, arrays, "x_val", "y_val")
        if x_train.shape[1:] != x_val.shape[1:]:
            raise DataError(
                f"{path}: x_train rows have shape {x_train.shape[1:]} but x_val rows have "
                f"{x_val.shape[1:]}; both must have the same features."
            )
        task = spec.task or _infer_task(_series(y_train))
    else:
        raise DataError(
            f"{path}: an NPZ file holds arrays `x` and `y` (split by `data.validation_split`) "
            f"or `x_train`, `y_train`, `x_val`, `y_val`; found: {', '.join(arrays) or 'none'}."
        )
    return _prepare_arrays(x_train, y_train, x_val, y_val, task, str(path))


def _prepare_arrays(x_train, y_train, x_val, y_val, task, source, scale=None) -> PreparedData:
    """Arrays of any row shape whose last axis is the features (or channels).

    Each feature is standardized with the training split's statistics, or divided by `scale`
    (images: their pixel range) when given."""
    if scale is None:
        flat = x_train.reshape(-1, x_train.shape[-1]).astype("float64")
        mean, std = flat.mean(axis=0), flat.std(axis=0)
        std[std == 0] = 1.0
    else:
        mean, std = np.zeros(x_train.shape[-1]), np.full(x_train.shape[-1], float(scale))
    x_train = ((x_train - mean) / std).astype("float32")
    x_val = ((x_val - mean) / std).astype("float32")
    y_train, y_val, labels, t_mean, t_std = _encode_target(y_train, y_val, task, source, "y")
    recipe = {
        "kind": "array",
        "shape": list(x_train.shape[1:]),
        "mean": mean.tolist(),
        "std": std.tolist(),
    }
    return PreparedData(
        x_train, y_train, x_val, y_val, task,
        n_outputs=len(labels) if task == "multiclass" else 1,
        feature_names=[f"x{i}" for i in range(x_train.shape[-1])],
        class_labels=labels, target_mean=t_mean, target_std=t_std, preprocessing=recipe,
    )  # fmt: skip


def _digits_images(spec: DataSpec, seed: int) -> PreparedData:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x, y = digits.images[..., np.newaxis], digits.target  # (1797, 8, 8, 1), pixels 0-16
    source = "built-in dataset 'digits_images'"
    train_idx, val_idx = _split(len(x), y, spec.validation_split, seed, source)
    return _prepare_arrays(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], "multiclass", source, scale=16.0
    )


def _sunspots(spec: DataSpec, seed: int) -> PreparedData:
    """Forecast next year's sunspot number from the previous SUNSPOT_WINDOW years. The split
    is chronological (the last years validate): shuffled windows would leak the future."""
    from statsmodels.datasets import sunspots

    series = sunspots.load_pandas().data["SUNACTIVITY"].to_numpy(dtype="float64")
    windows = np.lib.stride_tricks.sliding_window_view(series, SUNSPOT_WINDOW + 1)
    x, y = windows[:, :-1, np.newaxis], windows[:, -1]  # (samples, steps, 1 feature)
    n_val = int(np.ceil(len(x) * spec.validation_split))
    source = "built-in dataset 'sunspots'"
    return _prepare_arrays(x[:-n_val], y[:-n_val], x[-n_val:], y[-n_val:], "regression", source)


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
    return _prepare_arrays(
        x[train_idx], y[train_idx], x[val_idx], y[val_idx], task, str(folder), scale=255.0
    )


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: data file not found. Check `data.path` in the search space.")
    try:
        with open(path, "rb") as handle, np.load(handle, allow_pickle=False) as npz:
            return dict(npz)
    except Exception as exc:  # a corrupt zip, a pickled array, ...
        raise DataError(f"{path}: cannot be read as NPZ: {exc}") from None


def _checked_pair(path: Path, arrays: dict[str, np.ndarray], xs: str, ys: str):
    """Features and targets of one NPZ split, checked before anything uses them."""
    x, y = arrays[xs], arrays[ys]
    if x.ndim == 1:
        x = x.reshape(-1, 1)  # one feature per row
    if len(x) != len(y):
        raise DataError(f"{path}: {xs} has {len(x)} rows but {ys} has {len(y)}; they must match.")
    if x.dtype.kind not in "iuf":
        raise DataError(f"{path}: array {xs} must be numeric, got dtype {x.dtype}.")
    for name, values in ((xs, x), (ys, y)):
        if values.dtype.kind not in "iuf":
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            raise DataError(
                f"{path}: array {name} has {int(bad.sum())} rows with NaN or inf "
                f"(rows {', '.join(map(str, np.flatnonzero(bad)[:5]))}...). Drop or fill them."
            )
    return x, y


def _series(values: np.ndarray):
    import pandas as pd

    return pd.Series(values)


def read_for_prediction(recipe: dict[str, Any], path: Path) -> tuple[np.ndarray, Any]:
    """Rows of a new file, prepared as the model's training data was (`recipe` is a
    PreparedData.preprocessing). Returns the model's input and the file's row index."""
    if recipe["kind"] == "array":
        arrays = _read_npz(path)
        if "x" not in arrays:
            raise DataError(
                f"{path}: this model takes an NPZ file with an array `x` of rows shaped "
                f"{tuple(recipe['shape'])}; found arrays: {', '.join(arrays) or 'none'}."
            )
        x = arrays["x"]
        x = x.reshape(-1, 1) if x.ndim == 1 else x
        if list(x.shape[1:]) != recipe["shape"] or x.dtype.kind not in "iuf":
            raise DataError(
                f"{path}: array x holds {x.dtype} rows shaped {x.shape[1:]}; this model takes "
                f"numeric rows shaped {tuple(recipe['shape'])}, as it was trained on."
            )
        _checked_pair(path, {"x": x, "y": x}, "x", "y")  # NaN and inf checks
        mean, std = np.asarray(recipe["mean"]), np.asarray(recipe["std"])
        return ((x - mean) / std).astype("float32"), np.arange(len(x))
    frame = _read_table(path, "the input file")
    columns, target = recipe["columns"], recipe["target"]
    missing = [c for c in columns if c not in frame.columns]
    extra = [str(c) for c in frame.columns if c not in columns and c != target]
    if missing or extra:
        raise DataError(
            f"{path}: the columns must be the {len(columns)} the model was trained on (listed "
            f"in its dlboost_model.json; the target {target!r} may be present and is ignored). "
            f"Missing: {', '.join(missing) or 'none'}; extra: {', '.join(extra) or 'none'}."
        )
    frame = frame[columns]
    _check_finite(frame, str(path))
    blocks = []
    if recipe["numeric"]:
        numeric = frame[recipe["numeric"]]
        wrong = [c for c in numeric.columns if numeric[c].dtype.kind not in "iuf"]
        if wrong:
            raise DataError(
                f"{path}: columns {', '.join(wrong)} were numbers in the training data but "
                f"hold text here; fix those values."
            )
        mean, scale = np.asarray(recipe["mean"]), np.asarray(recipe["scale"])
        blocks.append((numeric.to_numpy(dtype="float64") - mean) / scale)
    for column, categories in recipe["categorical"].items():
        values = frame[column].to_numpy()
        # A category the training data never had gets all zeros, as OneHotEncoder does.
        blocks.append(np.stack([values == c for c in categories], axis=1))
    return np.concatenate(blocks, axis=1).astype("float32"), frame.index
