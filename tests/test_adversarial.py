"""Bad input and faults, thrown as a careless script or a hostile user would: each case ends
with its exit code and a one-paragraph message naming the key, file or value, no traceback,
and nothing on disk changed: the case's whole folder (its study database, exported model,
data files) is compared byte for byte before and after."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import SERVERS, TINY_SPACE, run_in

pytestmark = pytest.mark.slow  # the shared fixture trains a real study and exports its model


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A folder with a finished two-trial study on a CSV (studies.db), the model exported
    from it (model/) and rows to predict (rows.csv)."""
    from sklearn.datasets import load_diabetes

    folder = tmp_path_factory.mktemp("base")
    frame = load_diabetes(as_frame=True).frame
    frame.to_csv(folder / "data.csv", index=False)
    frame.drop(columns=["target"]).iloc[:20].to_csv(folder / "rows.csv", index=False)
    space = {
        **TINY_SPACE,
        "data": {"path": "data.csv", "target": "target"},
        "search": {**TINY_SPACE["search"], "trials": 2},
    }
    (folder / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
    url = f"sqlite:///{folder / 'studies.db'}"
    for args in (("start", "space.yaml", "-q"), ("export-model", "tiny", "--out", "model")):
        done = run_in(folder, *args, "--storage", url)
        assert done.returncode == 0, done.stderr
    return folder


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def write_space(folder: Path, name: str = "bad.yaml", **changes) -> None:
    space = {**TINY_SPACE, "name": "bad", **changes}
    (folder / name).write_text(yaml.safe_dump(space, sort_keys=False))


def alias_bomb(folder: Path) -> None:
    lines = ["name: bomb", "data: {builtin: diabetes}", "a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 10)]
    lines += ["params:", "  activation: {type: categorical, choices: *a9}"]
    (folder / "bad.yaml").write_text("\n".join(lines) + "\n")


def npz(x, y) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        np.savez(folder / "bad.npz", x=x, y=y)
        write_space(folder, data={"path": "bad.npz"})

    return setup


def csv(frame: pd.DataFrame, target: str = "y") -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        frame.to_csv(folder / "bad.csv", index=False)
        write_space(folder, data={"path": "bad.csv", "target": target})

    return setup


def corrupt(pages: range) -> Callable[[Path], None]:
    """Damage the database's `pages` (counting from 1), as a disk fault or a partial copy
    would: with page 2 it cannot even be opened; with pages 11-14 alone (the trials table)
    it opens, and fails on the first read of the trials."""

    def setup(folder: Path) -> None:
        path = folder / "studies.db"
        data = bytearray(path.read_bytes())
        for offset in (4096 * (page - 1) for page in pages if 4096 * page <= len(data)):
            data[offset : offset + 8] = b"\xff" * 8  # the page's header: its kind and cells
        path.write_bytes(bytes(data))

    return setup


def study_on_a_csv_that_then_changes(folder: Path) -> None:
    """A study that kept its CSV's fingerprint, and the CSV changed afterwards."""
    from dlboost_search.spaces import load_space
    from dlboost_search.study import check_same_data, create_or_check

    pd.read_csv(folder / "data.csv").iloc[:100].to_csv(folder / "small.csv", index=False)
    write_space(folder, "small.yaml", data={"path": str(folder / "small.csv"), "target": "target"})
    space = load_space(folder / "small.yaml")
    study = create_or_check(space, f"sqlite:///{folder / 'studies.db'}")
    check_same_data(study, space, False)
    study._storage._backend.engine.dispose()  # closed, as a finished command leaves it
    with open(folder / "small.csv", "a") as handle:
        handle.write(",".join(["0.01"] * 11) + "\n")


def set_file(name: str, content: bytes) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        (folder / name).write_bytes(content)

    return setup


def then(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(folder: Path) -> None:
        for each in setups:
            each(folder)

    return setup


@dataclass(frozen=True)
class Case:
    args: tuple[str, ...]  # "{db}" stands for the study's SQLite URL
    exit: int
    says: tuple[str, ...]  # fragments of the message (the key, file or value it names)
    setup: Callable[[Path], None] = lambda folder: None


DB = "{db}"
VALIDATE = ("validate", "bad.yaml")
ROWS = {f"f{i}": np.arange(30.0) * (i + 1) for i in range(3)}

# fmt: off
CASES = {
    # Search spaces
    "a timeout that is no duration": Case(
        VALIDATE, 2, ("bad.yaml: search.timeout: a duration is", "(90s, 10m, 1.5h)", "'10m in'"),
        lambda folder: write_space(folder, search={**TINY_SPACE["search"], "timeout": "10m in"}),
    ),
    "a --timeout that is no duration": Case(
        ("start", "space.yaml", "--storage", DB, "--timeout", "10 minutes"), 2,
        ("Invalid value for --timeout: '10 minutes': a duration is", "(90s, 10m, 1.5h)"),
    ),
    "a --timeout of nothing on resume": Case(
        ("resume", "tiny", "--storage", DB, "--timeout", "0s"), 2,
        ("Invalid value for --timeout: '0s'", "above 0"),
    ),
    "alias bomb": Case(VALIDATE, 2, ("bad.yaml", "anchors and aliases", "expand to"), alias_bomb),
    "duplicate key": Case(
        VALIDATE, 2, ("bad.yaml", "'units' appears twice", "lines 4 and 5"),
        set_file("bad.yaml", b"name: d\ndata: {builtin: diabetes}\nparams:\n  units: 4\n"
                             b"  units: 8\n"),
    ),
    "alias loop": Case(
        VALIDATE, 2, ("bad.yaml", "refers to the mapping or list it is in"),
        set_file("bad.yaml", b"name: d\ndata: &d {builtin: diabetes, again: *d}\n"),
    ),
    "nested too deep": Case(
        VALIDATE, 2, ("bad.yaml", "nested too deeply"),
        set_file("bad.yaml", b"name: d\ndata: " + b"[" * 20000 + b"]" * 20000 + b"\n"),
    ),
    "megabytes of YAML": Case(
        VALIDATE, 2, ("bad.yaml", "a search space is a few KB"),
        set_file("bad.yaml", b"name: d\n" + b"# padding\n" * 200_000),
    ),
    "not UTF-8": Case(VALIDATE, 2, ("bad.yaml", "not UTF-8"), set_file("bad.yaml", b"\xff\xfe")),
    "not a mapping": Case(
        VALIDATE, 2, ("bad.yaml", "a YAML mapping", "got list"), set_file("bad.yaml", b"- a\n")
    ),
    "a huge unknown key": Case(
        VALIDATE, 2, ("bad.yaml", "unknown key", "..."),
        lambda folder: write_space(folder, training={"x" * 100_000: 1}),
    ),
    "a list as a parameter": Case(
        VALIDATE, 2, ("params.units: a list is not a parameter", "type: categorical"),
        lambda folder: write_space(folder, params={"units": [4, 8]}),
    ),
    "a model larger than memory": Case(
        VALIDATE, 2, ("bad.yaml", "units=65536, layers=64", "more than this machine's"),
        lambda folder: write_space(folder, params={
            "units": {"type": "int", "low": 4, "high": 65536},
            "layers": {"type": "int", "low": 1, "high": 64}}),
    ),
    "a parameter limit of none": Case(
        VALIDATE, 2,
        ("bad.yaml: objective.constraints.max_params: at least 1 parameter", "got 0"),
        lambda folder: write_space(folder, objective={"constraints": {"max_params": 0}}),
    ),
    "a latency limit in words": Case(
        ("start", "bad.yaml", "--storage", DB), 2,
        ("bad.yaml: objective.constraints.max_latency_ms: a number of milliseconds above 0",
         "'fast'"),
        lambda folder: write_space(folder, objective={"constraints": {"max_latency_ms": "fast"}}),
    ),
    "a misspelt limit": Case(
        VALIDATE, 2,
        ("objective.constraints.max_size: unknown key", "Did you mean 'max_size_mb'"),
        lambda folder: write_space(folder, objective={"constraints": {"max_size": 10}}),
    ),
    "images larger than memory": Case(
        VALIDATE, 2, ("bad.yaml", "Lower batch_size or data.image_size"),
        lambda folder: (
            [(folder / "images" / c).mkdir(parents=True) for c in "ab"],
            [set_file(f"images/{c}/{i}.png", b"not decoded yet")(folder)
             for c in "ab" for i in range(3)],
            write_space(folder, data={"images": "images", "image_size": [100_000, 100_000]},
                        model={"family": "cnn"}, params={"filters": 4}),
        ),
    ),
    "a missing data file": Case(
        VALIDATE, 2, ("missing.csv: data file not found", "data.path"),
        lambda folder: write_space(folder, data={"path": "missing.csv", "target": "y"}),
    ),
    "an unknown built-in dataset": Case(
        VALIDATE, 2, ("data.builtin: unknown dataset 'diabetis'", "Did you mean 'diabetes'?"),
        lambda folder: write_space(folder, data={"builtin": "diabetis"}),
    ),
    # Data files
    "NPZ with a 0-d x": Case(
        VALIDATE, 2, ("bad.npz: array x is a single value",), npz(np.array(5.0), np.arange(3))
    ),
    "NPZ with zero features": Case(
        VALIDATE, 2, ("bad.npz: array x has shape (30, 0)",),
        npz(np.zeros((30, 0)), np.arange(30) % 2),
    ),
    "NPZ with several targets per row": Case(
        VALIDATE, 2, ("bad.npz: array y has shape (30, 2)", "one-hot rows"),
        npz(np.ones((30, 3)), np.ones((30, 2))),
    ),
    "a Parquet column of lists": Case(
        VALIDATE, 2, ("bad.parquet: column 'tags'", "one number or one text value per row"),
        lambda folder: (
            pd.DataFrame({"tags": [[1, 2]] * 30, "y": np.arange(30.0)}).to_parquet(
                folder / "bad.parquet"),
            write_space(folder, data={"path": "bad.parquet", "target": "y"}),
        ),
    ),
    "a stray text cell in a numeric column": Case(
        VALIDATE, 2, ("bad.csv: column 'f1' holds numbers except in 1 row", "row 7 '12a'"),
        csv(pd.DataFrame({**ROWS, "f1": [*range(7), "12a", *range(22)], "y": np.arange(30.0)})),
    ),
    "values near 1e300": Case(
        VALIDATE, 2, ("bad.csv: column 'f0' holds values too large", "float32"),
        csv(pd.DataFrame({**ROWS, "f0": np.linspace(1e299, 1e300, 30), "y": np.arange(30.0)})),
    ),
    "a target column that is not there": Case(
        VALIDATE, 2, ("bad.csv: unknown target column 'label'", "data.target"),
        csv(pd.DataFrame({**ROWS, "y": np.arange(30.0)}), target="label"),
    ),
    "too few rows per class for the split": Case(
        VALIDATE, 2, ("bad.csv: the validation split holds 3 of the 12 rows", "4 classes"),
        csv(pd.DataFrame({"f0": np.arange(12.0), "y": ["a", "b", "c", "d"] * 3})),
    ),
    # Storages
    "a storage that does not exist": Case(
        ("status", "--storage", "sqlite:///nowhere/sub/x.db"), 3,
        ("sqlite:///nowhere/sub/x.db", "does not exist (nothing was created)"),
    ),
    "an in-memory storage": Case(
        ("best", "tiny", "--storage", "sqlite:///:memory:"), 3, ("in-memory SQLite database",)
    ),
    "a password with a raw @": Case(
        ("status", "--storage", "postgresql://me:p4ss@w0rd@127.0.0.1/test"), 3,
        ("postgresql://me:***@127.0.0.1/test", "%40"),
    ),
    "an unreachable server": Case(
        ("status", "--storage", "postgresql://postgres@127.0.0.1:1/test"), 3,
        ("cannot open storage postgresql://postgres@127.0.0.1:1/test",),
    ),
    "a server database that does not exist": Case(
        ("status", "--storage", SERVERS["postgresql"][0].format("no_such_db")), 3,
        ('database "no_such_db" does not exist',),
    ),
    "a damaged SQLite file (status)": Case(
        ("status", "--storage", DB), 3,
        ("studies.db", "database disk image is malformed", "integrity_check"),
        corrupt(range(2, 34)),
    ),
    "a damaged SQLite file (best)": Case(
        ("best", "tiny", "--storage", DB), 3,
        ("studies.db failed: database disk image is malformed", "integrity_check"),
        corrupt(range(11, 15)),
    ),
    "a damaged SQLite file (report)": Case(
        ("report", "tiny", "--storage", DB, "--format", "json"), 3,
        ("studies.db failed: database disk image is malformed",),
        corrupt(range(11, 15)),
    ),
    # Studies
    "a study that does not exist": Case(
        ("best", "nope", "--storage", DB), 2, ("no study named 'nope'", "studies there: tiny")
    ),
    "resuming a study that does not exist": Case(
        ("resume", "nope", "--storage", DB), 2, ("no study named 'nope'",)
    ),
    "a copy named to climb out of its folder": Case(
        ("export", "tiny", "--storage", DB, "--to", "sqlite:///copy.db", "--as", "../evil name"),
        2, ("--as '../evil name'", "letters, digits"),
    ),
    "an import named to climb out of its folder": Case(
        ("import", "tiny", "--from", DB, "--storage", "sqlite:///copy.db", "--as", "a/../b"),
        2, ("--as 'a/../b'",),
    ),
    "delete without --yes and no terminal": Case(
        ("delete", "tiny", "--storage", DB), 2, ("not deleting study 'tiny'", "--yes")
    ),
    "resume after the data file changed": Case(
        ("resume", "bad", "--storage", DB, "--trials", "1"), 2,
        ("small.csv", "changed since the study began", "--accept-changed-data"),
        study_on_a_csv_that_then_changes,
    ),
    # Where commands write
    "report into a missing folder": Case(
        ("report", "tiny", "--storage", DB, "--out", "no/such/report.html"), 2,
        ("--out no/such/report.html", "the folder no/such does not exist"),
    ),
    "report onto a folder": Case(
        ("report", "tiny", "--storage", DB, "--out", "model"), 2, ("--out model: a folder",)
    ),
    "export-model into a folder of other files": Case(
        ("export-model", "tiny", "--storage", DB, "--out", "."), 2,
        ("--out .: it exists, holds other files and is not an exported model",),
    ),
    "export-model where nothing can be written": Case(
        ("export-model", "tiny", "--storage", DB, "--out", "/proc/dlboost-model"), 2,
        ("--out /proc/dlboost-model: cannot write in /proc",),
    ),
    "export-model --smallest-within without a percent sign": Case(
        ("export-model", "tiny", "--storage", DB, "--out", "model", "--smallest-within", "1"), 2,
        ("--smallest-within", "'1': a margin in percent of the best trial's score", "1%"),
    ),
    "export-model --smallest-within with an ensemble": Case(
        ("export-model", "tiny", "--storage", DB, "--out", "model", "--smallest-within", "1%",
         "--ensemble", "2"), 2,
        ("--smallest-within", "picks one trial, the smallest"),
    ),
    "export-model onto a file": Case(
        ("export-model", "tiny", "--storage", DB, "--out", "rows.csv"), 2,
        ("--out rows.csv", "rows.csv is a file"),
    ),
    # Exported models and predict
    "predict with a damaged dlboost_model.json": Case(
        ("predict", "model", "rows.csv", "--out", "p.csv"), 2,
        ("dlboost_model.json: not a readable model description", "export-model"),
        set_file("model/dlboost_model.json", b"{not json"),
    ),
    "predict without model.keras": Case(
        ("predict", "model", "rows.csv", "--out", "p.csv"), 2, ("model.keras is missing",),
        lambda folder: (folder / "model" / "model.keras").unlink(),
    ),
    "predict into a missing folder": Case(
        ("predict", "model", "rows.csv", "--out", "no/p.csv"), 2,
        ("--out no/p.csv", "the folder no does not exist"),
    ),
    "predict onto a folder": Case(
        ("predict", "model", "rows.csv", "--out", "model"), 2, ("--out model: a folder",)
    ),
    "predict over its own input": Case(
        ("predict", "model", "rows.csv", "--out", "./rows.csv"), 2,
        ("--out rows.csv: the input file itself",),
    ),
    "predict a table model on an NPZ": Case(
        ("predict", "model", "rows.npz", "--out", "p.csv"), 2,
        ("rows.npz: this model was trained on a table", "CSV or Parquet"),
        lambda folder: np.savez(folder / "rows.npz", x=np.ones((3, 10))),
    ),
    "predict rows with inf": Case(
        ("predict", "model", "inf.csv", "--out", "p.csv"), 2,
        ("inf.csv: column 'age' has 1 rows with inf", "replace it with a number"),
        lambda folder: pd.read_csv(folder / "rows.csv").assign(
            age=[np.inf, *[0.01] * 19]).to_csv(folder / "inf.csv", index=False),
    ),
    # The dashboard
    "an empty dashboard token": Case(
        ("dashboard", "--storage", DB, "--host", "0.0.0.0", "--token", ""), 2, ("token",)
    ),
    "a short dashboard token": Case(
        ("dashboard", "--storage", DB, "--host", "0.0.0.0", "--token", "short"), 2,
        ("a dashboard token of 5 characters", "at least 16"),
    ),
    "a dashboard port out of range": Case(
        ("dashboard", "--storage", DB, "--port", "70000"), 2, ("--port", "65535")
    ),
    "a dashboard host that does not resolve": Case(
        ("dashboard", "--storage", DB, "--host", "no-such-host.invalid", "--new-token"), 2,
        ("no-such-host.invalid",),
    ),
    "a dashboard on a storage that does not exist": Case(
        ("dashboard", "--storage", "sqlite:///nowhere.db"), 3, ("does not exist",)
    ),
}
# fmt: on


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gets_a_clean_answer_and_changes_nothing(base, tmp_path, case):
    folder = tmp_path / "case"
    shutil.copytree(base, folder)
    case.setup(folder)
    before = snapshot(folder)
    db = f"sqlite:///{folder / 'studies.db'}"
    done = run_in(folder, *(db if arg == DB else arg for arg in case.args))
    said = done.stderr + done.stdout
    assert done.returncode == case.exit, said
    for fragment in case.says:
        assert fragment in said, said
    assert "Traceback" not in said
    # Nothing before the error: no progress line, no library's log line.
    assert said.startswith(("error: ", "Usage: ")), said
    assert len(said) < 2000, said  # one paragraph, not a dump of what it was given
    assert snapshot(folder) == before
