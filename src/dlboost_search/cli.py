"""The `dlboost-search` command: parse, call one function, print.

Only our own errors become clean one-paragraph messages with their exit codes (see errors.py);
`--debug` shows the traceback instead. TensorFlow is imported by worker processes only, never
here, so `--help`, `status`, `best` and `validate` stay fast.
"""

from __future__ import annotations

import functools
import json
import math
import sys
from collections.abc import Callable
from typing import Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from dlboost_search.errors import DlboostError, StorageError, StudyError

__all__ = [
    "app",
    "main",
]

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

StudyNameArgument = typer.Argument(..., metavar="NAME", help="Study name.", show_default=False)
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
    "continues up to it. Default: search.trials from the space (50 when it gives neither "
    "trials nor a timeout). Not for search.backend: hyperband, whose schedule sets the trials.",
    show_default=False,
)
TimeoutOption = typer.Option(
    None,
    "--timeout",
    help="Time budget: the total time the study searches, over all its runs (600, 90s, 10m, "
    "1.5h). Once spent no new trial starts and the running ones finish; with --trials, "
    "whichever comes first. Default: search.timeout from the space.",
    show_default=False,
)
WorkersOption = typer.Option(
    "1",
    "--workers",
    "-w",
    metavar="N|auto",
    help="Worker processes to run on this machine, each training one model at a time; they "
    "share the cores, and the GPUs in turn. auto: one per GPU (see --gpus-per-worker), or "
    "one per core on a machine without GPUs. More machines join with `dlboost-search worker`.",
)
GpusPerWorkerOption = typer.Option(
    None,
    "--gpus-per-worker",
    help="The share of one GPU each worker takes: 0.5 runs two workers per GPU, each limited "
    "to half its memory. Default: a GPU each with --workers auto, else the GPUs shared evenly.",
    show_default=False,
)
RayOption = typer.Option(
    None,
    "--ray",
    metavar="ADDRESS|auto|local",
    help="Run the --workers as tasks on a Ray cluster, each with --cpus-per-worker CPUs and "
    "--gpus-per-worker of a GPU: the cluster at ADDRESS (its head, host:port), the one this "
    "machine is a node of (auto, or $RAY_ADDRESS), or a Ray instance started for this run "
    'alone (local). Needs `pip install "dlboost-search[ray]"`; a study on more than one '
    "node lives in PostgreSQL or MySQL.",
    show_default=False,
)
CpusPerWorkerOption = typer.Option(
    None,
    "--cpus-per-worker",
    help="With --ray: the CPUs Ray reserves for each worker, and its TensorFlow threads. "
    "Default: 1.",
    show_default=False,
)
RecycleOption = typer.Option(
    50,
    "--recycle-every",
    min=1,
    help="Trials per worker process before a fresh one replaces it (keeps memory flat).",
)
QuietOption = typer.Option(False, "--quiet", "-q", help="No progress display or summary.")
AcceptChangedDataOption = typer.Option(
    False,
    "--accept-changed-data",
    help="Go on although a data file changed since the study began (the study records it). "
    "Without it such a study is refused: its trials were scored on the old data.",
)
DashboardOption = typer.Option(
    None,
    "--dashboard",
    min=0,
    max=65535,
    help="Also serve optuna-dashboard on 127.0.0.1 at this port while the study runs.",
    show_default=False,
)


def _handles_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except DlboostError as exc:
            _fail(exc)
        except KeyboardInterrupt:
            err.print("interrupted.")
            raise typer.Exit(130) from None
        except Exception as exc:
            failure = _storage_failure(exc, kwargs)
            if failure is None or _state["debug"]:
                raise
            _fail(failure)

    return wrapper


def _fail(exc: DlboostError) -> None:
    if _state["debug"]:
        raise exc
    err.print(f"[bold red]error:[/bold red] {escape(str(exc))}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code) from None


def _storage_failure(exc: Exception, options: dict[str, Any]) -> StorageError | None:
    """A database error met after the storage opened (a damaged SQLite file, a server that
    went away), maybe wrapped by Optuna, as a StorageError naming the storages the command was
    given; None for any other error, which is a bug and keeps its traceback."""
    if "sqlalchemy" not in sys.modules:
        return None
    import sqlalchemy.exc

    from dlboost_search.storage import (
        SERVER_CHECK,
        SQLITE_DAMAGE,
        driver_reason,
        masked,
        storage_url,
    )

    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, sqlalchemy.exc.DBAPIError):
        cause = cause.__cause__
    if cause is None:
        return None
    urls = [storage_url(options.get("storage"))] if "storage" in options else []
    urls += [options[key] for key in ("to", "from_url") if options.get(key)]
    check = [SQLITE_DAMAGE if url.startswith("sqlite") else SERVER_CHECK for url in urls]
    return StorageError(
        f"storage {' or '.join(masked(url) for url in urls)} failed: {driver_reason(cause)}. "
        + "; ".join(dict.fromkeys(check)).rstrip(".")
        + "."
    )


