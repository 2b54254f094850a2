"""A table's preprocessing recipe: column types, missing values, dates and categories, fitted on
the training rows and applied to any rows, as a JSON-able mapping (`predict` reads it back from
dlboost_model.json; nothing in it runs code).

    types       each feature column's kind: given in `data.columns` or inferred (`column_types`)
    missing     impute: a numeric column takes the training median, plus a `COLUMN.missing`
                column of 0/1 when the training rows had missing values there; a text column gets
                the category "(missing)"; drop: the rows go before the split; refuse: an error
    dates       year, month, day, weekday, and hour when the training rows' times vary
    categories  the `max_categories` most frequent values of a text column; rarer ones go to
                "(other)", and so do values new rows bring that the recipe has no category for
                (in a column without "(other)", they get no category: all its columns 0)

`fit` returns the recipe; `apply` turns rows into the numeric block (raw, before the
standardization data.py fits) and the one-hot block, and counts what it filled or mapped.
Tables written by release 0.1.0 have a recipe without "version": data.py reads those as before.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from dlboost_search.errors import DataError, shown

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "MISSING",
    "OTHER",
    "Applied",
    "apply",
    "column_types",
    "dates",
    "fit",
    "skewness",
    "stray_text",
    "text_cells",
]

RECIPE_VERSION = 2
MISSING = "(missing)"
OTHER = "(other)"
# A text column whose values read as numbers at least this often, but not always, is a numeric
# column with a few typos: encoded as categories, it would become one column per distinct value.
NUMERIC_TEXT_SHARE = 0.9
# Text read as a date without being declared one: ISO 8601, 2024-05-31 or 2024-05-31 14:05[:09].
ISO_DATE = re.compile(r"^\d{4}-\d{1,2}-\d{1,2}(?:[ T]\d{1,2}:\d{2}(?::\d{2}(?:\.\d+)?)?)?$")
DATE_PARTS = ("year", "month", "day", "weekday")


def stray_text(values: pd.Series) -> np.ndarray | None:
    """Rows of a text column that is almost all numbers which are not numbers, or None."""
    present = int(values.notna().sum())
    if values.dtype.kind != "O" or not present:
        return None
    text = text_cells(values)
    share = 1 - text.sum() / present
    if text.any() and share >= NUMERIC_TEXT_SHARE:
        return np.flatnonzero(text)
    return None


def text_cells(values: pd.Series) -> np.ndarray:
    """Which cells of a column hold something other than a number (missing cells do not)."""
    if values.dtype.kind != "O":
        return np.zeros(len(values), dtype=bool)
    return np.isnan(_numbers(values)) & values.notna().to_numpy()


def column_types(
    frame: pd.DataFrame, given: dict[str, str], source: str
) -> tuple[dict[str, str], list[str]]:
    """Each feature column's kind (numeric, categorical, datetime, ignore), and the notes on
    what was inferred that a user should hear of (identifier columns left out)."""
    unknown = [c for c in given if c not in frame.columns]
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], list(frame.columns), n=1)
        hint = f" Did you mean {shown(close[0])}?" if close else ""
        raise DataError(
            f"{source}: `data.columns` names {', '.join(map(shown, unknown))}, which the file "
            f"does not have.{hint} Columns: {', '.join(map(str, list(frame.columns)[:30]))}."
        )
    types, notes = {}, []
    for column in frame.columns:
        if column in given:
            types[column] = given[column]
            continue
        values = frame[column]
        kind = values.dtype.kind
        if kind in "iuf":
            types[column] = "numeric"
        elif kind == "M":
            types[column] = "datetime"
        elif kind != "O":
            types[column] = "categorical"  # booleans, pandas categoricals
        else:
            present = values.dropna()
            if len(present) and present.map(lambda v: isinstance(v, str)).all() and (
                present.str.match(ISO_DATE).all()
            ):  # fmt: skip
                types[column] = "datetime"
            elif len(present) > 2 and present.is_unique and len(present) == len(values):
                types[column] = "ignore"
                notes.append(
                    f"column {shown(column)} ignored: every one of its {len(values)} values is "
                    f"different text, as in an identifier, which tells nothing about other rows "
                    f"(declare it in `data.columns` as categorical to use it)"
                )
            else:
                types[column] = "categorical"
    return types, notes


def dates(values: pd.Series, column: str, source: str) -> pd.Series:
    """A datetime column's values as pandas timestamps (missing: NaT); text that is not a date
    is refused, naming the cells."""
    import pandas as pd

    if values.dtype.kind == "M":
        return values.dt.tz_localize(None) if getattr(values.dt, "tz", None) else values
    parsed = pd.to_datetime(values.astype("string"), errors="coerce", format="mixed")
    bad = np.flatnonzero((parsed.isna() & values.notna()).to_numpy())
    if len(bad):
        cells = ", ".join(f"row {i} {shown(values.iloc[i], 40)}" for i in bad[:5])
        raise DataError(
            f"{source}: column {shown(column)} is read as dates (`data.columns` or its values) "
            f"but {len(bad)} cells are not dates: {cells}{'...' if len(bad) > 5 else ''} (row "
            f"numbers count from 0, header excluded). Fix those cells, or declare the column "
            f"categorical in `data.columns`."
        )
    return parsed.dt.tz_localize(None) if getattr(parsed.dt, "tz", None) else parsed


def _date_parts(stamps: pd.Series, parts: list[str]) -> dict[str, np.ndarray]:
    found = {}
    for part in parts:
        values = getattr(stamps.dt, "day_of_week" if part == "weekday" else part)
        found[part] = values.to_numpy(dtype="float64", na_value=np.nan)
    return found


def _numbers(values: pd.Series) -> np.ndarray:
    """A numeric column as float64, text cells (declared numeric) as missing."""
    import pandas as pd

    if values.dtype.kind in "iufb":
        return values.to_numpy(dtype="float64", na_value=np.nan)
    # Each distinct text parsed once: parsing is over 20 times slower per cell than finding the
    # distinct values, and a text column repeats a few values (streamed chunks check them all).
    codes, distinct = pd.factorize(values)
    numbers = pd.to_numeric(pd.Series(distinct, dtype=object), errors="coerce")
    numbers = numbers.to_numpy(dtype="float64", na_value=np.nan)
    return np.where(codes < 0, np.nan, numbers[codes] if len(numbers) else np.nan)


def _numeric_features(recipe: dict[str, Any], frame: pd.DataFrame, source: str):
    """(feature name, its column, raw float64 values with NaN where missing), in order."""
    features = []
    for column, kind in recipe["types"].items():
        if kind == "numeric":
            features.append((column, column, _numbers(frame[column])))
        elif kind == "datetime":
            parts = _date_parts(dates(frame[column], column, source), recipe["dates"][column])
            features += [(f"{column}.{part}", column, v) for part, v in parts.items()]
    return features


def _text(values: pd.Series) -> np.ndarray:
    """A categorical column's values as text (missing: None), the form categories are kept in:
    a whole number reads the same whether its column was read as integers or as floats."""
    import pandas as pd

    codes, distinct = pd.factorize(values)  # missing: code -1, the None appended last
    labels = np.array([_label(v) for v in pd.Series(distinct).tolist()] + [None], dtype=object)
    return labels[codes]


def _label(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def fit(
    train: pd.DataFrame,
    types: dict[str, str],
    *,
    missing: str,
    max_categories: int | None,
    source: str,
) -> dict[str, Any]:
    """The recipe, fitted on the training rows `train` (feature columns only)."""
    recipe: dict[str, Any] = {
        "kind": "table",
        "version": RECIPE_VERSION,
        "columns": [str(c) for c in train.columns],
        "types": {str(c): k for c, k in types.items()},
        "missing": missing,
        "dates": {},
        "fill": {},
        "indicators": [],
        "categorical": {},
        "other": [],
    }
    for column, kind in types.items():
        if kind == "datetime":
            stamps = dates(train[column], column, source)
            hours = stamps.dt.hour.dropna()
            recipe["dates"][column] = list(DATE_PARTS) + (["hour"] if hours.nunique() > 1 else [])
    for name, column, values in _numeric_features(recipe, train, source):
        if np.isnan(values).any() and column not in recipe["indicators"]:
            recipe["indicators"].append(str(column))
        present = values[~np.isnan(values)]
        if not len(present):
            raise DataError(
                f"{source}: column {shown(column)} has no value in the training "
                f"rows; there is nothing to learn from it. Remove it, or declare it `ignore` "
                f"in `data.columns`."
            )
        recipe["fill"][name] = float(np.median(present))
    for column, kind in types.items():
        if kind != "categorical":
            continue
        values = _text(train[column])
        labels = [MISSING if v is None else v for v in values.tolist()]
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        ordered = sorted(counts, key=lambda c: (-counts[c], c))
        if max_categories is not None and len(ordered) > max_categories:
            kept = ordered[: max_categories - 1]
            recipe["other"].append(str(column))
        else:
            kept = ordered
        recipe["categorical"][str(column)] = sorted(kept)
    return recipe


@dataclass
class Applied:
    """What `apply` made of some rows: the raw numeric block (before standardization), its
    feature names, the one-hot block and its names, and what it filled or mapped per column."""

    numeric: np.ndarray
    numeric_names: list[str]
    onehot: np.ndarray
    onehot_names: list[str]
    imputed: dict[str, int] = field(default_factory=dict)  # column -> cells filled
    # column -> values the recipe has no category for: too rare to keep, or never seen in
    # training (in new rows); they go to "(other)", or to no category where there is none
    unknown: dict[str, int] = field(default_factory=dict)
    coerced: dict[str, int] = field(default_factory=dict)  # column -> text cells read as missing


def apply(recipe: dict[str, Any], frame: pd.DataFrame, source: str) -> Applied:
    """`frame`'s feature columns prepared by `recipe`. Missing values left in `frame` (under
    `missing: drop` or `refuse`, whose rows are checked before) are filled as under impute."""
    columns: list[np.ndarray] = []
    names: list[str] = []
    imputed: dict[str, int] = {}
    coerced: dict[str, int] = {}
    for column, kind in recipe["types"].items():
        if kind == "numeric" and frame[column].dtype.kind == "O":
            text = int(text_cells(frame[column]).sum())
            if text:
                coerced[column] = text
    for name, column, values in _numeric_features(recipe, frame, source):
        holes = np.isnan(values)
        if holes.any():
            imputed[column] = max(imputed.get(column, 0), int(holes.sum()))
            values = np.where(holes, recipe["fill"][name], values)
        columns.append(values)
        names.append(name)
    for column in recipe["indicators"]:
        holes = frame[column].isna().to_numpy()
        if recipe["types"][column] == "numeric":  # text cells declared numeric are missing
            holes = np.isnan(_numbers(frame[column]))
        columns.append(holes.astype("float64"))
        names.append(f"{column}.missing")
    onehot: list[np.ndarray] = []
    onehot_names: list[str] = []
    unknown: dict[str, int] = {}
    for column, categories in recipe["categorical"].items():
        values = _text(frame[column])
        holes = np.equal(values, None)
        labels = np.where(holes, MISSING, values).astype(object)
        known = np.isin(labels, np.array(categories, dtype=object))
        if holes.any() and MISSING in categories:
            imputed[column] = int(holes.sum())
        if (~known).any():
            unknown[column] = int((~known).sum())
        block = [labels == c for c in categories]
        block_names = [f"{column}_{c}" for c in categories]
        if column in recipe["other"]:
            block.append(~known)
            block_names.append(f"{column}_{OTHER}")
        onehot.append(np.stack(block, axis=1).astype("float64"))
        onehot_names += block_names
    n = len(frame)
    return Applied(
        numeric=np.stack(columns, axis=1) if columns else np.zeros((n, 0)),
        numeric_names=names,
        onehot=np.concatenate(onehot, axis=1) if onehot else np.zeros((n, 0)),
        onehot_names=onehot_names,
        imputed=imputed,
        unknown=unknown,
        coerced=coerced,
    )


def skewness(values: np.ndarray) -> float:
    """The sample skewness (Fisher-Pearson, not bias-corrected) of `values`: 0 when symmetric,
    above 1 when a long tail reaches to the right."""
    values = np.asarray(values, dtype="float64")
    with np.errstate(all="ignore"):  # values near float64's limit: not finite, not skewed
        spread = values.std()
        if not np.isfinite(spread) or spread == 0:
            return 0.0
        skew = float(np.mean(((values - values.mean()) / spread) ** 3))
    return skew if np.isfinite(skew) else 0.0
