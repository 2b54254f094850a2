"""Tables as users keep them (issue 17): missing values, column types, dates, identifier
columns, capped categories, unseen categories at prediction, skewed targets, class weights.
Data preparation in this process (TensorFlow is not imported here), then two messy tables
through the real CLI: start, export-model and predict (slow)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dlboost_search.data import RowsToPredict, prepare, read_for_prediction
from dlboost_search.errors import DataError
from dlboost_search.spaces import DataSpec, space_from_dict
from dlboost_search.tables import MISSING, OTHER, skewness
from dlboost_search.training import class_weights


def table(path: Path, n: int = 40, seed: int = 0, **columns: Any) -> Path:
    """A CSV with a numeric feature `a`, a text feature `c` and a regression target `y`, with
    `columns` added or replaced."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(
        {
            "a": rng.normal(5.0, 2.0, n).round(3),
            "c": rng.choice(["red", "green", "blue"], n),
            "y": rng.normal(10.0, 3.0, n),
        }
    )
    for name, values in columns.items():
        frame[name] = values
    frame.to_csv(path, index=False)
    return path


def spec(path: Path, **fields: Any) -> DataSpec:
    return DataSpec(path=str(path), target=fields.pop("target", "y"), **fields)


def column(data, name: str) -> np.ndarray:
    """The prepared training values of feature `name`, back in raw units."""
    i = data.feature_names.index(name)
    recipe = data.preprocessing
    if name in recipe["numeric"]:
        j = recipe["numeric"].index(name)
        return data.x_train[:, i] * recipe["scale"][j] + recipe["mean"][j]
    return data.x_train[:, i]


def with_holes(values: list[Any], rows: list[int]) -> list[Any]:
    return [None if i in rows else v for i, v in enumerate(values)]


def test_a_missing_number_takes_the_training_median_and_a_was_missing_column(tmp_path):
    rng = np.random.default_rng(1)
    a = list(rng.normal(5.0, 2.0, 40).round(3))
    path = table(tmp_path / "t.csv", a=with_holes(a, [0, 1, 2, 3, 4, 5]))
    data = prepare(spec(path, validation_split=0.25), 0)
    recipe = data.preprocessing
    raw = pd.read_csv(path)
    # The median of the training rows only: the validation rows are left out of it.
    train_rows = raw.drop(index=[i for i in range(40) if i not in _train_index(data, raw)])
    assert recipe["fill"]["a"] == pytest.approx(train_rows["a"].median())
    assert "a.missing" in data.feature_names and recipe["indicators"] == ["a"]
    filled = column(data, "a")
    flags = column(data, "a.missing")
    assert np.allclose(filled[flags > 0.5], recipe["fill"]["a"], atol=1e-4)
    assert sum(flags > 0.5) + sum(raw["a"].isna()) - sum(flags > 0.5) == 6
    note = next(n for n in data.notes if n.startswith("column 'a'"))
    assert "6 (" in note and "training median" in note and "a.missing" in note


def _train_index(data, raw: pd.DataFrame) -> list[int]:
    """Rows of `raw` in the training split, found by their target (unique floats)."""
    y = data.y_train * data.target_std + data.target_mean
    return [i for i, v in enumerate(raw["y"]) if np.isclose(y, v, atol=1e-4).any()]


def test_a_column_without_missing_values_gets_no_was_missing_column(tmp_path):
    data = prepare(spec(table(tmp_path / "t.csv")), 0)
    assert not [name for name in data.feature_names if name.endswith(".missing")]
    assert data.notes == ()


def test_missing_text_is_a_category_of_its_own(tmp_path):
    c = with_holes(["red", "green", "blue"] * 13 + ["red"], [1, 4, 7, 10, 13, 16, 19, 22])
    data = prepare(spec(table(tmp_path / "t.csv", c=c)), 0)
    assert f"c_{MISSING}" in data.feature_names
    assert data.preprocessing["categorical"]["c"] == [MISSING, "blue", "green", "red"]
    assert column(data, f"c_{MISSING}").sum() > 0
    assert any("column 'c'" in n and f"category {MISSING!r}" in n for n in data.notes)


def test_rows_without_a_target_are_dropped_and_counted(tmp_path):
    rng = np.random.default_rng(2)
    y = with_holes(list(rng.normal(10, 3, 40)), [3, 17, 30])
    path = table(tmp_path / "t.csv", y=y)
    data = prepare(spec(path), 0)
    assert len(data.x_train) + len(data.x_val) == 37
    assert f"{path}: 3 rows without a target value dropped (rows 3, 17, 30" in data.notes[0]