def _print_version(asked: bool) -> None:
    if asked:
        from dlboost_search import __version__

        out.print(f"dlboost-search {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of errors."),
    version: bool = typer.Option(
        False,
        "--version",
        callback=_print_version,
        is_eager=True,
        expose_value=False,
        help="Print the version and exit.",
    ),
) -> None:
    _state["debug"] = debug


@app.command()
@_handles_errors
def start(
    space_file: str = typer.Argument(..., metavar="SPACE.yaml", help="Search-space YAML file."),
    trials: int | None = TrialsOption,
    timeout: str | None = TimeoutOption,
    storage: str | None = StorageOption,
    study_name: str | None = typer.Option(
        None, "--study-name", help="Study name to use instead of the space's `name`."
    ),
    workers: str = WorkersOption,
    gpus_per_worker: float | None = GpusPerWorkerOption,
    ray: str | None = RayOption,
    cpus_per_worker: float | None = CpusPerWorkerOption,
    recycle_every: int = RecycleOption,
    quiet: bool = QuietOption,
    dashboard: int | None = DashboardOption,
    accept_changed_data: bool = AcceptChangedDataOption,
    artifacts: str | None = typer.Option(
        None,
        "--artifacts",
        help="Where trial models go: a folder (shared by every machine that runs trials), or "
        "s3://BUCKET for S3-compatible object storage (?endpoint_url=URL, or "
        "$AWS_ENDPOINT_URL). The study records it. Default: search.artifacts, else "
        "NAME.artifacts/ beside the SQLite file.",
        show_default=False,
    ),
) -> None:
    """Run (or continue) the study a search space describes, then print the best parameters.

    Running it again with the same space continues the same study up to --trials finished
    trials; it never starts over.

    Example: `dlboost-search start search_spaces/diabetes_mlp.yaml --trials 80 --workers 2`
    """
    from dlboost_search import runner
    from dlboost_search.devices import parse_workers
    from dlboost_search.spaces import load_space, space_from_dict
    from dlboost_search.storage import storage_url

    count = parse_workers(workers)
    seconds = _seconds(timeout)
    url = storage_url(storage)
    space = load_space(space_file)
    if study_name:
        space = space_from_dict({**space.to_dict(), "name": study_name}, space_file)
    _, study = _run_study(
        url,
        quiet,
        space,
        dashboard,
        lambda on_event: runner.start(
            space, url, target=trials, timeout=seconds, workers=count,
            gpus_per_worker=gpus_per_worker, recycle_every=recycle_every, on_event=on_event,
            source=space_file,
            accept_changed_data=accept_changed_data, ray=ray, cpus_per_worker=cpus_per_worker,
            artifacts=artifacts,
        ),
    )  # fmt: skip
    if not quiet:
        _print_result(study, url, space)


@app.command()
@_handles_errors
def resume(
    name: str = StudyNameArgument,
    trials: int | None = typer.Option(
        None,
        "--trials",
        min=1,
        help="Target number of finished (complete or pruned) trials. Default: the target the "
        "study was last run to.",
        show_default=False,
    ),
    timeout: str | None = typer.Option(
        None,
        "--timeout",
        help="A new time budget: the total time the study searches, earlier runs included "
        "(600, 90s, 10m, 1.5h); to search 10 more minutes, give the time it has searched plus "
        "10m (a spent budget says how much that is). Default: the budget it was last given.",
        show_default=False,
    ),
    storage: str | None = StorageOption,
    workers: str = WorkersOption,
    gpus_per_worker: float | None = GpusPerWorkerOption,
    ray: str | None = RayOption,
    cpus_per_worker: float | None = CpusPerWorkerOption,
    recycle_every: int = RecycleOption,
    quiet: bool = QuietOption,
    dashboard: int | None = DashboardOption,
    accept_changed_data: bool = AcceptChangedDataOption,
) -> None:
    """Continue a study from the storage alone: it remembers its space, data, target and
    time budget, and the time it has searched.

    Example: `dlboost-search resume diabetes-mlp --storage sqlite:///storage/studies.db`
    """
    _, study, url, space = _continue(
        name, storage, trials, workers, recycle_every, quiet, dashboard, accept_changed_data,
        timeout=_seconds(timeout), gpus_per_worker=gpus_per_worker, ray=ray,
        cpus_per_worker=cpus_per_worker,
    )  # fmt: skip
    if not quiet:
        _print_result(study, url, space)


