"""The command line: help, exit codes, error messages, light imports, status/best/validate."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import yaml

import dlboost_search
from conftest import TINY_SPACE, cli_command, cli_env
from dlboost_search.spaces import space_from_dict
from dlboost_search.storage import open_storage
from dlboost_search.testing import synthetic_study

COMMANDS = ["start", "resume", "status", "best", "validate", "export-model", "predict"]


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory) -> str:
    """A real two-trial study, shared by the read-only tests of this module."""
    folder = tmp_path_factory.mktemp("finished")
    (folder / "space.yaml").write_text(
        yaml.safe_dump({**TINY_SPACE, "search": {**TINY_SPACE["search"], "trials": 2}})
    )
    url = f"sqlite:///{folder / 'studies.db'}"
    result = subprocess.run(
        cli_command("start", "space.yaml", "--storage", url, "-q"),
        cwd=folder, env=cli_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return url


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help_with_an_example(run_cli, command):
    result = run_cli(command, "--help")
    assert result.returncode == 0
    assert "Example" in result.stdout


def test_version_prints_the_package_version(run_cli):
    result = run_cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"dlboost-search {dlboost_search.__version__}\n"


@pytest.mark.parametrize(
    ("command", "flag", "help_start"),
    [("delete", "--yes -y", "Delete without"), ("report", "--publish", "Also write")],
)
def test_help_shows_flags_bare_and_arguments_by_their_metavar(run_cli, command, flag, help_start):
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    assert f" {command} [OPTIONS] NAME" in result.stdout  # the usage line
    assert "<bool>" not in result.stdout and "{" not in result.stdout
    # A flag takes no value: nothing stands between it and its help.
    assert re.search(r"\s+".join([*map(re.escape, flag.split()), help_start]), result.stdout)


@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["--version"],
        ["status"],
        ["best", "tiny"],
        ["validate", "space.yaml"],
        ["validate", "custom.yaml"],  # a builder that imports Keras: checked without running it
    ],
)
def test_light_commands_do_not_import_tensorflow(tmp_path, write_space, args):
    write_space()
    write_space("custom.yaml", model={"family": "custom", "builder": "my_models:build"})
    (tmp_path / "my_models.py").write_text(
        "import keras\n\n\ndef build(params, input_shape, task, n_outputs):\n"
        "    return keras.Sequential([keras.Input(input_shape), keras.layers.Dense(n_outputs)])\n"
    )
    code = (
        "import sys\n"
        "from dlboost_search.cli import main\n"
        f"sys.argv = ['dlboost-search', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        "print('TENSORFLOW' if 'tensorflow' in sys.modules else 'LIGHT')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=cli_env(), capture_output=True, text=True
    )
    assert result.stdout.strip().endswith("LIGHT"), result.stdout + result.stderr


def test_status_lists_each_study_with_its_trials(run_cli, finished_study):
    result = run_cli("status", "--storage", finished_study)
    assert result.returncode == 0, result.stderr
    study = optuna.load_study(study_name="tiny", storage=finished_study)
    row = next(line for line in result.stdout.splitlines() if "tiny" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    complete = sum(t.state.name == "COMPLETE" for t in study.trials)
    pruned = sum(t.state.name == "PRUNED" for t in study.trials)
    assert cells[:5] == ["tiny", str(complete), str(pruned), "0", "0"]
    assert cells[5] == f"{study.best_value:.6g}"


LONG_NAME = "diabetes-mlp-with-a-name-as-long-as-an-experiment-log-would-give-it-" + "x" * 40


@pytest.fixture
def long_named_study(storage) -> optuna.Study:
    space = space_from_dict({**TINY_SPACE, "name": LONG_NAME}, "space.yaml")
    return synthetic_study(space, storage, 5)


def test_status_piped_gives_whole_names_and_values(tmp_path, storage, long_named_study):
    env = {key: value for key, value in cli_env().items() if key != "COLUMNS"}  # as in a pipe
    result = subprocess.run(
        cli_command("status", "--storage", storage), cwd=tmp_path, env=env,
        capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert storage in result.stdout  # the title, unwrapped
    row = next(line for line in result.stdout.splitlines() if LONG_NAME in line)
    assert f"{long_named_study.best_value:.6g}" in row and "minimize" in row


def test_status_as_json(run_cli, storage, long_named_study):
    result = run_cli("status", "--storage", storage, "--format", "json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["storage"] == storage
    [study] = report["studies"]
    trials = long_named_study.trials
    assert study["name"] == LONG_NAME and study["direction"] == "minimize"
    assert study["complete"] == sum(t.state.name == "COMPLETE" for t in trials)
    assert study["failed"] == sum(t.state.name == "FAIL" for t in trials)
    assert study["best_value"] == pytest.approx(long_named_study.best_value)
    assert study["best_trial"] == long_named_study.best_trial.number


def test_status_as_json_of_an_empty_storage(run_cli, storage):
    open_storage(storage, create=True)
    result = run_cli("status", "--storage", storage, "--format", "json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"storage": storage, "studies": []}


def test_status_of_an_empty_storage_says_how_to_start(run_cli, storage):
    open_storage(storage, create=True)
    result = run_cli("status", "--storage", storage)
    assert result.returncode == 0
    assert "no studies" in result.stdout and "dlboost-search start" in result.stdout


def test_status_of_a_storage_that_does_not_exist_creates_nothing(run_cli, tmp_path):
    result = run_cli("status", "--storage", f"sqlite:///{tmp_path / 'typo' / 'sub' / 'x.db'}")
    assert result.returncode == 3
    assert "does not exist (nothing was created)" in result.stderr
    assert "dlboost-search start" in result.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("fmt", ["json", "yaml"])
def test_best_reports_what_the_storage_holds(run_cli, finished_study, fmt):
    result = run_cli("best", "tiny", "--storage", finished_study, "--format", fmt)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout) if fmt == "json" else yaml.safe_load(result.stdout)
    best = optuna.load_study(study_name="tiny", storage=finished_study).best_trial
    assert report["best"]["value"] == pytest.approx(best.value)
    assert report["best"]["trial"] == best.number
    assert report["best"]["params"]["units"] == best.params["units"]
    assert report["best"]["params"]["layers"] == 1  # fixed in the space, not sampled
    assert report["best"]["params"]["optimizer"] == "adam"  # a default, neither sampled nor fixed
    assert report["best"]["epochs_trained"] == best.user_attrs["epochs_trained"]
    assert report["best"]["engine"] == "epoch_loop"


def test_best_table(run_cli, finished_study):
    result = run_cli("best", "tiny", "--storage", finished_study)
    assert result.returncode == 0
    assert "best val_loss" in result.stdout and "learning_rate" in result.stdout


def test_best_of_a_missing_study_lists_the_existing_ones(run_cli, finished_study):
    result = run_cli("best", "tinny", "--storage", finished_study)
    assert result.returncode == 2
    assert "no study named 'tinny'" in result.stderr and "tiny" in result.stderr
    assert "Traceback" not in result.stderr


def test_best_of_a_study_without_completed_trials(run_cli, storage):
    study = optuna.create_study(study_name="tiny", storage=storage)
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    result = run_cli("best", "tiny", "--storage", storage)
    assert result.returncode == 2
    assert "no completed trial" in result.stderr and "1 failed" in result.stderr


def test_the_end_of_a_run_says_what_to_run_next_on_its_storage(run_cli, write_space, storage):
    space = write_space(search={"trials": 1})
    result = run_cli("start", str(space), "--storage", storage)
    assert result.returncode == 0, result.stderr
    hints = re.findall(r"`(dlboost-search [^`]*)`", result.stdout)
    assert hints == [
        f"dlboost-search best tiny --storage {storage}",
        f"dlboost-search report tiny --storage {storage}",
        f"dlboost-search status --storage {storage}",
    ]
    followed = run_cli(*hints[0].split()[1:])  # as the user would, from the same folder
    assert followed.returncode == 0, followed.stderr
    assert not (Path(storage.removeprefix("sqlite:///")).parent / "storage").exists()


def test_the_end_of_a_run_on_the_default_storage_needs_no_storage_option(run_cli, write_space):
    result = run_cli("start", str(write_space(search={"trials": 1})))
    assert result.returncode == 0, result.stderr
    assert "`dlboost-search best tiny`" in result.stdout
    assert "--storage" not in result.stdout


def test_resume_of_a_study_made_elsewhere_says_what_to_do(run_cli, storage):
    optuna.create_study(study_name="foreign", storage=storage)
    result = run_cli("resume", "foreign", "--storage", storage)
    assert result.returncode == 2
    assert (
        "not created by dlboost-search" in result.stderr and "--study-name foreign" in result.stderr
    )


def test_validate_accepts_a_good_space_and_touches_no_storage(run_cli, write_space, tmp_path):
    result = run_cli("validate", str(write_space()))
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout and "353 training rows" in result.stdout
    assert not (tmp_path / "storage").exists()


def test_validate_prints_the_spaces_own_words_as_written(run_cli, write_space):
    """Rich would read [true, false] or [draft] as its markup and drop them."""
    choices = {"type": "categorical", "choices": [True, False]}
    space = write_space("[draft]space.yaml", params={**TINY_SPACE["params"], "batch_norm": choices})
    result = run_cli("validate", str(space))
    assert result.returncode == 0, result.stderr
    assert f"ok {space}:" in result.stdout
    assert '"choices": [true, false]' in result.stdout
    result = run_cli("validate", "[draft]nowhere.yaml")
    assert result.returncode == 2 and "[draft]nowhere.yaml" in result.stderr


def test_validate_describes_the_hyperband_backend(run_cli, write_space):
    space = write_space(search={"backend": "hyperband", "factor": 3})
    result = run_cli("validate", str(space))
    assert result.returncode == 0, result.stderr
    assert "keras-tuner's Hyperband (factor 3, 1 iteration), up to 4 epochs per trial" in (
        result.stdout
    )
    assert "sampler" not in result.stdout and "pruner" not in result.stdout
    # The Optuna backend is described by its sampler and pruner.
    result = run_cli("validate", str(write_space()))
    assert "3 trials with tpe sampler and median pruner" in result.stdout


def test_validate_rejects_a_bad_space_with_file_key_and_fix(run_cli, write_space, tmp_path):
    space = write_space(params={"units": {"type": "int", "low": 64, "high": 8}})
    result = run_cli("validate", str(space))
    assert result.returncode == 2
    assert (
        str(space) in result.stderr and "params.units" in result.stderr and "swap" in result.stderr
    )
    assert "Traceback" not in result.stderr


def test_bad_space_writes_nothing_to_storage(run_cli, write_space, tmp_path):
    space = write_space(params={"dropout": {"type": "float", "low": 0.0, "high": 1.5}})
    result = run_cli("start", str(space))
    assert result.returncode == 2
    assert "params.dropout.high" in result.stderr
    assert not (tmp_path / "storage").exists()


def test_missing_data_file_fails_before_the_study_exists(run_cli, write_space, storage, tmp_path):
    space = write_space(data={"path": "missing.csv", "target": "y"})
    result = run_cli("start", str(space), "--storage", storage)
    assert result.returncode == 2
    assert "missing.csv: data file not found" in result.stderr
    assert result.stdout == ""  # no progress display for a study that never started
    assert optuna.get_all_study_names(storage) == []


def test_a_metric_the_data_cannot_produce_stops_before_any_trial(
    run_cli, write_space, storage, tmp_path
):
    """The task of a CSV is known only once it is read; the check still comes first."""
    rows = "\n".join(f"{i % 7},{i % 3},{'yes' if i % 2 else 'no'}" for i in range(40))
    (tmp_path / "d.csv").write_text("a,b,label\n" + rows + "\n")
    space = write_space(data={"path": "d.csv", "target": "label"}, objective={"metric": "val_mae"})
    result = run_cli("start", str(space), "--storage", storage)
    assert result.returncode == 2
    assert "a binary model does not log 'val_mae'" in result.stderr
    assert optuna.get_all_study_names(storage) == []


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("studies.db", "For an SQLite file write 'sqlite:///studies.db'"),
        (
            "sqlite:////proc/no-such-dir/studies.db",
            "no storage at sqlite:////proc/no-such-dir/studies.db",
        ),
        (
            "postgresql://root:secret@127.0.0.1:1/test",
            "cannot open storage postgresql://root:***@127.0.0.1:1/test",
        ),
    ],
)
def test_unusable_storage_exits_3_with_the_url_masked(run_cli, url, expected):
    result = run_cli("status", "--storage", url)
    assert result.returncode == 3
    assert expected in result.stderr
    assert "secret" not in result.stderr and "Traceback" not in result.stderr


def test_storage_from_the_environment(tmp_path, finished_study):
    env = {**cli_env(), "DLBOOST_STORAGE": finished_study}
    result = subprocess.run(
        cli_command("status"), cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0 and "tiny" in result.stdout


def test_debug_shows_the_traceback(run_cli):
    result = run_cli("--debug", "validate", "nowhere.yaml")
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "SpaceError" in result.stderr


def test_default_storage_is_storage_studies_db_in_the_current_directory(
    run_cli, tmp_path: Path, finished_study
):
    assert run_cli("import", "tiny", "--from", finished_study).returncode == 0
    assert (tmp_path / "storage" / "studies.db").is_file()
    result = run_cli("status")
    assert result.returncode == 0 and "tiny" in result.stdout


def copy_of(finished_study: str, folder: Path) -> str:
    shutil.copy(finished_study.removeprefix("sqlite:///"), folder / "copy.db")
    return f"sqlite:///{folder / 'copy.db'}"


def test_delete_removes_the_study_and_its_hyperband_state_only(run_cli, finished_study, tmp_path):
    url = copy_of(finished_study, tmp_path)
    optuna.create_study(study_name="other", storage=open_storage(url))
    for name in ("tiny", "other"):  # what the Hyperband backend keeps beside the file
        (tmp_path / f"{name}.keras-tuner").mkdir()
        (tmp_path / f"{name}.keras-tuner" / "oracle.json").write_text("{}")
    result = run_cli("delete", "tiny", "--storage", url, "--yes")
    assert result.returncode == 0, result.stderr
    assert "deleted study 'tiny'" in result.stdout and "2 complete" in result.stdout
    assert optuna.get_all_study_names(url) == ["other"]
    assert not (tmp_path / "tiny.keras-tuner").exists()
    assert (tmp_path / "other.keras-tuner" / "oracle.json").is_file()


@pytest.mark.parametrize(("answer", "kept"), [(b"n\n", True), (b"y\n", False)])
def test_delete_asks_on_a_terminal(finished_study, tmp_path, answer, kept):
    url = copy_of(finished_study, tmp_path)
    controller, terminal = pty.openpty()
    process = subprocess.Popen(
        cli_command("delete", "tiny", "--storage", url), cwd=tmp_path, env=cli_env(),
        stdin=terminal, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(terminal)
    os.write(controller, answer)
    out, err = process.communicate(timeout=120)
    os.close(controller)
    assert "Delete study 'tiny'" in out and "There is no undo" in out
    assert process.returncode == (1 if kept else 0), err
    assert optuna.get_all_study_names(url) == (["tiny"] if kept else [])