def test_missing_drop_drops_the_rows_and_refuse_refuses_them(tmp_path):
    rng = np.random.default_rng(3)
    a = with_holes(list(rng.normal(5, 2, 40)), [0, 9])
    c = with_holes(["red", "green"] * 20, [9, 12])
    path = table(tmp_path / "t.csv", a=a, c=c)
    data = prepare(spec(path, missing="drop"), 0)
    assert len(data.x_train) + len(data.x_val) == 37  # rows 0, 9 and 12
    assert any("3 rows with a missing value dropped" in n for n in data.notes)
    assert "a.missing" not in data.feature_names
    with pytest.raises(DataError, match="column 'a' has 2 rows with NaN or inf"):
        prepare(spec(path, missing="refuse"), 0)


def test_dates_become_calendar_parts(tmp_path):
    days = pd.date_range("2024-01-29", periods=40, freq="D")
    path = table(tmp_path / "t.csv", day=days.strftime("%Y-%m-%d"))
    data = prepare(spec(path), 0)
    parts = ["day.year", "day.month", "day.day", "day.weekday"]
    assert [n for n in data.feature_names if n.startswith("day.")] == parts  # no hour: all 0
    raw = pd.read_csv(path)
    y = data.y_train * data.target_std + data.target_mean
    first = int(np.argmin(np.abs(raw["y"].to_numpy() - y[0])))
    stamp = days[first]
    assert [round(float(column(data, p)[0])) for p in parts] == [
        stamp.year,
        stamp.month,
        stamp.day,
        stamp.weekday(),
    ]
    # Times that vary add the hour; a column declared datetime is parsed in any common format.
    stamps = pd.date_range("2024-03-01 06:00", periods=40, freq="7h")
    path = table(tmp_path / "h.csv", at=stamps.strftime("%d %b %Y %H:%M"))
    data = prepare(spec(path, columns={"at": "datetime"}), 0)
    assert "at.hour" in data.feature_names


def test_a_date_column_with_a_cell_that_is_no_date_is_refused(tmp_path):
    days = list(pd.date_range("2024-01-01", periods=40, freq="D").strftime("%Y-%m-%d"))
    days[5] = "soon"
    path = table(tmp_path / "t.csv", day=days)
    with pytest.raises(DataError) as info:
        prepare(spec(path, columns={"day": "datetime"}), 0)
    assert "column 'day' is read as dates" in str(info.value)
    assert "row 5 'soon'" in str(info.value)


def test_stray_text_in_a_numeric_column_is_refused_naming_the_cells(tmp_path, run_cli):
    a = list(np.random.default_rng(4).normal(5, 2, 40).round(3))
    a[6], a[21] = "12a", "?"
    path = table(tmp_path / "t.csv", a=a)
    with pytest.raises(DataError) as info:
        prepare(spec(path), 0)
    message = str(info.value)
    assert "column 'a' holds numbers except in 2 rows: row 6 '12a', row 21 '?'" in message
    assert "declare the column in `data.columns`: 'a': numeric" in message
    assert "categorical keeps every value as a category" in message
    # Through the CLI: one paragraph, exit 2.
    space = {"name": "t", "data": {"path": str(path), "target": "y"}}
    (tmp_path / "space.yaml").write_text(__import__("yaml").safe_dump(space))
    done = run_cli("validate", str(tmp_path / "space.yaml"))
    assert done.returncode == 2
    assert "row 6 '12a'" in done.stderr and "Traceback" not in done.stderr


def test_a_column_declared_numeric_reads_stray_text_as_missing(tmp_path):
    a = list(np.random.default_rng(5).normal(5, 2, 40).round(3))
    a[6], a[21] = "12a", "?"
    path = table(tmp_path / "t.csv", a=a)
    data = prepare(spec(path, columns={"a": "numeric"}), 0)
    assert data.feature_names[:1] == ["a"] and "a.missing" in data.feature_names
    assert any(
        "2 (" in n and "text cells read as missing (declared numeric)" in n for n in data.notes
    )
    # Declared categorical, each value is a category of its own.
    data = prepare(spec(path, columns={"a": "categorical"}), 0)
    assert "a_12a" in data.feature_names