@app.command()
@_handles_errors
def worker(
    name: str = StudyNameArgument,
    storage: str | None = StorageOption,
    workers: str = WorkersOption,
    gpus_per_worker: float | None = GpusPerWorkerOption,
    ray: str | None = RayOption,
    cpus_per_worker: float | None = CpusPerWorkerOption,
    recycle_every: int = RecycleOption,
    quiet: bool = QuietOption,
    accept_changed_data: bool = AcceptChangedDataOption,
) -> None:
    """Join a running study from this machine: train its trials until the study has its
    target, or its time budget is spent.

    The storage must be one every machine reaches (PostgreSQL or MySQL/MariaDB); the study's
    stored space tells the worker what to train, and its data paths must exist here too. A
    worker that dies loses only its running trial, which another worker re-runs.

    Example: `dlboost-search worker diabetes-mlp --storage postgresql://user@db-host/studies -w 2`
    """
    summary, _, url, _ = _continue(
        name, storage, None, workers, recycle_every, quiet, None, accept_changed_data,
        joining=True, gpus_per_worker=gpus_per_worker, ray=ray, cpus_per_worker=cpus_per_worker,
    )  # fmt: skip
    if not quiet:
        from dlboost_search.storage import storage_option

        out.print(
            escape(
                f"study {name!r} has {summary.finished} finished trials; this worker is done. "
                f"See `dlboost-search best {name}{storage_option(url)}`."
            ),
            soft_wrap=True,
        )


def _continue(
    name: str,
    storage: str | None,
    trials: int | None,
    workers: str,
    recycle_every: int,
    quiet: bool,
    dashboard_port: int | None,
    accept_changed_data: bool,
    joining: bool = False,
    timeout: float | None = None,
    gpus_per_worker: float | None = None,
    ray: str | None = None,
    cpus_per_worker: float | None = None,
) -> tuple[Any, Any, str, Any]:
    """What `resume` and `worker` share: go on with a stored study. A joining worker samples
    from a random stream of its own, since others work on the study beside it."""
    from dlboost_search import runner
    from dlboost_search.devices import parse_workers
    from dlboost_search.storage import load_study, storage_url
    from dlboost_search.study import space_of

    count = parse_workers(workers)
    url = storage_url(storage)
    study = load_study(name, url)
    space = space_of(study)
    summary, _ = _run_study(
        url,
        quiet,
        space,
        dashboard_port,
        lambda on_event: runner.resume(
            study, url, space, target=trials, timeout=timeout, workers=count,
            gpus_per_worker=gpus_per_worker, recycle_every=recycle_every, on_event=on_event,
            joining=joining,
            accept_changed_data=accept_changed_data, ray=ray, cpus_per_worker=cpus_per_worker,
        ),
    )  # fmt: skip
    return summary, study, url, space


def _seconds(timeout: str | None) -> float | None:
    """--timeout in seconds; a bad duration is a usage error (exit 2)."""
    if timeout is None:
        return None
    from dlboost_search.spaces import parse_duration

    try:
        return parse_duration(timeout)
    except ValueError as exc:
        raise typer.BadParameter(f"{timeout!r}: {exc}.", param_hint="--timeout") from None


def _run_study(
    url: str,
    quiet: bool,
    space: Any,
    dashboard_port: int | None,
    run: Callable[[Any], Any],
) -> tuple[Any, Any]:
    """Run with the progress display (unless quiet); return the run's summary and the study.
    Once the study runs (its checks passed, it is stored), serve the dashboard beside it if
    asked, and at the end publish the report to it, whatever way the run ended."""
    running: list[Any] = []  # the study, once it runs

    from dlboost_search import events

    def on_event(event: events.Event) -> None:
        if isinstance(event, events.StudyRunning) and not running:
            running.append(event.study)
            if dashboard_port is not None:
                from dlboost_search import dashboard

                _, address = dashboard.serve(url, "127.0.0.1", dashboard_port, token=None)
                out.print(dashboard.describe(url, address))

    try:
        if quiet:
            return run(on_event), running[0]
        from dlboost_search.progress import StudyProgress

        with StudyProgress(
            out, space.objective.metric, space.direction, space.objective.constraints
        ) as progress:
            return run(lambda event: (on_event(event), progress(event))), running[0]
    finally:
        if running:
            _publish(running[0], space)


