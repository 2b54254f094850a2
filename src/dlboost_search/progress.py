"""The live progress display of a running study, fed by the events of its backend."""

from __future__ import annotations

import statistics
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.text import Text

from dlboost_search import events, limits, records
from dlboost_search.spaces import ConstraintsSpec, format_duration
from dlboost_search.storage import masked, storage_option

__all__ = [
    "StudyProgress",
]


def format_params(params: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items()
    )


class StudyProgress:
    """Trials done / pruned / failed of the target, best so far, time per trial, time left
    (to the target, and of the time budget)."""

    def __init__(
        self,
        console: Console,
        metric: str,
        direction: str,
        constraints: ConstraintsSpec | None = None,
    ):
        self.console, self.metric, self.direction = console, metric, direction
        # objective.constraints: a trial over a limit is never shown as the best.
        self.constraints = constraints or ConstraintsSpec()
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[counts]}"),
            console=console,
        )
        self.task = self.bar.add_task("trials", total=1, counts="")
        self.counts = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
        self.target: int | None = 0
        self.name = self.url = ""
        # When the time budget runs out (time.monotonic()), and the budget; None: no limit.
        self.deadline: float | None = None
        self.budget: float | None = None
        self.best: tuple[float, int, dict[str, Any]] | None = None
        self.seconds: list[float] = []
        self.workers = 1
        self.on_gpus = False  # whether trials run on GPUs here: each trial's line says which
        # Trials under way, by number: what they try, the epoch they are at, when they began.
        self.running: dict[int, tuple[str, float]] = {}
        self.live = Live(self._render(), console=console, refresh_per_second=4)
        self.shown = False

    def __enter__(self) -> StudyProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.shown:
            self.live.__exit__(*exc)

    def _show(self) -> None:
        """Start drawing once the study runs: a space, data or storage refused before then
        leaves its error alone on the screen, with no empty bar above it."""
        if not self.shown:
            self.live.__enter__()
            self.shown = True

    def _render(self) -> Group:
        lines = [self.bar]
        if self.best:
            value, number, params = self.best
            lines.append(
                Text(f"best {self.metric} {value:.5g} (trial {number}): {format_params(params)}")
            )
        estimates = []
        if self.seconds:
            per_trial = statistics.median(self.seconds)
            estimates.append(f"{per_trial:.1f} s per trial (median)")
            if self.target is not None:
                left = max(0, self.target - self.counts["COMPLETE"] - self.counts["PRUNED"])
                estimates.append(f"about {_duration(per_trial * left / self.workers)} left")
        if self.deadline is not None:
            left = max(0.0, self.deadline - time.monotonic())
            estimates.append(f"{_duration(left)} of the {_duration(self.budget)} budget left")
        if estimates:
            lines.append(Text(", ".join(estimates)))
        lines += [Text(line, style="dim") for line, _ in self.running.values()]
        return Group(*lines)

    def _is_better(self, value: float) -> bool:
        if self.best is None:
            return True
        return value < self.best[0] if self.direction == "minimize" else value > self.best[0]

    def __call__(self, event: events.Event) -> None:
        if isinstance(event, events.Warned):
            self.console.print(f"[yellow]warning:[/yellow] {event.message}", highlight=False)
            return
        if isinstance(event, events.Noted):
            self.console.print(Text(f"{event.topic}: {event.message}"), highlight=False)
            return
        self._show()
        if isinstance(event, events.StudyRunning):
            summary = event.summary
            self.target = event.target
            self.name, self.url = summary.name, masked(event.url)
            self.workers = event.workers
            self.on_gpus = any(d.startswith("gpu") for d in event.devices)
            if event.budget is not None:
                self.budget = event.budget
                self.deadline = time.monotonic() + event.budget - event.searched
            self.counts = {
                "COMPLETE": summary.complete,
                "PRUNED": summary.pruned,
                "FAIL": summary.failed,
            }
            if summary.best_value is not None:
                self.best = (summary.best_value, summary.best_trial, {})
            self.bar.update(self.task, description=summary.name, total=self.target)
            self.console.print(
                f"{self.workers} worker process(es) {event.where}"
                + (f" on {', '.join(event.devices)}" if self.on_gpus else "")
                + ", "
                + (
                    "sampling reproducibly from search.seed"
                    if event.reproducible
                    else "each sampling from a random stream of its own"
                )
            )
        elif isinstance(event, events.TrialStarted):
            line = f"trial {event.number}: {format_params(event.params)}"
            self.running[event.number] = (line, time.monotonic())
        elif isinstance(event, events.EpochEnded) and event.number in self.running:
            line, started = self.running[event.number]
            self.running[event.number] = (f"{line.split(' — ')[0]} — epoch {event.epoch}", started)
        elif isinstance(event, events.TrialFinished):
            self._finished(event)
        elif isinstance(event, events.WorkerLost):
            self._lost(event.trials)
            code = event.exitcode  # None: a Ray worker, its process or node lost
            self.console.print(
                f"[red]worker died ({'lost' if code is None else f'exit code {code}'}); "
                f"trials {event.trials} closed as failed and queued to run again; starting a "
                "new worker"
            )
        elif isinstance(event, events.TrialsLost):
            self._lost(event.trials)
            self.console.print(
                f"[red]trials {event.trials} lost their worker (no heartbeat): failed and "
                "queued to run again"
            )
        elif isinstance(event, events.TrialTimedOut):
            self._lost(event.trials)
            self.console.print(
                f"[red]trials {event.trials} ran past training.trial_timeout_seconds "
                f"({event.limit} s): failed, worker replaced"
            )
        elif isinstance(event, events.TimeBudgetSpent):
            more = format_duration(event.searched + event.budget)
            self.console.print(
                f"[yellow]time budget spent[/yellow]: the study has searched "
                f"{_duration(event.searched)} of its {_duration(event.budget)} "
                f"(search.timeout); no new trial starts, the running ones finish. To search "
                f"about {_duration(event.budget)} more: `dlboost-search resume {self.name} "
                f"--timeout {more}{storage_option(self.url)}` (the total).",
                highlight=False,
            )
        elif isinstance(event, events.Stopping):
            self.console.print(
                "[yellow]stopping: closing the running trials (Ctrl-C again is ignored)..."
            )
        self.bar.update(
            self.task,
            completed=self.counts["COMPLETE"] + self.counts["PRUNED"],
            counts=(
                f"complete {self.counts['COMPLETE']}  pruned {self.counts['PRUNED']}  "
                f"failed {self.counts['FAIL']}"
            ),
        )
        self.live.update(self._render())

    def _lost(self, numbers: list[int]) -> None:
        """Trials closed as failed by the pool, not by their worker."""
        for number in numbers:
            self.running.pop(number, None)
        self.counts["FAIL"] += len(numbers)

    def _finished(self, event: events.TrialFinished) -> None:
        state, number, value, attrs = event.state, event.number, event.value, event.attrs
        self.counts[state] = self.counts.get(state, 0) + 1
        _, started = self.running.pop(number, ("", None))
        if started is not None:
            self.seconds.append(time.monotonic() - started)
        epochs = attrs.get(records.EPOCHS_TRAINED)
        if state == "FAIL":
            detail = f"[red]failed[/red]: {attrs.get(records.FAIL_REASON, 'see the log')}"
        else:
            label = "[yellow]pruned[/yellow]" if state == "PRUNED" else "complete"
            detail = f"{label} {self.metric}={value:.5g}"
        over = limits.over(self.constraints, attrs) if state == "COMPLETE" else []
        if over:
            detail += f", [yellow]over {', '.join(over)}[/yellow]"
        seconds = attrs.get(records.TRAIN_SECONDS, 0)
        device = attrs.get(records.DEVICE)
        on = f", {device}" if self.on_gpus and device else ""
        self.console.print(f"trial {number:>4} {detail} ({epochs} epochs, {seconds:.1f} s{on})")
        if state == "COMPLETE" and not over and self._is_better(value):
            self.best = (value, number, event.params)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