def test_an_identifier_column_is_ignored_and_said_so(tmp_path):
    path = table(tmp_path / "t.csv", id=[f"cust-{i:05d}" for i in range(40)])
    data = prepare(spec(path), 0)
    assert not [n for n in data.feature_names if n.startswith("id")]
    assert data.preprocessing["types"]["id"] == "ignore"
    assert data.notes[0].startswith("column 'id' ignored: every one of its 40 values is different")
    # Declared, it is used; `ignore` leaves out any column.
    assert "id_cust-00000" in prepare(spec(path, columns={"id": "categorical"}), 0).feature_names
    assert "a" not in prepare(spec(path, columns={"a": "ignore"}), 0).feature_names


def test_validate_prints_what_preparation_does(tmp_path, run_cli):
    a = list(np.random.default_rng(7).normal(5, 2, 40).round(3))
    a[3] = None
    path = table(tmp_path / "t.csv", a=a, id=[f"cust-{i:05d}" for i in range(40)])
    space = {"name": "t", "data": {"path": str(path), "target": "y"}}
    (tmp_path / "space.yaml").write_text(__import__("yaml").safe_dump(space))
    done = run_cli("validate", str(tmp_path / "space.yaml"))
    assert done.returncode == 0, done.stderr
    assert "data: column 'id' ignored" in done.stdout
    assert "data: column 'a': 1 (" in done.stdout and "missing values imputed" in done.stdout


def test_categories_beyond_max_categories_are_grouped(tmp_path):
    c = ["a"] * 12 + ["b"] * 10 + ["c"] * 8 + ["d"] * 6 + ["e"] * 4
    path = table(tmp_path / "t.csv", c=c)
    data = prepare(spec(path, max_categories=3, validation_split=0.1), 0)
    assert data.preprocessing["categorical"]["c"] == ["a", "b"]
    assert [n for n in data.feature_names if n.startswith("c_")] == ["c_a", "c_b", f"c_{OTHER}"]
    assert any("5 categories capped at 3" in n for n in data.notes)
    assert prepare(spec(path), 0).preprocessing["other"] == []  # 5 < 50: no cap


def test_prediction_imputes_and_reports_unseen_categories(tmp_path):
    c = ["a"] * 12 + ["b"] * 10 + ["c"] * 8 + ["d"] * 6 + ["e"] * 4
    path = table(tmp_path / "t.csv", c=c)
    capped = prepare(spec(path, max_categories=3), 0).preprocessing
    uncapped = prepare(spec(path), 0).preprocessing
    rows = pd.DataFrame({"a": [1.0, None, 3.0, 4.0], "c": ["a", "zebra", None, "zebra"]})
    rows.to_csv(tmp_path / "new.csv", index=False)
    x, index, notes = read_for_prediction(capped, tmp_path / "new.csv")
    assert list(index) == [0, 1, 2, 3] and x.shape == (4, 1 + 3)
    fill = (capped["fill"]["a"] - capped["mean"][0]) / capped["scale"][0]
    assert x[1, 0] == pytest.approx(fill, abs=1e-5)
    assert x[:, 1:].tolist() == [[1, 0, 0], [0, 0, 1], [0, 0, 1], [0, 0, 1]]
    assert "column 'a': 1 missing values imputed as in training (the training median)" in notes
    assert any(n.startswith("column 'c': 3 values the model has no category for") for n in notes)
    assert any(f"grouped as {OTHER!r}" in n for n in notes)
    # A chunk at a time (as predict reads a file larger than memory): the same rows, and the
    # same notes, counted over both chunks.
    rows = RowsToPredict(capped, tmp_path / "new.csv", rows=3)
    chunks = list(rows.chunks())
    assert [list(index) for _, index in chunks] == [[0, 1, 2], [3]]
    assert np.array_equal(np.concatenate([x for x, _ in chunks]), x)
    assert rows.notes() == notes
    # Without a rare group, an unknown value has no category (all its columns 0), said so.
    x, _, notes = read_for_prediction(uncapped, tmp_path / "new.csv")
    assert x[1, 1:].tolist() == [0.0] * 5
    assert any("given no category" in n for n in notes)