def _publish(study: Any, space: Any) -> bool:
    """Best-parameter note and importance plots into the dashboard; False if nothing to show."""
    from dlboost_search import reports

    try:
        view = reports.snapshot(study)
        report = reports.build_report(view, space)
    except DlboostError:  # no completed trial: nothing to publish
        return False
    except KeyError:  # the study is gone: a space its workers refused leaves none behind
        return False
    reports.publish(study, report, reports.figures(view, report))
    return True


def _print_result(study: Any, url: str, space: Any) -> None:
    from dlboost_search.reports import best_of
    from dlboost_search.storage import masked, storage_option

    name = study.study_name
    try:
        report = best_of(study, space)
    except StudyError as exc:
        out.print(escape(str(exc)))
        return
    best = report["best"]
    out.print(
        f"\n[bold]best {report['metric']}[/bold] {best['value']:.6g} "
        f"(trial {best['trial']}, {best['epochs_trained']} epochs)"
    )
    _print_whole(_params_table(best["params"]))
    on = storage_option(url)
    out.print(
        escape(f"stored in {masked(url)} as study ") + f"[bold]{name}[/bold]. "
        + escape(
            f"See `dlboost-search best {name}{on}`, `dlboost-search report {name}{on}` and "
            f"`dlboost-search status{on}`."
        ),
        soft_wrap=True,  # commands to copy, whole on their line
    )  # fmt: skip


@app.command()
@_handles_errors
def status(
    storage: str | None = StorageOption,
    format: str = typer.Option("table", "--format", "-f", help="table or json."),
) -> None:
    """Every study in the storage: its trials by state, best value and last activity.

    Example: `dlboost-search status --format json > studies.json`
    """
    from dlboost_search.storage import masked, storage_url
    from dlboost_search.study import all_summaries

    if format not in ("table", "json"):
        raise typer.BadParameter(f"{format!r}: use table or json", param_hint="--format")
    url = storage_url(storage)
    summaries = all_summaries(url)
    if format == "json":
        studies = [
            {
                "name": s.name, "direction": s.direction, "complete": s.complete,
                "pruned": s.pruned, "failed": s.failed, "running": s.running,
                "best_value": s.best_value, "best_trial": s.best_trial,
                "infeasible": s.infeasible,
                "last_activity": s.last_activity.isoformat() if s.last_activity else None,
                "devices": list(s.devices),
            }
            for s in summaries
        ]  # fmt: skip
        sys.stdout.write(json.dumps({"storage": masked(url), "studies": studies}, indent=2) + "\n")
        return
    if not summaries:
        out.print(
            f"no studies in {masked(url)} yet. Start one with `dlboost-search start SPACE.yaml`."
        )
        return
    table = Table(title=f"studies in {masked(url)}")
    # The devices trials ran on, once any ran on a GPU: CPU-only storages keep their table.
    on_gpus = any(d.startswith("gpu") for s in summaries for d in s.devices)
    # Complete trials over objective.constraints, once any study has one.
    limited = any(s.infeasible for s in summaries)
    for column in (
        "study",
        "complete",
        *(["over limits"] if limited else []),
        "pruned",
        "failed",
        "running",
        "best value",
        "direction",
        "last activity",
        *(["devices"] if on_gpus else []),
    ):
        table.add_column(
            column, justify="right" if column not in ("study", "direction", "devices") else "left"
        )
    for s in summaries:
        table.add_row(
            s.name, str(s.complete), *([str(s.infeasible)] if limited else []),
            str(s.pruned), str(s.failed), str(s.running),
            _best_shown(s),
            s.direction,
            s.last_activity.strftime("%Y-%m-%d %H:%M:%S") if s.last_activity else "-",
            *([" ".join(s.devices) or "-"] if on_gpus else []),
        )  # fmt: skip
    _print_whole(table)


def _best_shown(summary: Any) -> str:
    if summary.best_value is not None:
        return f"{summary.best_value:.6g}"
    return "none within limits" if summary.infeasible else "-"


