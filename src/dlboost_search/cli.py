"""The `dlboost-search` command: parse, call one function, print.

Only our own errors become clean one-paragraph messages with their exit codes (see errors.py);
`--debug` shows the traceback instead. TensorFlow is imported by worker processes only, never
here, so `--help`, `status`, `best` and `validate` stay fast.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from dlboost_search.errors import DlboostError, StudyError

app = typer.Typer(
    name="dlboost-search",
    help="Hyperparameter search for Keras models: a YAML search space in, the best "
    "parameters out, every trial kept in SQLite (or PostgreSQL/MySQL).\n\n"
    "Example: dlboost-search start search_spaces/diabetes_mlp.yaml",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="markdown",
)
out = Console()
err = Console(stderr=True)
_state = {"debug": False}

StorageOption = typer.Option(
    None,
    "--storage",
    envvar="DLBOOST_STORAGE",
    help="SQLAlchemy URL of the storage. Default: sqlite:///storage/studies.db "
    "(relative to the current directory).",
    show_default=False,
)
TrialsOption = typer.Option(
    None,
    "--trials",
    min=1,
    help="Target number of finished (complete or pruned) trials for the study; a re-run "
    "continues up to it. Default: search.trials from the space.",
    show_default=False,
)
RecycleOption = typer.Option(
    50,
    "--recycle-every",
    min=1,
    help="Trials per worker process before a fresh one replaces it (keeps memory flat).",
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress display or summary.")


def _handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DlboostError as exc:
            if _state["debug"]:
                raise
            err.print(f"[bold red]error:[/bold red] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(exc.exit_code) from None
        except KeyboardInterrupt:
            err.print("interrupted.")
            raise typer.Exit(130) from None

    return wrapper


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
) -> None:
    _state["debug"] = debug


@app.command()
@_handles_errors
def start(
    space_file: str = typer.Argument(..., metavar="SPACE.yaml", help="Search-space YAML file."),
    trials: int | None = TrialsOption,
    storage: str | None = StorageOption,
    study_name: str | None = typer.Option(
        None, "--study-name", help="Study name to use instead of the space's `name`."
    ),
    recycle_every: int = RecycleOption,
    quiet: bool = QuietOption,
) -> None:
    """Run (or continue) the study a search space describes, then print the best parameters.

    Running it again with the same space continues the same study up to --trials finished
    trials; it never starts over.

    Example: `dlboost-search start search_spaces/diabetes_mlp.yaml --trials 80`
    """
    from dlboost_search import runner
    from dlboost_search.spaces import load_space, space_from_dict
    from dlboost_search.storage import storage_url

    url = storage_url(storage)
    space = load_space(space_file)
    if study_name:
        space = space_from_dict({**space.to_dict(), "name": study_name}, space_file)
    summary = _with_progress(
        quiet,
        space,
        lambda on_event: runner.start(
            space, url, target=trials, recycle_every=recycle_every, on_event=on_event,
            source=space_file,
        ),
    )  # fmt: skip
    if not quiet:
        _print_result(summary.name, url)


@app.command()
@_handles_errors
def resume(
    name: str = typer.Argument(..., help="Study name."),
    trials: int | None = TrialsOption,
    storage: str | None = StorageOption,
    recycle_every: int = RecycleOption,
    quiet: bool = QuietOption,
) -> None:
    """Continue a study from the storage alone: it remembers its space and data.

    Example: `dlboost-search resume diabetes-mlp --storage sqlite:///storage/studies.db`
    """
    from dlboost_search import runner
    from dlboost_search.storage import storage_url
    from dlboost_search.study import resume_space

    url = storage_url(storage)
    space = resume_space(name, url)
    summary = _with_progress(
        quiet,
        space,
        lambda on_event: runner.resume(
            name, url, target=trials, recycle_every=recycle_every, on_event=on_event
        ),
    )
    if not quiet:
        _print_result(summary.name, url)


def _with_progress(quiet: bool, space: Any, run: Callable[[Any], Any]) -> Any:
    if quiet:
        return run(lambda event: None)
    from dlboost_search.progress import StudyProgress

    with StudyProgress(out, space.objective.metric, space.direction) as progress:
        return run(progress)


def _print_result(name: str, url: str) -> None:
    from dlboost_search.storage import masked

    try:
        report = _best_report(name, url)
    except StudyError as exc:
        out.print(f"no completed trial yet: {exc}")
        return
    out.print(
        f"\n[bold]best {report['metric']}[/bold] {report['value']:.6g} "
        f"(trial {report['trial']}, {report['attrs'].get('epochs_trained')} epochs)"
    )
    out.print(_params_table(report["params"]))
    out.print(
        f"stored in {masked(url)} as study [bold]{name}[/bold]. "
        f"See `dlboost-search best {name}` and `dlboost-search status`."
    )


@app.command()
@_handles_errors
def status(storage: str | None = StorageOption) -> None:
    """Every study in the storage: its trials by state, best value and last activity.

    Example: `dlboost-search status --storage sqlite:///storage/studies.db`
    """
    from dlboost_search.storage import masked, storage_url
    from dlboost_search.study import all_summaries

    url = storage_url(storage)
    summaries = all_summaries(url)
    if not summaries:
        out.print(
            f"no studies in {masked(url)} yet. Start one with `dlboost-search start SPACE.yaml`."
        )
        return
    table = Table(title=f"studies in {masked(url)}")
    for column in (
        "study",
        "complete",
        "pruned",
        "failed",
        "running",
        "best value",
        "direction",
        "last activity",
    ):
        table.add_column(
            column, justify="right" if column not in ("study", "direction") else "left"
        )
    for s in summaries:
        table.add_row(
            s.name, str(s.complete), str(s.pruned), str(s.failed), str(s.running),
            "-" if s.best_value is None else f"{s.best_value:.6g}",
            s.direction,
            s.last_activity.strftime("%Y-%m-%d %H:%M:%S") if s.last_activity else "-",
        )  # fmt: skip
    out.print(table)


def _best_report(name: str, url: str) -> dict[str, Any]:
    from optuna.trial import TrialState

    from dlboost_search.storage import load_study
    from dlboost_search.study import space_of, summarize

    study = load_study(name, url)
    summary = summarize(study)
    if summary.best_trial is None:
        raise StudyError(
            f"study {name!r} has no completed trial yet ({summary.pruned} pruned, "
            f"{summary.failed} failed, {summary.running} running). Run "
            f"`dlboost-search resume {name}` to add trials."
        )
    best = study.best_trial
    space = space_of(study)
    return {
        "study": name,
        "metric": space.objective.metric,
        "direction": summary.direction,
        "value": best.value,
        "trial": best.number,
        "params": space.resolve(best.params),
        "attrs": {k: v for k, v in best.user_attrs.items() if k != "worker"},
        "trials": {
            "complete": summary.complete,
            "pruned": summary.pruned,
            "failed": summary.failed,
        },
        "finished_at": best.datetime_complete.isoformat()
        if best.state == TrialState.COMPLETE
        else None,
    }


def _params_table(params: dict[str, Any]) -> Table:
    table = Table(show_header=True)
    table.add_column("parameter")
    table.add_column("value", justify="right")
    for key, value in params.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    return table


@app.command()
@_handles_errors
def best(
    name: str = typer.Argument(..., help="Study name."),
    storage: str | None = StorageOption,
    format: str = typer.Option("table", "--format", "-f", help="table, json or yaml."),
) -> None:
    """The best trial of a study: its value and every parameter it used.

    Example: `dlboost-search best diabetes-mlp --format json > best.json`
    """
    from dlboost_search.storage import storage_url

    if format not in ("table", "json", "yaml"):
        raise typer.BadParameter(f"{format!r}: use table, json or yaml", param_hint="--format")
    report = _best_report(name, storage_url(storage))
    if format == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif format == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(report, sort_keys=False))
    else:
        out.print(
            f"[bold]{name}[/bold]: best {report['metric']} {report['value']:.6g} "
            f"(trial {report['trial']})"
        )
        out.print(_params_table(report["params"]))


@app.command()
@_handles_errors
def validate(
    space_file: str = typer.Argument(..., metavar="SPACE.yaml", help="Search-space YAML file."),
) -> None:
    """Check a search space and its data without training anything or touching storage.

    Example: `dlboost-search validate search_spaces/my_space.yaml`
    """
    from dlboost_search.data import prepare
    from dlboost_search.spaces import load_space

    space = load_space(space_file)
    prepared = prepare(space.data, space.search.seed or 0)
    space.check_task(prepared.task, space_file)
    out.print(f"[green]ok[/green] {space_file}: study {space.name!r}, {prepared.summary()}")
    table = Table("parameter", "searched as")
    for name, spec in space.params.items():
        table.add_row(name, json.dumps(spec.model_dump(exclude_defaults=True)))
    out.print(table)
    out.print(
        f"objective: {space.direction} {space.objective.metric}; up to "
        f"{space.training.max_epochs} epochs per trial; {space.search.trials} trials with "
        f"{space.search.sampler} sampler and {space.search.pruner} pruner."
    )


def main() -> None:
    app()