def test_the_target_of_a_skewed_positive_regression_is_learned_as_its_log(tmp_path):
    rng = np.random.default_rng(6)
    prices = np.exp(rng.normal(5.0, 1.0, 200)).round(2)
    assert skewness(prices) > 1
    path = table(tmp_path / "t.csv", n=200, y=prices)
    data = prepare(spec(path), 0)
    assert data.target_transform == "log1p" == data.preprocessing["target_transform"]
    back = np.expm1(data.y_train * data.target_std + data.target_mean)
    assert np.abs(back[:, None] - prices[None, :]).min(axis=1).max() < 0.01
    assert any("learned as log(1 + y)" in n for n in data.notes)
    assert prepare(spec(path, target_transform="none"), 0).target_transform == "none"
    # Symmetric, or not positive: auto leaves it; log takes any target above -1.
    assert prepare(spec(table(tmp_path / "n.csv")), 0).target_transform == "none"
    shifted = table(tmp_path / "s.csv", n=200, y=prices - 50)
    assert prepare(spec(shifted), 0).target_transform == "none"
    with pytest.raises(DataError, match="needs values above -1"):
        prepare(spec(shifted, target_transform="log"), 0)


def test_balanced_class_weights():
    y = np.array([0] * 95 + [1] * 5)
    weights = class_weights(y, "balanced")
    assert weights.tolist() == pytest.approx([100 / (2 * 95), 100 / (2 * 5)])
    assert (weights[y] * 1).sum() == pytest.approx(100)  # each class weighs half the rows
    assert class_weights(y, "none") is None


def test_the_new_keys_are_validated():
    def problem(**data: Any) -> str:
        with pytest.raises(Exception) as info:
            space_from_dict({"name": "t", "data": {"path": "t.csv", "target": "y", **data}}, "s")
        return str(info.value)

    assert "data.missing" in problem(missing="fill")
    assert "data.columns.a" in problem(columns={"a": "number"})
    assert "data.max_categories" in problem(max_categories=1)
    assert "'y' is the target, not a feature" in problem(columns={"y": "numeric"})
    assert "column kinds are for CSV and Parquet tables" in problem(
        path="x.npz", target=None, columns={"a": "numeric"}
    )


def test_a_study_stored_before_these_keys_prepares_its_data_as_it_did(storage):
    """Release 0.1.0 stored no target_transform or max_categories: its trials were scored on
    the target as it is and every category, and go on so; a new study gets the new defaults."""
    import optuna

    from conftest import TINY_SPACE
    from dlboost_search import records
    from dlboost_search.errors import StudyError
    from dlboost_search.study import as_stored, create_or_check, space_of

    space = space_from_dict(TINY_SPACE, "test")
    study = create_or_check(space, storage)
    stored = records.study_record(study, records.SPEC)
    for key in ("target_transform", "max_categories", "missing", "columns"):
        del stored["space"]["data"][key]
    records.set_study_record(study, records.SPEC, stored)
    study = optuna.load_study(study_name=space.name, storage=storage)
    assert (space_of(study).data.target_transform, space_of(study).data.max_categories) == (
        "none", None)  # fmt: skip
    create_or_check(space, storage)  # the same YAML: no StudyError
    assert as_stored(space, study).data.target_transform == "none"
    assert as_stored(space, study).data.max_categories is None
    data = {**TINY_SPACE["data"], "target_transform": "auto"}
    explicit = space_from_dict({**TINY_SPACE, "data": data}, "t")
    with pytest.raises(StudyError, match=r"data.target_transform: 'none' -> 'auto'"):
        create_or_check(explicit, storage)
    fresh = space_from_dict({**TINY_SPACE, "name": "fresh"}, "test")
    assert space_of(create_or_check(fresh, storage)).data.target_transform == "auto"


# ---------------------------------------------------------------------------------------------
# End to end, through the CLI: start, export-model and predict on a table as users keep them.


def messy_table(n: int, seed: int, target: Any) -> pd.DataFrame:
    """Missing numbers and text, a numeric column with one stray text cell, dates, an
    identifier column, and `target`."""
    rng = np.random.default_rng(seed)
    income = rng.normal(50, 10, n).round(2).astype(object)
    income[7] = "n/a?"
    frame = pd.DataFrame(
        {
            "customer": [f"c{i:05d}" for i in range(n)],
            "age": with_holes(list(rng.normal(40, 10, n).round(1)), [2, 11, 23, 40]),
            "income": income,
            "city": with_holes(list(rng.choice(["paris", "rome", "oslo"], n)), [5, 19, 33]),
            "signup": pd.date_range("2023-01-01", periods=n, freq="31h").strftime("%Y-%m-%d %H:%M"),
            "target": target,
        }
    )
    return frame