def _print_whole(table: Table) -> None:
    """A table as wide as the terminal; elsewhere (a pipe, a file) as wide as its longest
    values and title, since a script or a log needs every name and value whole."""
    if out.is_terminal:
        out.print(table)
        return
    from rich.cells import cell_len
    from rich.measure import Measurement

    table.min_width = cell_len(str(table.title or ""))
    width = Measurement.get(out, out.options.update_width(1_000_000), table).maximum
    Console(file=out.file, width=width).print(table)


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
    name: str = StudyNameArgument,
    storage: str | None = StorageOption,
    format: str = typer.Option("table", "--format", "-f", help="table, json or yaml."),
) -> None:
    """The best trial of a study: its value and every parameter it used.

    Example: `dlboost-search best diabetes-mlp --format json > best.json`
    """
    from dlboost_search.reports import best_of
    from dlboost_search.storage import load_study, storage_url

    if format not in ("table", "json", "yaml"):
        raise typer.BadParameter(f"{format!r}: use table, json or yaml", param_hint="--format")
    report = best_of(load_study(name, storage_url(storage)))
    if format == "json":
        sys.stdout.write(json.dumps(report, indent=2) + "\n")
    elif format == "yaml":
        import yaml

        sys.stdout.write(yaml.safe_dump(report, sort_keys=False))
    else:
        out.print(
            f"[bold]{name}[/bold]: best {report['metric']} {report['best']['value']:.6g} "
            f"(trial {report['best']['trial']})"
        )
        _print_whole(_params_table(report["best"]["params"]))


@app.command()
@_handles_errors
def validate(
    space_file: str = typer.Argument(..., metavar="SPACE.yaml", help="Search-space YAML file."),
) -> None:
    """Check a search space and its data without training anything or touching storage.

    Example: `dlboost-search validate search_spaces/my_space.yaml`
    """
    from dlboost_search.data import prepare, prepare_streamed
    from dlboost_search.devices import visible_gpus
    from dlboost_search.runner import check_data, mixed_precision_problem
    from dlboost_search.spaces import format_duration, load_space
    from dlboost_search.training import choose_engine

    space = load_space(space_file)
    warning = check_data(space, space_file)
    # Said, not refused: the space may be meant for a machine with a GPU; `start` here refuses.
    problem = mixed_precision_problem(space, visible_gpus(), "this machine")
    for said in (warning, problem and f"{problem} (`start` refuses it here.)"):
        if said:
            err.print(f"[yellow]warning:[/yellow] {escape(said)}", highlight=False, soft_wrap=True)
    notes: tuple[str, ...] = ()
    choice = choose_engine(space.training.engine, space.data)
    if choice.streamed:
        prepared = prepare_streamed(space.data, space.search.seed or 0)
        summary, notes = prepared.summary(), prepared.notes
    elif space.data.images:  # decoding the images needs TensorFlow: left to the workers
        summary = f"images in {space.data.images}, resized to {space.data.image_size}"
    else:
        prepared = prepare(space.data, space.search.seed or 0)
        summary, notes = prepared.summary(), prepared.notes
    # The file's own words (names, choices such as [true, false]) are no rich markup.
    out.print("[green]ok[/green] " + escape(f"{space_file}: study {space.name!r}, {summary}"))
    for note in (choice.line(), *notes):
        out.print(Text(f"data: {note}"), soft_wrap=True, highlight=False)
    table = Table("parameter", "searched as")
    for name, spec in space.params.items():
        table.add_row(Text(name), Text(json.dumps(spec.model_dump(exclude_defaults=True))))
    _print_whole(table)
    objective = f"objective: {space.direction} {space.objective.metric}"
    search = space.search
    within = f" within {format_duration(search.timeout)} of search" if search.timeout else ""
    if search.backend == "hyperband":
        how = (
            f"keras-tuner's Hyperband (factor {search.factor}, {search.hyperband_iterations} "
            f"iteration{'s' if search.hyperband_iterations > 1 else ''}), up to "
            f"{space.training.max_epochs} epochs per trial{within}: its brackets set the number "
            f"of trials and the epochs each trains, a promoted configuration going on from its "
            f"parent's checkpoint."
        )
    else:
        trials = search.trial_target()
        budget = " and ".join(
            ([f"{trials} trials"] if trials else [])
            + ([f"{format_duration(search.timeout)} of search"] if search.timeout else [])
        )
        how = (
            f"up to {space.training.max_epochs} epochs per trial; {budget} with "
            f"{search.sampler} sampler and {search.pruner} pruner."
        )
    out.print(escape(f"{objective}; {how}"))


