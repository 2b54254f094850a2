"""Data preparation: built-in datasets and the user's CSV / Parquet / NPZ files -> float32 arrays,
split, encoded and standardized on the training split only; every unusable file gets a DataError
that names the file and the problem. No TensorFlow is imported here.

`prepare` is cached on (spec, seed): each test uses its own files under tmp_path, and the tests
of determinism call the uncached function (`prepare.__wrapped__`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dlboost_search.data import BUILTIN_TASKS, prepare, read_for_prediction
from dlboost_search.errors import DataError
from dlboost_search.spaces import DataSpec, space_from_dict


def file_spec(path: Path, target: str | None = "y", **fields: Any) -> DataSpec:
    return DataSpec(path=str(path), target=target, **fields)


def write_csv(path: Path, columns: dict[str, Any]) -> Path:
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def regression_columns(n: int = 40, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    return {
        "a": rng.normal(5.0, 2.0, n),
        "b": rng.integers(0, 100, n),
        "y": rng.normal(10.0, 3.0, n),
    }


def data_error(spec: DataSpec, seed: int = 0) -> str:
    with pytest.raises(DataError) as info:
        prepare(spec, seed)
    return str(info.value)


def assert_standardized(x: np.ndarray) -> None:
    """Each feature has mean 0 and std 1 (or std 0 for a constant feature)."""
    flat = x.reshape(-1, x.shape[-1]).astype("float64")
    np.testing.assert_allclose(flat.mean(axis=0), 0.0, atol=1e-4)
    std = flat.std(axis=0)
    assert np.all(np.isclose(std, 1.0, atol=1e-4) | np.isclose(std, 0.0, atol=1e-6)), std


# ---------------------------------------------------------------------------------------------
# Built-in datasets

BUILTINS = [
    # name, task, rows, features, n_outputs, classes
    ("diabetes", "regression", 442, 10, 1, 0),
    ("breast_cancer", "binary", 569, 30, 1, 2),
    ("digits", "multiclass", 1797, 64, 10, 10),
    ("wine", "multiclass", 178, 13, 3, 3),
    ("iris", "multiclass", 150, 4, 3, 3),
]
# Images and sequences, whose rows are not flat: tested in test_families.py.
ARRAY_BUILTINS = {"digits_images": "multiclass", "sunspots": "regression"}


def test_builtin_table_matches_the_module():
    assert {name: task for name, task, *_ in BUILTINS} | ARRAY_BUILTINS == BUILTIN_TASKS


@pytest.mark.parametrize(("name", "task", "rows", "features", "n_outputs", "classes"), BUILTINS)
def test_builtin_dataset(
    name: str, task: str, rows: int, features: int, n_outputs: int, classes: int
):
    space = space_from_dict({"name": "t", "data": {"builtin": name}}, "src")
    data = prepare(space.data, 0)
    n_val = math.ceil(rows * 0.2)
    assert data.task == task
    assert data.n_outputs == n_outputs
    assert data.x_train.shape == (rows - n_val, features)
    assert data.x_val.shape == (n_val, features)
    assert data.y_train.shape == (rows - n_val,) and data.y_val.shape == (n_val,)
    assert data.input_shape == (features,)
    assert len(data.feature_names) == features
    for array in (data.x_train, data.x_val, data.y_train, data.y_val):
        assert array.dtype == np.float32
        assert np.isfinite(array).all()
    # Standardization is fitted on the training split only.
    assert_standardized(data.x_train)
    assert not np.allclose(data.x_val.mean(axis=0), 0.0, atol=1e-3)
    assert not np.allclose(data.x_val.std(axis=0), 1.0, atol=1e-3)
    if task == "regression":
        assert data.class_labels == []
        assert abs(float(data.y_train.mean())) < 1e-4
        assert float(data.y_train.std()) == pytest.approx(1.0, abs=1e-4)
        assert data.target_std > 1.0  # the raw target is a score in the hundreds
    else:
        assert data.class_labels == list(range(classes))
        # Stratified: every class on both sides, in about the same proportion.
        assert set(np.unique(data.y_train)) == set(np.unique(data.y_val)) == set(range(classes))
        train_share = np.bincount(data.y_train.astype(int)) / len(data.y_train)
        val_share = np.bincount(data.y_val.astype(int)) / len(data.y_val)
        np.testing.assert_allclose(train_share, val_share, atol=0.05)
    assert data.summary().startswith(task)


def test_builtin_validation_split_is_honoured():
    data = prepare(DataSpec(builtin="wine", validation_split=0.5), 0)
    assert (len(data.x_train), len(data.x_val)) == (89, 89)


def test_same_seed_gives_the_same_split():
    spec = DataSpec(builtin="iris")
    first, second = prepare.__wrapped__(spec, 3), prepare.__wrapped__(spec, 3)
    for name in ("x_train", "y_train", "x_val", "y_val"):
        np.testing.assert_array_equal(getattr(first, name), getattr(second, name))


def test_different_seed_gives_a_different_split():
    spec = DataSpec(builtin="iris")
    first, second = prepare.__wrapped__(spec, 0), prepare.__wrapped__(spec, 1)
    assert first.x_train.shape == second.x_train.shape
    assert not np.array_equal(first.x_train, second.x_train)
    assert not np.array_equal(first.y_val, second.y_val)


def test_prepare_is_cached_per_spec_and_seed():
    spec = DataSpec(builtin="iris", validation_split=0.3)
    assert prepare(spec, 0) is prepare(DataSpec(builtin="iris", validation_split=0.3), 0)
    assert prepare(spec, 1) is not prepare(spec, 0)


# ---------------------------------------------------------------------------------------------
# The user's files


def test_csv_categorical_column_is_one_hot_encoded(tmp_path: Path):
    n = 40
    rng = np.random.default_rng(1)
    path = write_csv(
        tmp_path / "cars.csv",
        {
            "size": rng.normal(3.0, 1.0, n),
            "color": [("red", "green", "blue")[i % 3] for i in range(n)],
            "y": rng.normal(size=n),
        },
    )
    data = prepare(file_spec(path), 0)
    assert data.task == "regression"
    assert data.feature_names == ["size", "color_blue", "color_green", "color_red"]
    assert data.x_train.shape == (32, 4) and data.x_val.shape == (8, 4)
    assert data.x_train.dtype == np.float32
    for x in (data.x_train, data.x_val):
        one_hot = x[:, 1:]
        assert set(np.unique(one_hot)) <= {0.0, 1.0}
        np.testing.assert_array_equal(one_hot.sum(axis=1), 1.0)
    assert_standardized(data.x_train[:, :1])


def test_parquet_file(tmp_path: Path):
    n = 40
    rng = np.random.default_rng(2)
    path = tmp_path / "train.parquet"
    frame = pd.DataFrame({"a": rng.normal(size=n), "b": rng.normal(size=n), "label": [0, 1] * 20})
    frame.to_parquet(path)
    data = prepare(file_spec(path, target="label"), 0)
    assert data.task == "binary"
    assert data.n_outputs == 1
    assert data.class_labels == [0, 1]
    assert data.feature_names == ["a", "b"]
    assert data.x_train.shape == (32, 2)
    assert set(np.unique(data.y_train)) == set(np.unique(data.y_val)) == {0.0, 1.0}
    assert_standardized(data.x_train)


def test_pq_suffix_is_parquet(tmp_path: Path):
    path = tmp_path / "train.pq"
    pd.DataFrame(regression_columns(seed=3)).to_parquet(path)
    data = prepare(file_spec(path), 0)
    assert data.task == "regression"
    assert data.x_train.shape == (32, 2)


def test_npz_with_x_and_y(tmp_path: Path):
    rng = np.random.default_rng(4)
    path = tmp_path / "arrays.npz"
    np.savez(path, x=rng.normal(3.0, 2.0, (60, 4)), y=np.repeat([0, 1, 2], 20))
    data = prepare(file_spec(path, target=None), 0)
    assert data.task == "multiclass"
    assert data.n_outputs == 3 and data.class_labels == [0, 1, 2]
    assert data.feature_names == ["x0", "x1", "x2", "x3"]
    assert data.x_train.shape == (48, 4) and data.x_val.shape == (12, 4)
    assert data.x_train.dtype == data.y_train.dtype == np.float32
    assert set(np.unique(data.y_val)) == {0.0, 1.0, 2.0}
    assert_standardized(data.x_train)


def test_npz_with_more_dimensions_is_standardized_per_last_axis(tmp_path: Path):
    rng = np.random.default_rng(5)
    path = tmp_path / "images.npz"
    np.savez(path, x=rng.normal(10.0, 4.0, (50, 3, 2)), y=rng.normal(size=50))
    data = prepare(file_spec(path, target=None), 0)
    assert data.task == "regression"
    assert data.input_shape == (3, 2)
    assert data.feature_names == ["x0", "x1"]
    assert data.x_train.shape == (40, 3, 2)
    assert_standardized(data.x_train)


def test_npz_with_its_own_validation_arrays(tmp_path: Path):
    rng = np.random.default_rng(6)
    x_train, x_val = rng.normal(5.0, 2.0, (30, 3)), rng.normal(5.0, 2.0, (10, 3))
    path = tmp_path / "split.npz"
    np.savez(
        path,
        x_train=x_train,
        y_train=np.array(["a", "b"] * 15),
        x_val=x_val,
        y_val=np.array(["b", "a"] * 5),
    )
    data = prepare(file_spec(path, target=None), 0)
    assert data.task == "binary"
    assert data.class_labels == ["a", "b"]
    assert data.x_train.shape == (30, 3) and data.x_val.shape == (10, 3)
    np.testing.assert_array_equal(data.y_val, np.array([1, 0] * 5, dtype="float32"))
    # The validation arrays are scaled with the training arrays' statistics.
    expected = (x_val - x_train.mean(axis=0)) / x_train.std(axis=0)
    np.testing.assert_allclose(data.x_val, expected, rtol=1e-5, atol=1e-5)
    assert_standardized(data.x_train)


def test_separate_validation_file(tmp_path: Path):
    train = regression_columns(30, seed=7)
    val = regression_columns(12, seed=8)
    train["color"] = ["red", "blue", "green"] * 10
    val["color"] = ["red", "blue", "purple"] * 4  # purple never appears in training
    train_path = write_csv(tmp_path / "train.csv", train)
    val_path = write_csv(tmp_path / "val.csv", val)
    data = prepare(file_spec(train_path, validation_path=str(val_path)), 0)
    assert data.task == "regression"
    assert data.x_train.shape == (30, 5) and data.x_val.shape == (12, 5)
    assert data.feature_names == ["a", "b", "color_blue", "color_green", "color_red"]
    # Fitted on the training file only (population std, as StandardScaler uses).
    expected_a = (val["a"] - train["a"].mean()) / train["a"].std()
    np.testing.assert_allclose(data.x_val[:, 0], expected_a, rtol=1e-5, atol=1e-5)
    assert data.target_mean == pytest.approx(train["y"].mean())
    assert data.target_std == pytest.approx(train["y"].std())
    np.testing.assert_allclose(data.y_val * data.target_std + data.target_mean, val["y"], rtol=1e-5)
    # An unseen category encodes as all zeros.
    np.testing.assert_array_equal(data.x_val[2::3, 2:], 0.0)


@pytest.mark.parametrize(
    ("target", "task", "n_outputs", "labels"),
    [
        pytest.param(
            list(np.random.default_rng(9).normal(size=40)), "regression", 1, [], id="float"
        ),
        pytest.param(list(range(40)), "regression", 1, [], id="many-ints"),
        pytest.param([0, 1] * 20, "binary", 1, [0, 1], id="two-ints"),
        pytest.param(["no", "yes"] * 20, "binary", 1, ["no", "yes"], id="two-strings"),
        pytest.param([True, False] * 20, "binary", 1, [False, True], id="bools"),
        pytest.param([0.5, 1.5] * 20, "binary", 1, [0.5, 1.5], id="two-floats"),
        pytest.param(
            ["cat", "dog", "eel", "fox"] * 10,
            "multiclass",
            4,
            ["cat", "dog", "eel", "fox"],
            id="string-labels",
        ),
        pytest.param([1, 2, 3, 4, 5] * 8, "multiclass", 5, [1, 2, 3, 4, 5], id="small-int-set"),
        pytest.param(
            [1.0, 2.0, 3.0] * 13 + [1.0], "multiclass", 3, [1.0, 2.0, 3.0], id="whole-floats"
        ),
    ],
)
def test_task_is_inferred_from_the_target(
    tmp_path: Path, target: list[Any], task: str, n_outputs: int, labels: list[Any]
):
    rng = np.random.default_rng(10)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=40), "y": target})
    data = prepare(file_spec(path), 0)
    assert data.task == task
    assert data.n_outputs == n_outputs
    assert data.class_labels == labels
    if task != "regression":
        assert set(np.unique(data.y_train)) == set(range(len(labels)))


def test_explicit_task_overrides_inference(tmp_path: Path):
    rng = np.random.default_rng(11)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=40), "y": [0, 1, 2, 3] * 10})
    data = prepare(file_spec(path, task="regression"), 0)
    assert data.task == "regression" and data.class_labels == []
    assert abs(float(data.y_train.mean())) < 1e-5
    assert data.target_mean == pytest.approx(1.5, abs=0.2)


def test_binary_target_as_multiclass(tmp_path: Path):
    rng = np.random.default_rng(12)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=40), "y": [0, 1] * 20})
    data = prepare(file_spec(path, task="multiclass"), 0)
    assert data.task == "multiclass"
    assert data.n_outputs == 2


# ---------------------------------------------------------------------------------------------
# Files that cannot be used


def test_missing_file(tmp_path: Path):
    path = tmp_path / "nope.csv"
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: data file not found.")
    assert "Check `data.path`" in message


def test_missing_npz_file(tmp_path: Path):
    path = tmp_path / "nope.npz"
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: data file not found.")


def test_unsupported_extension(tmp_path: Path):
    path = tmp_path / "data.txt"
    path.write_text("a,y\n1,2\n")
    message = data_error(file_spec(path))
    assert message == f"{path}: unsupported file type '.txt'. Use .csv, .parquet or .npz."


def test_unknown_target_column(tmp_path: Path):
    path = write_csv(tmp_path / "houses.csv", {"rooms": [1, 2] * 10, "price": [1.5, 2.5] * 10})
    message = data_error(file_spec(path, target="prise"))
    assert message.startswith(f"{path}: unknown target column 'prise'.")
    assert "Did you mean 'price'?" in message
    assert "Columns: rooms, price." in message
    assert "Fix `data.target`" in message


def test_nan_in_a_column_under_missing_refuse(tmp_path: Path):
    columns = regression_columns()
    columns["a"][[3, 7]] = np.nan
    path = write_csv(tmp_path / "nan.csv", columns)
    message = data_error(file_spec(path, missing="refuse"))
    assert message.startswith(f"{path}: column 'a' has 2 rows with NaN or inf (rows 3, 7...)")
    assert "Drop or fill those rows" in message


def test_inf_in_a_column(tmp_path: Path):
    columns = regression_columns()
    columns["y"][4] = np.inf
    path = write_csv(tmp_path / "inf.csv", columns)
    message = data_error(file_spec(path, missing="refuse"))
    assert "column 'y' has 1 rows with NaN or inf (rows 4...)" in message
    # Imputed or dropped, a missing value is an empty cell; inf stays refused.
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: column 'y' has 1 rows with inf (rows 4...). An infinite")


def test_missing_values_in_several_columns_are_all_named(tmp_path: Path):
    columns = regression_columns()
    columns["a"][0] = np.nan
    columns["b"] = [None if i in (1, 2, 3) else "x" for i in range(40)]
    path = write_csv(tmp_path / "holes.csv", columns)
    message = data_error(file_spec(path, missing="refuse"))
    assert "column 'a' has 1 rows" in message
    assert "column 'b' has 3 rows with NaN or inf (rows 1, 2, 3...)" in message


def test_nan_in_the_validation_file_names_that_file(tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", regression_columns(seed=13))
    val_columns = regression_columns(12, seed=14)
    val_columns["b"] = val_columns["b"].astype(float)
    val_columns["b"][5] = np.nan
    val = write_csv(tmp_path / "val.csv", val_columns)
    message = data_error(file_spec(train, validation_path=str(val), missing="refuse"))
    assert message.startswith(f"{val}: column 'b' has 1 rows with NaN or inf (rows 5...)")


def test_non_numeric_target_cannot_be_regressed(tmp_path: Path):
    rng = np.random.default_rng(15)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=40), "y": ["lo", "hi"] * 20})
    message = data_error(file_spec(path, task="regression"))
    assert message.startswith(f"{path}: target 'y' is not numeric")
    assert "Set `data.task: binary` or `multiclass`" in message


def test_binary_task_with_three_classes(tmp_path: Path):
    rng = np.random.default_rng(16)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=39), "y": [0, 1, 2] * 13})
    message = data_error(file_spec(path, task="binary"))
    assert message == (
        f"{path}: a binary task needs exactly 2 classes in 'y', found 3. "
        f"Set `data.task: multiclass` or `regression`."
    )


def test_too_few_rows_for_the_split(tmp_path: Path):
    path = write_csv(tmp_path / "tiny.csv", regression_columns(9))
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: 9 rows are too few for a validation split of 0.2")
    assert "need at least 8 training and 2 validation rows" in message
    assert "Add rows, change `data.validation_split`, or give `data.validation_path`." in message


def test_too_few_rows_in_an_npz(tmp_path: Path):
    path = tmp_path / "tiny.npz"
    np.savez(path, x=np.arange(20.0).reshape(10, 2), y=np.arange(10.0) / 3)
    message = data_error(file_spec(path, target=None, validation_split=0.5))
    assert "10 rows are too few for a validation split of 0.5" in message


def test_class_with_a_single_row(tmp_path: Path):
    rng = np.random.default_rng(17)
    target = ["a"] * 15 + ["b"] * 15 + ["c"]
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=31), "y": target})
    message = data_error(file_spec(path))
    assert message.startswith(
        f"{path}: cannot split into training and validation rows with every class on both sides"
    )
    assert "Every class needs at least 2 rows." in message


def test_validation_file_with_different_columns(tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", regression_columns(seed=18))
    val_columns = regression_columns(12, seed=19)
    val_columns["c"] = val_columns.pop("b")
    val = write_csv(tmp_path / "val.csv", val_columns)
    message = data_error(file_spec(train, validation_path=str(val)))
    assert message == (
        f"{val}: the validation file must have the training file's columns; "
        f"missing: ['b'], extra: ['c']."
    )


def test_npz_with_wrong_keys(tmp_path: Path):
    path = tmp_path / "keys.npz"
    np.savez(path, features=np.zeros((20, 2)), labels=np.zeros(20))
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: an NPZ file holds arrays `x` and `y`")
    assert "`x_train`, `y_train`, `x_val`, `y_val`" in message
    assert "found: features, labels." in message


def test_npz_x_and_y_length_mismatch(tmp_path: Path):
    path = tmp_path / "lengths.npz"
    np.savez(path, x=np.zeros((30, 2)), y=np.zeros(29))
    message = data_error(file_spec(path, target=None))
    assert message == f"{path}: x has 30 rows but y has 29; they must match."


def test_npz_with_nan_in_x(tmp_path: Path):
    rng = np.random.default_rng(20)
    x = rng.normal(size=(40, 3))
    x[[2, 9], 1] = np.nan
    path = tmp_path / "nan.npz"
    np.savez(
        path,
        x_train=x,
        y_train=rng.normal(size=40),
        x_val=rng.normal(size=(10, 3)),
        y_val=rng.normal(size=10),
    )
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: array x_train has 2 rows with NaN or inf (rows 2, 9...)")
    assert "Drop or fill them." in message


def test_npz_with_inf_in_x_val(tmp_path: Path):
    rng = np.random.default_rng(21)
    x_val = rng.normal(size=(10, 3))
    x_val[4, 0] = -np.inf
    path = tmp_path / "inf.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(40, 3)),
        y_train=rng.normal(size=40),
        x_val=x_val,
        y_val=rng.normal(size=10),
    )
    message = data_error(file_spec(path, target=None))
    assert "array x_val has 1 rows with NaN or inf (rows 4...)" in message


def test_npz_with_non_numeric_x(tmp_path: Path):
    path = tmp_path / "strings.npz"
    np.savez(path, x=np.array([["a", "b"]] * 20), y=np.arange(20.0) / 7)
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: array x must be numeric, got dtype <U1.")


def test_csv_with_only_a_header(tmp_path: Path):
    path = tmp_path / "empty.csv"
    path.write_text("a,b,y\n")
    assert data_error(file_spec(path)) == f"{path}: the file has no rows."


def test_zero_byte_csv(tmp_path: Path):
    path = tmp_path / "zero.csv"
    path.write_bytes(b"")
    assert data_error(file_spec(path)).startswith(f"{path}: cannot be read as csv:")


def test_corrupt_parquet(tmp_path: Path):
    path = tmp_path / "broken.parquet"
    path.write_bytes(b"PAR1 this is not really parquet")
    assert data_error(file_spec(path)).startswith(f"{path}: cannot be read as parquet:")


def test_npz_that_is_not_an_npz(tmp_path: Path):
    path = tmp_path / "text.npz"
    path.write_text("x,y\n1,2\n")
    assert data_error(file_spec(path, target=None)).startswith(f"{path}: cannot be read as NPZ:")


def test_csv_with_only_the_target(tmp_path: Path):
    path = write_csv(tmp_path / "target.csv", {"y": np.arange(40.0) / 3})
    assert data_error(file_spec(path)) == f"{path}: no feature columns besides the target 'y'."


# ---------------------------------------------------------------------------------------------
# Bugs found in review, fixed: kept as regression tests


def test_npz_nan_rows_are_rows_of_the_file(tmp_path: Path):
    rng = np.random.default_rng(22)
    x = rng.normal(size=(40, 3))
    x[5, 1] = np.nan
    path = tmp_path / "nan_xy.npz"
    np.savez(path, x=x, y=rng.normal(size=40))
    message = data_error(file_spec(path, target=None))
    assert "array x has 1 rows with NaN or inf (rows 5...)" in message


def test_npz_with_nan_in_y(tmp_path: Path):
    rng = np.random.default_rng(23)
    y = rng.normal(size=40)
    y[3] = np.nan
    path = tmp_path / "nan_y.npz"
    np.savez(path, x=rng.normal(size=(40, 3)), y=y)
    message = data_error(file_spec(path, target=None))
    assert "y" in message and "NaN" in message


def test_npz_x_train_and_y_train_length_mismatch(tmp_path: Path):
    rng = np.random.default_rng(24)
    path = tmp_path / "lengths_split.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(20, 3)),
        y_train=rng.normal(size=19),
        x_val=rng.normal(size=(5, 3)),
        y_val=rng.normal(size=5),
    )
    message = data_error(file_spec(path, target=None))
    assert "20" in message and "19" in message


def test_npz_x_val_with_other_features(tmp_path: Path):
    rng = np.random.default_rng(25)
    path = tmp_path / "features.npz"
    np.savez(
        path,
        x_train=rng.normal(size=(20, 3)),
        y_train=rng.normal(size=20),
        x_val=rng.normal(size=(5, 4)),
        y_val=rng.normal(size=5),
    )
    data_error(file_spec(path, target=None))


def test_npz_one_dimensional_x(tmp_path: Path):
    rng = np.random.default_rng(26)
    path = tmp_path / "flat.npz"
    np.savez(path, x=rng.normal(size=40), y=rng.normal(size=40))
    try:
        data = prepare(file_spec(path, target=None), 0)
    except DataError:
        return
    assert data.x_train.shape == (32, 1)
    assert_standardized(data.x_train)


def test_target_with_a_single_value(tmp_path: Path):
    rng = np.random.default_rng(27)
    path = write_csv(tmp_path / "constant.csv", {"a": rng.normal(size=30), "y": [3] * 30})
    data_error(file_spec(path))


def test_missing_validation_file_points_to_validation_path(tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", regression_columns(seed=28))
    val = tmp_path / "nope.csv"
    message = data_error(file_spec(train, validation_path=str(val)))
    assert message.startswith(f"{val}: data file not found.")
    assert "data.validation_path" in message


# ---------------------------------------------------------------------------------------------
# Bad input from an adversarial review: each ends in a DataError naming the file, the column or
# array, and the fix (or, for one-hot targets and number-like column names, simply works)


def prediction_error(recipe: dict[str, Any], path: Path) -> str:
    with pytest.raises(DataError) as info:
        read_for_prediction(recipe, path)
    return str(info.value)


def npz_split(path: Path, x_train, y_train, x_val, y_val) -> Path:
    np.savez(path, x_train=x_train, y_train=y_train, x_val=x_val, y_val=y_val)
    return path


def test_npz_with_a_zero_dimensional_x(tmp_path: Path):
    path = tmp_path / "scalar.npz"
    np.savez(path, x=np.array(5.0), y=np.arange(10.0))
    assert data_error(file_spec(path, target=None)) == (
        f"{path}: array x is a single value (5.0, shape ()); it must hold one row per example, "
        f"shaped (rows,) or (rows, features, ...)."
    )


@pytest.mark.parametrize(("classes", "task"), [(2, "binary"), (3, "multiclass")])
def test_npz_one_hot_y_is_class_labels(tmp_path: Path, classes: int, task: str):
    rng = np.random.default_rng(29)
    labels_train, labels_val = np.arange(30) % classes, np.arange(12) % classes
    path = npz_split(
        tmp_path / "one_hot.npz",
        rng.normal(size=(30, 2)),
        np.eye(classes)[labels_train],
        rng.normal(size=(12, 2)),
        np.eye(classes)[labels_val],
    )
    data = prepare(file_spec(path, target=None), 0)
    assert data.task == task
    assert data.class_labels == list(range(classes))
    assert data.n_outputs == (classes if task == "multiclass" else 1)
    np.testing.assert_array_equal(data.y_train, labels_train.astype("float32"))
    np.testing.assert_array_equal(data.y_val, labels_val.astype("float32"))


def test_npz_one_hot_y_is_split_by_class(tmp_path: Path):
    rng = np.random.default_rng(30)
    path = tmp_path / "one_hot_xy.npz"
    np.savez(path, x=rng.normal(size=(40, 2)), y=np.eye(4, dtype="int8")[np.arange(40) % 4])
    data = prepare(file_spec(path, target=None), 0)
    assert (data.task, data.n_outputs, data.class_labels) == ("multiclass", 4, [0, 1, 2, 3])
    assert set(np.unique(data.y_train)) == set(np.unique(data.y_val)) == {0.0, 1.0, 2.0, 3.0}


def test_npz_y_with_several_targets_per_row(tmp_path: Path):
    path = tmp_path / "targets.npz"
    y = np.eye(3)[np.arange(30) % 3]
    y[4] = [0.5, 2.0, 0.0]
    np.savez(path, x=np.arange(60.0).reshape(30, 2), y=y)
    assert data_error(file_spec(path, target=None)) == (
        f"{path}: array y has shape (30, 3); it must hold one value per row (shape (30,)) or "
        f"one-hot rows (shape (30, classes): a single 1 per row, 0 elsewhere), but row 4 is "
        f"[0.5, 2.0, 0.0]. Several targets per row are not supported."
    )


def test_npz_with_zero_features(tmp_path: Path):
    path = tmp_path / "empty_rows.npz"
    np.savez(path, x=np.zeros((30, 0)), y=np.arange(30.0))
    assert data_error(file_spec(path, target=None)) == (
        f"{path}: array x has shape (30, 0): its rows hold no values. Each row needs at least "
        f"one feature, e.g. shape (30, features)."
    )


def test_npz_split_with_zero_features(tmp_path: Path):
    rng = np.random.default_rng(31)
    path = npz_split(
        tmp_path / "empty_split.npz",
        np.zeros((30, 0)),
        rng.normal(size=30),
        np.zeros((10, 0)),
        rng.normal(size=10),
    )
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: array x_train has shape (30, 0): its rows hold no values.")


def test_parquet_column_of_lists(tmp_path: Path):
    path = tmp_path / "lists.parquet"
    frame = pd.DataFrame({"a": np.arange(20.0), "tags": [[1, 2]] * 20, "y": np.arange(20.0)})
    frame.to_parquet(path)
    assert data_error(file_spec(path)) == (
        f"{path}: column 'tags' holds ndarray cells (row 0: array([1, 2])); a column must hold "
        f"one number or one text value per row. Split it into columns of their own, or remove it."
    )


@pytest.mark.parametrize("stray", ["12a", "n/a?"])
def test_numeric_column_with_a_stray_text_cell(tmp_path: Path, stray: str):
    columns = regression_columns()
    columns["a"] = columns["a"].astype(object)
    columns["a"][6] = stray
    path = write_csv(tmp_path / "typo.csv", columns)
    assert data_error(file_spec(path)) == (
        f"{path}: column 'a' holds numbers except in 1 row: row 6 {stray!r} (row numbers count "
        f"from 0, header excluded). Read as text, the column would be encoded as categories, one "
        f"per distinct value. Fix those cells, or declare the column in `data.columns`: 'a': "
        f"numeric reads those cells as missing values, categorical keeps every value as a "
        f"category."
    )


def test_stray_text_cells_are_listed_five_at_most_and_shortened(tmp_path: Path):
    columns = regression_columns(80)
    columns["b"] = columns["b"].astype(object)
    for row in (1, 3, 5, 7, 9, 11):
        columns["b"][row] = f"oops{row}"
    columns["b"][1] = "z" * 1000
    path = write_csv(tmp_path / "typos.csv", columns)
    message = data_error(file_spec(path))
    assert message.startswith(
        f"{path}: column 'b' holds numbers except in 6 rows: row 1 '{'z' * 36}..., row 3 "
        f"'oops3', row 5 'oops5', row 7 'oops7', row 9 'oops9'... (row numbers"
    )


def test_stray_text_in_the_target_and_in_the_validation_file(tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", regression_columns(seed=32))
    val_columns = regression_columns(20, seed=33)
    val_columns["y"] = val_columns["y"].astype(object)
    val_columns["y"][2] = "?"
    val = write_csv(tmp_path / "val.csv", val_columns)
    message = data_error(file_spec(train, validation_path=str(val)))
    assert message.startswith(f"{val}: column 'y' holds numbers except in 1 row: row 2 '?'")
    assert message.endswith("Fix those cells, or drop those rows.")


def test_text_columns_that_are_not_numbers_with_typos_still_work(tmp_path: Path):
    n = 40
    rng = np.random.default_rng(34)
    # Mostly text, a few numbers: categories as before.
    path = write_csv(
        tmp_path / "mixed.csv",
        {"a": ["red", "green", "blue", "7"] * 10, "y": rng.normal(size=n)},
    )
    data = prepare(file_spec(path), 0)
    assert data.feature_names == ["a_7", "a_blue", "a_green", "a_red"]
    # Numbers stored as text (a Parquet string column): categories as before, too.
    path = tmp_path / "digits_as_text.parquet"
    pd.DataFrame({"a": [str(i % 3) for i in range(n)], "y": rng.normal(size=n)}).to_parquet(path)
    assert prepare(file_spec(path), 0).feature_names == ["a_0", "a_1", "a_2"]


def test_validation_file_with_text_where_training_has_numbers(tmp_path: Path):
    train = write_csv(tmp_path / "train.csv", regression_columns(seed=35))
    val_columns = regression_columns(12, seed=36)
    val_columns["b"] = ["few", "many"] * 6
    val = write_csv(tmp_path / "val.csv", val_columns)
    assert data_error(file_spec(train, validation_path=str(val))) == (
        f"{val}: column 'b' holds numbers in the training rows but text here; a column must "
        f"hold the same kind of values in both files. Fix those values."
    )


TOO_LARGE = (
    "Training uses float32, which holds at most about 3.4e38: rescale the values before the "
    "search (take a log, or divide them by a power of ten)."
)


@pytest.mark.parametrize("scale", [1e200, 1e300])
def test_column_too_large_to_standardize(tmp_path: Path, scale: float):
    columns = regression_columns()
    columns["a"] = np.linspace(-1.0, 2.0, 40) * scale
    path = write_csv(tmp_path / "huge.csv", columns)
    assert data_error(file_spec(path)) == (
        f"{path}: column 'a' holds values too large to train on (largest magnitude "
        f"{2 * scale:.3g}; their mean and spread overflow). {TOO_LARGE}"
    )


def test_regression_target_too_large(tmp_path: Path):
    columns = regression_columns()
    columns["y"] = columns["y"] * 1e300
    path = write_csv(tmp_path / "huge_target.csv", columns)
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: target 'y' holds values too large to train on")
    assert message.endswith(TOO_LARGE)


def test_npz_feature_too_large(tmp_path: Path):
    rng = np.random.default_rng(37)
    path = tmp_path / "huge.npz"
    np.savez(path, x=rng.normal(size=(40, 3)) * [1.0, 1.0, 1e300], y=rng.normal(size=40))
    message = data_error(file_spec(path, target=None))
    assert message.startswith(f"{path}: array x, feature 2 holds values too large to train on")
    assert message.endswith(TOO_LARGE)


def test_validation_value_that_standardizes_beyond_float32(tmp_path: Path):
    # The training rows' spread is tiny: a moderate validation value lands beyond float32.
    train_columns = regression_columns(seed=38)
    train_columns["a"] = train_columns["a"] * 1e-36
    train = write_csv(tmp_path / "train.csv", train_columns)
    val_columns = regression_columns(12, seed=39)
    val_columns["a"][3] = 1e5
    val = write_csv(tmp_path / "val.csv", val_columns)
    message = data_error(file_spec(train, validation_path=str(val)))
    assert message.startswith(
        f"{val}: column 'a' holds values too large to train on (largest magnitude 1e+05; "
    )
    assert "standard deviations of the training rows from their mean" in message


def test_large_values_that_standardize_well_are_kept(tmp_path: Path):
    rng = np.random.default_rng(40)
    path = tmp_path / "large.npz"
    np.savez(path, x=rng.normal(size=(40, 2)) * 1e100, y=rng.normal(size=40) * 1e100)
    data = prepare(file_spec(path, target=None), 0)
    for array in (data.x_train, data.x_val, data.y_train, data.y_val):
        assert np.isfinite(array).all()
    assert_standardized(data.x_train)


def test_validation_split_smaller_than_the_classes(tmp_path: Path):
    rng = np.random.default_rng(41)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=12), "y": [0, 1, 2, 3] * 3})
    assert data_error(file_spec(path)) == (
        f"{path}: the validation split holds 3 of the 12 rows (`data.validation_split: 0.2`) "
        f"but there are 4 classes, and each side needs a row of every class. Set "
        f"`data.validation_split: 0.3`, or give `data.validation_path`."
    )


def test_no_validation_split_can_hold_every_class(tmp_path: Path):
    rng = np.random.default_rng(42)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=10), "y": [0, 1, 2, 3, 4] * 2})
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: the validation split holds 2 of the 10 rows")
    assert message.endswith("No split of 10 rows can; add rows, or give `data.validation_path`.")
    assert "at least 2 rows" not in message


def test_training_split_smaller_than_the_classes(tmp_path: Path):
    rng = np.random.default_rng(43)
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=20), "y": list(range(10)) * 2})
    message = data_error(file_spec(path, validation_split=0.6))
    assert message.startswith(
        f"{path}: the training split holds 8 of the 20 rows (`data.validation_split: 0.6`) but "
        f"there are 10 classes"
    )
    assert message.endswith("Set `data.validation_split: 0.5`, or give `data.validation_path`.")


def test_classes_with_a_single_row_are_named(tmp_path: Path):
    rng = np.random.default_rng(44)
    target = ["a"] * 15 + ["b"] * 15 + ["c", "d"]
    path = write_csv(tmp_path / "t.csv", {"a": rng.normal(size=32), "y": target})
    assert data_error(file_spec(path)) == (
        f"{path}: cannot split into training and validation rows with every class on both "
        f"sides: classes 'c', 'd' have a single row. Every class needs at least 2 rows. Add rows "
        f"of those classes, drop their rows, or give `data.validation_path`."
    )


def test_prediction_of_a_table_model_refuses_an_npz(tmp_path: Path):
    recipe = prepare(file_spec(write_csv(tmp_path / "t.csv", regression_columns()))).preprocessing
    path = tmp_path / "rows.npz"
    np.savez(path, x=np.zeros((3, 2)))
    assert prediction_error(recipe, path) == (
        f"{path}: this model was trained on a table and takes a CSV or Parquet file (.csv, "
        f".parquet or .pq) with the same columns, not a '.npz' file."
    )


def test_prediction_of_a_missing_or_empty_table_is_refused(tmp_path: Path):
    """predict reads a table chunk by chunk: a file that is not there, or holds a header and
    no row, is still refused in one sentence."""
    recipe = prepare(file_spec(write_csv(tmp_path / "t.csv", regression_columns()))).preprocessing
    missing = tmp_path / "missing.csv"
    assert prediction_error(recipe, missing) == f"{missing}: data file not found."
    empty = tmp_path / "empty.csv"
    empty.write_text("a,b,y\n")
    assert prediction_error(recipe, empty) == f"{empty}: the file has no rows."


def test_prediction_nan_message_speaks_of_predicting(tmp_path: Path):
    train = write_csv(tmp_path / "t.csv", regression_columns())
    recipe = prepare(file_spec(train, missing="refuse")).preprocessing
    rows = regression_columns(5, seed=45)
    rows["a"][1] = np.nan
    path = write_csv(tmp_path / "new.csv", rows)
    assert prediction_error(recipe, path) == (
        f"{path}: column 'a' has 1 rows with NaN or inf (rows 1...). Drop or fill those rows "
        f"before predicting (`data.missing: refuse`) (row numbers count from 0, header excluded)."
    )


def test_prediction_refuses_values_beyond_float32(tmp_path: Path):
    recipe = prepare(file_spec(write_csv(tmp_path / "t.csv", regression_columns()))).preprocessing
    rows = regression_columns(5, seed=46)
    rows["b"] = np.array([1.0, 2.0, 1e300, 3.0, 4.0])
    message = prediction_error(recipe, write_csv(tmp_path / "new.csv", rows))
    assert message.startswith(f"{tmp_path / 'new.csv'}: column 'b' holds values too large")


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.array(5.0), "array x is a single value (5.0, shape ())"),
        (np.zeros((0, 3)), "array x has no rows (shape (0, 3))."),
        (np.zeros((4, 3, 1)), "array x holds float64 rows shaped (3, 1); this model takes"),
    ],
    ids=["0-d", "no-rows", "wrong-shape"],
)
def test_prediction_npz_with_an_unusable_x(tmp_path: Path, x: np.ndarray, fragment: str):
    rng = np.random.default_rng(47)
    train = tmp_path / "train.npz"
    np.savez(train, x=rng.normal(size=(40, 3)), y=rng.normal(size=40))
    recipe = prepare(file_spec(train, target=None)).preprocessing
    path = tmp_path / "new.npz"
    np.savez(path, x=x)
    assert prediction_error(recipe, path).startswith(f"{path}: {fragment}")


def test_number_like_column_names_are_found_as_text(tmp_path: Path):
    rng = np.random.default_rng(48)
    path = tmp_path / "numbered.parquet"
    pd.DataFrame(
        {0: rng.normal(size=20), 1: rng.normal(size=20), 2: rng.normal(size=20)}
    ).to_parquet(path)
    data = prepare(file_spec(path, target="2"), 0)
    assert data.feature_names == ["0", "1"]
    assert data.preprocessing["target"] == "2"
    x, _, _ = read_for_prediction(data.preprocessing, path)  # the target column is ignored
    assert x.shape == (20, 2)


def test_huge_values_are_shortened_in_messages(tmp_path: Path):
    big = "x" * 1_000_000
    path = write_csv(tmp_path / "big.csv", {"a": np.arange(20.0), "y": [big] * 20})
    message = data_error(file_spec(path))
    assert message.startswith(f"{path}: target 'y' has a single value ('xxxx")
    assert len(message) < len(str(path)) + 200
    message = data_error(file_spec(path, target=big))
    assert message.startswith(f"{path}: unknown target column 'xxxx")
    assert len(message) < len(str(path)) + 300