def new_rows(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows to predict: missing numbers and text (rows 2 and 5 had them already, rows 0 and 1
    get one more), a city never seen in training (rows 2 and 3)."""
    rows = frame.drop(columns=["target"]).iloc[:6].copy()
    rows.loc[rows.index[0], "age"] = None
    rows.loc[rows.index[1], "city"] = None
    rows.loc[rows.index[2:4], "city"] = "lima"
    return rows


def run_table_study(tmp_path: Path, run_cli, frame: pd.DataFrame, changes: dict[str, Any]):
    frame.to_csv(tmp_path / "table.csv", index=False)
    new_rows(frame).to_csv(tmp_path / "new.csv", index=False)
    space = {
        "name": "messy",
        "data": {"path": "table.csv", "target": "target", "columns": {"income": "numeric"}},
        "training": {"max_epochs": 2, "batch_size": 32, "early_stopping": {"patience": 2}},
        "search": {"trials": 1, "pruner": "none", "seed": 0},
        "params": {"units": 8, "layers": 1},
    }
    for key, value in changes.items():
        space[key] = {**space.get(key, {}), **value}
    (tmp_path / "space.yaml").write_text(__import__("yaml").safe_dump(space))
    storage = f"sqlite:///{tmp_path / 'studies.db'}"
    started = run_cli("start", "space.yaml", "--storage", storage, timeout=600)
    assert started.returncode == 0, started.stderr
    exported = run_cli("export-model", "messy", "--storage", storage, "--out", "model", timeout=600)
    assert exported.returncode == 0, exported.stderr
    predicted = run_cli("predict", "model", "new.csv", "--out", "predictions.csv", timeout=600)
    assert predicted.returncode == 0, predicted.stderr
    card = (tmp_path / "model" / "model_card.md").read_text()
    return started.stdout, card, predicted.stdout, pd.read_csv(tmp_path / "predictions.csv")


def assert_prepared_as_said(started: str, card: str, predicted: str) -> None:
    for said in (started, card):
        assert "column 'customer' ignored: every one of its" in said
        assert "column 'age': 4 (" in said and "training median" in said
        assert "column 'income': 1 (" in said and "text cells read as missing" in said
        assert "column 'city': 3 (" in said and "'(missing)'" in said
        assert "column 'signup': dates, as year, month, day, weekday, hour" in said
    assert "column 'age': 2 missing values imputed as in training" in predicted
    assert "column 'city': 2 values the model has no category for" in predicted
    assert "column 'city': 2 missing values as '(missing)'" in predicted


@pytest.mark.slow
def test_a_messy_imbalanced_table_end_to_end(tmp_path, run_cli):
    target = np.array(["no"] * 95 + ["yes"] * 5)
    np.random.default_rng(9).shuffle(target)
    frame = messy_table(100, 9, target)
    imbalance = {
        "objective": {"metric": "val_balanced_accuracy"},
        "training": {"class_weight": "balanced"},
    }
    started, card, predicted, predictions = run_table_study(tmp_path, run_cli, frame, imbalance)
    assert_prepared_as_said(started, card, predicted)
    assert "val_balanced_accuracy" in card
    assert list(predictions.columns) == ["prediction", "probability_yes"]
    assert len(predictions) == 6 and set(predictions["prediction"]) <= {"no", "yes"}
    assert predictions["probability_yes"].between(0, 1).all()


@pytest.mark.slow
def test_a_messy_table_with_a_skewed_target_end_to_end(tmp_path, run_cli):
    prices = np.exp(np.random.default_rng(10).normal(5.0, 1.0, 100)).round(2)
    frame = messy_table(100, 10, prices)
    frame.loc[[13, 57], "target"] = None
    started, card, predicted, predictions = run_table_study(tmp_path, run_cli, frame, {})
    assert_prepared_as_said(started, card, predicted)
    assert "table.csv: 2 rows without a target value dropped (rows 13, 57" in started
    assert "learned as log(1 + y)" in started and "learned as log(1 + y)" in card
    meta = json.loads((tmp_path / "model" / "dlboost_model.json").read_text())
    assert meta["target_transform"] == "log1p"
    # Predictions in the target's units: log(1 + y) undone, so positive prices.
    assert len(predictions) == 6 and (predictions["prediction"] > 0).all()
    assert "(in the target's units)" in card