@app.command()
@_handles_errors
def report(
    name: str = StudyNameArgument,
    storage: str | None = StorageOption,
    out_file: str | None = typer.Option(
        None,
        "--out",
        "-o",
        help="File to write. Default: NAME-report.html for html; standard output for md and json.",
        show_default=False,
    ),
    format: str | None = typer.Option(
        None,
        "--format",
        "-f",
        help="html (self-contained, opens offline), md or json. Default: from --out's "
        "extension, else html.",
        show_default=False,
    ),
    publish: bool = typer.Option(
        False,
        "--publish",
        help="Also write the report into optuna-dashboard: the study's note and its "
        "importance plots (replacing the previous ones).",
    ),
) -> None:
    """Best parameters, top trials, parameter importances (fANOVA and PED-ANOVA), plots of the
    search and how much pruning saved, as one file to share.

    Example: `dlboost-search report diabetes-mlp --out diabetes.html --publish`
    """
    from pathlib import Path

    from dlboost_search import outputs, reports
    from dlboost_search.storage import load_study, storage_url

    suffixes = {".html": "html", ".htm": "html", ".md": "md", ".json": "json"}
    fmt = format or (suffixes.get(Path(out_file).suffix.lower()) if out_file else None) or "html"
    if fmt not in ("html", "md", "json"):
        raise typer.BadParameter(f"{fmt!r}: use html, md or json", param_hint="--format")
    if out_file is None and fmt == "html":
        out_file = f"{name}-report.html"
    if out_file is not None:
        outputs.check_file(Path(out_file))
    url = storage_url(storage)
    study = load_study(name, url)
    view = reports.snapshot(study)
    content = reports.build_report(view)
    plots = reports.figures(view, content) if fmt == "html" or publish else {}
    text = {
        "html": lambda: reports.to_html(content, plots),
        "md": lambda: reports.to_markdown(content),
        "json": lambda: reports.to_json(content),
    }[fmt]()
    if out_file is None:
        sys.stdout.write(text)
    else:
        Path(out_file).write_text(text, encoding="utf-8")
        err.print(f"wrote {out_file}")
    if publish:
        reports.publish(study, content, plots)
        err.print(f"published the report to study {name!r}: see `dlboost-search dashboard`")


@app.command()
@_handles_errors
def delete(
    name: str = StudyNameArgument,
    storage: str | None = StorageOption,
    yes: bool = typer.Option(False, "--yes", "-y", help="Delete without asking (for scripts)."),
) -> None:
    """Delete a study: its trials, stored space and dashboard notes (and, for the Hyperband
    backend, keras-tuner's state kept for it). Asks first; nothing else changes.

    There is no undo: `dlboost-search export NAME --to sqlite:///copy.db` keeps a copy.

    Example: `dlboost-search delete diabetes-mlp --yes`
    """
    from dlboost_search.storage import load_study, masked, storage_url
    from dlboost_search.study import delete_study, summarize

    url = storage_url(storage)
    study = load_study(name, url)
    s = summarize(study)
    what = (
        f"study {name!r} in {masked(url)} ({s.complete} complete, {s.pruned} pruned, "
        f"{s.failed} failed, {s.running} running trials)"
    )
    if not yes:
        if not sys.stdin.isatty():
            raise StudyError(
                f"not deleting {what} without asking, and there is no terminal to ask on: add "
                f"--yes to delete it."
            )
        if not typer.confirm(f"Delete {what}? There is no undo", default=False):
            err.print("nothing deleted.")
            raise typer.Exit(1)
    removed = delete_study(study, url)
    out.print(
        f"deleted {what}" + (f" and keras-tuner's state in {removed}" if removed else "") + ".",
        soft_wrap=True,
        highlight=False,
    )


AsOption = typer.Option(
    None, "--as", help="Name of the copy, when it must differ from NAME.", show_default=False
)


@app.command()
@_handles_errors
def export(
    name: str = StudyNameArgument,
    to: str = typer.Option(..., "--to", help="Storage URL to copy the study into."),
    storage: str | None = StorageOption,
    as_name: str | None = AsOption,
) -> None:
    """Copy a study into another storage: trials, intermediate values, attributes, its stored
    space and target, dashboard notes. The source is only read; `resume` continues the copy.

    Example (bring a cluster's study home):
    `dlboost-search export digits-mlp --storage postgresql://me@db-host/studies --to sqlite:///storage/studies.db`
    """
    _copy(name, storage_from=storage, storage_to=to, as_name=as_name)


@app.command("import")
@_handles_errors
def import_(
    name: str = StudyNameArgument,
    from_url: str = typer.Option(..., "--from", help="Storage URL to copy the study from."),
    storage: str | None = StorageOption,
    as_name: str | None = AsOption,
) -> None:
    """Copy a study from another storage into this one (--storage): `export` seen from here.

    Example: `dlboost-search import digits-mlp --from sqlite:///laptop.db`
    """
    _copy(name, storage_from=from_url, storage_to=storage, as_name=as_name)


def _copy(name: str, storage_from: str | None, storage_to: str | None, as_name: str | None):
    from dlboost_search import transfer
    from dlboost_search.storage import masked, storage_url

    source, destination = storage_url(storage_from), storage_url(storage_to)
    trials = transfer.copy(name, source, destination, as_name)
    out.print(
        f"copied study {name!r} ({trials} trials) from {masked(source)} to {masked(destination)}"
        + (f" as {as_name!r}" if as_name else "")
        + f". Continue it there with `dlboost-search resume {as_name or name} --storage "
        f"{masked(destination)}`.",
        soft_wrap=True,
    )


@app.command()
@_handles_errors
def merge(
    name: str = typer.Argument(
        ..., metavar="NAME", help="Study name in the --from storage.", show_default=False
    ),
    from_url: str = typer.Option(..., "--from", help="Storage URL of the other copy."),
    storage: str | None = StorageOption,
    as_name: str | None = typer.Option(
        None,
        "--as",
        help="Name of this storage's copy, when it differs from NAME (as `import --as` or "
        "`export --as` named it).",
        show_default=False,
    ),
) -> None:
    """Combine two copies of one study run apart (say, on two machines without a shared
    database): the trials of the --from copy that this storage's copy lacks are added to it,
    none twice, and the report in its dashboard note is written again. Both must have the
    same search space. Run it again: it adds nothing new.

    Example: `dlboost-search merge digits-mlp --from sqlite:///laptop.db --as digits-laptop`
    """
    from dlboost_search import transfer
    from dlboost_search.storage import masked, storage_url

    source, destination = storage_url(from_url), storage_url(storage)
    result = transfer.merge(name, source, destination, as_name)
    # As at the end of a run: the note must not describe the study before the merge.
    published = result.added > 0 and _publish(result.study, result.space)
    out.print(
        f"merged study {name!r} from {masked(source)} into "
        + (f"{as_name!r} in " if as_name else "")
        + f"{masked(destination)}: {result.added} trials added, {result.already_there} "
        f"already there"
        + (
            f", {result.skipped_unfinished} running or waiting there left out"
            if result.skipped_unfinished
            else ""
        )
        + "."
        + (" The dashboard note now reports the merged study." if published else ""),
        soft_wrap=True,
    )


@app.command("export-model")
@_handles_errors
def export_model(
    name: str = StudyNameArgument,
    out_dir: str = typer.Option(
        ...,
        "--out",
        "-o",
        help="Folder to write the model into (replaced if it holds an earlier export).",
    ),
    storage: str | None = StorageOption,
    refit_all: bool = typer.Option(
        False,
        "--refit-all",
        help="Retrain on the training and validation rows together "
        "(the validation score then measures rows the model has seen).",
    ),
    ensemble: int = typer.Option(
        1,
        "--ensemble",
        "-k",
        min=1,
        help="Export the K best trials (stored models, or retrained) and average their "
        "predictions; the card compares the ensemble with the best trial alone.",
    ),
    smallest_within: str | None = typer.Option(
        None,
        "--smallest-within",
        metavar="PERCENT",
        help="Export the trial with the fewest parameters whose score is within PERCENT "
        "(e.g. 1%) of the best trial's, instead of the best.",
    ),
) -> None:
    """Save the best trial's model with what prediction needs: model.keras, the
    preprocessing (columns, scaling, categories, class labels) and a Markdown model card.

    The model is the one the search stored for the trial (search.keep_models); a trial
    without one, or any with --refit-all, retrains from scratch for the epochs at which it
    scored best. It says which it did. To copy a study into another storage instead, see
    `export`.

    Example: `dlboost-search export-model diabetes-mlp --out models/diabetes --ensemble 3`
    """
    from pathlib import Path

    from dlboost_search import shipping
    from dlboost_search.storage import storage_url

    fraction = None if smallest_within is None else _percent(smallest_within, ensemble)
    meta = shipping.export_model(
        name, storage_url(storage), Path(out_dir), refit_all=refit_all, ensemble=ensemble,
        smallest_within=fraction,
        on_progress=lambda line: err.print(line, highlight=False, soft_wrap=True),
    )  # fmt: skip
    metric = meta["objective"]["metric"]
    best_alone = meta["members"][0]["validation_score"]
    scores = f"{metric} {meta['validation_score']:.5g}"
    if ensemble > 1:
        scores += f" for the ensemble, {best_alone:.5g} for the best trial alone"
    validation = meta["validation"]
    scores += (
        f"; the exported model has {shipping.describe_validation(validation)} on the "
        f"{validation['rows']} validation rows"
    )
    out.print(
        f"wrote {out_dir}/ ({shipping.MODEL_FILE}, {shipping.META_FILE}, {shipping.CARD_FILE}): "
        f"{scores}. Predict with `dlboost-search predict {out_dir} DATA_FILE --out "
        f"predictions.csv`.",
        soft_wrap=True, highlight=False,
    )  # fmt: skip


def _percent(text: str, ensemble: int) -> float:
    """--smallest-within's margin as a fraction: "1%" -> 0.01."""
    hint = "--smallest-within"
    if ensemble > 1:
        raise typer.BadParameter(
            "picks one trial, the smallest; an ensemble averages the K best. Give one of the two.",
            param_hint=hint,
        )
    number = text.strip().removesuffix("%")
    try:
        fraction = float(number) / 100
    except ValueError:
        fraction = math.nan
    if not text.strip().endswith("%") or not 0 <= fraction < 1:
        raise typer.BadParameter(
            f"{text!r}: a margin in percent of the best trial's score, from 0% up to (not "
            f"including) 100%, e.g. 1% or 0.5%.",
            param_hint=hint,
        )
    return fraction


@app.command()
@_handles_errors
def predict(
    model_dir: str = typer.Argument(..., help="Folder written by `export-model`."),
    data_file: str = typer.Argument(
        ...,
        help="Rows to predict: CSV/Parquet with the training columns (the target may be "
        "there and is ignored), NPZ with an array x for array-trained models, or an image "
        "file or folder for models trained on an image folder.",
    ),
    out_file: str = typer.Option(
        "predictions.csv",
        "--out",
        "-o",
        help="CSV, or Parquet (.parquet), one row per input "
        "row: prediction, and a probability per class for classifiers.",
    ),
) -> None:
    """Predict with an exported model, preparing the rows exactly as in training.

    Example: `dlboost-search predict models/diabetes new_patients.csv --out predictions.csv`
    """
    from pathlib import Path

    from dlboost_search import shipping

    rows = shipping.predict(
        Path(model_dir), Path(data_file), Path(out_file),
        on_note=lambda line: out.print(escape(line), highlight=False, soft_wrap=True),
    )  # fmt: skip
    out.print(f"wrote {rows} predictions to {out_file}", highlight=False)


@app.command()
@_handles_errors
def dashboard(
    storage: str | None = StorageOption,
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind."),
    port: int = typer.Option(
        8080, "--port", min=0, max=65535, help="Port to listen on (0: any free port)."
    ),
    token: str | None = typer.Option(
        None,
        "--token",
        envvar="DLBOOST_DASHBOARD_TOKEN",
        help="Require this token (16 characters or more) on every request. Needed to bind "
        "beyond loopback.",
        show_default=False,
    ),
    new_token: bool = typer.Option(
        False, "--new-token", help="Require a random token, printed once in the URL."
    ),
    allow_host: list[str] | None = typer.Option(
        None,
        "--allow-host",
        help="Also answer requests addressed to this name (a DNS alias, a reverse proxy's "
        "name); repeatable. Other names get 403: that keeps web pages from reaching the "
        "dashboard through DNS rebinding.",
        show_default=False,
    ),
) -> None:
    """Serve optuna-dashboard on the storage: studies, trials, plots, and the reports that
    `start` and `report --publish` write there. Ctrl-C stops it.

    Loopback only by default: the dashboard has no login and can delete studies, so any
    other --host needs --token or --new-token. It answers only requests addressed to --host,
    localhost or an --allow-host name.

    Example: `dlboost-search dashboard --port 8080` then open the URL it prints
    """
    import time

    from dlboost_search import dashboard as dashboard_module
    from dlboost_search.storage import storage_url

    token = dashboard_module.chosen_token(token, new_token)
    url = storage_url(storage)
    server, address = dashboard_module.serve(url, host, port, token, allow_host or ())
    out.print(dashboard_module.describe(url, address), soft_wrap=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        server.shutdown()


def main() -> None:
    app()
