"""What a study found: best parameters, top trials, importances, plots, pruning savings.

One report, three renderings (JSON, Markdown, self-contained HTML) and one publication: the
Markdown as the study's note in optuna-dashboard and the importance plots as its figures.
This module never imports TensorFlow.
"""

from __future__ import annotations

import html
import json
import statistics
from typing import TYPE_CHECKING, Any

from dlboost_search import records
from dlboost_search.errors import StudyError
from dlboost_search.study import space_of, summarize

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

    from dlboost_search.spaces import SearchSpace

__all__ = [
    "FIGURE_IDS",
    "best_of",
    "build_report",
    "figures",
    "publish",
    "snapshot",
    "to_html",
    "to_json",
    "to_markdown",
]

TOP_TRIALS = 10
# Importance evaluators, named as users meet them: the dashboard shows PED-ANOVA,
# fANOVA is the classic one. They often disagree; the report shows both side by side.
EVALUATORS = {"fANOVA": "fanova", "PED-ANOVA": "ped_anova"}
FIGURE_IDS = {"fANOVA": "dlboost-importance-fanova", "PED-ANOVA": "dlboost-importance-ped-anova"}
# fANOVA's forest costs about n^1.4 (here: 1.2 s for 100 trials, 22 s for 800), so past this many
# completed trials it sees a fixed random sample of them; PED-ANOVA is cheap and sees them all.
FANOVA_SAMPLE = 300
# More learning curves than this draw as a solid block and slow the browser down.
CURVE_SAMPLE = 200


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of a study, read from its storage once.

    Every evaluator and plot reads all trials again; on a database each read costs a round
    trip per call (seconds at 5,000 trials), in memory nearly nothing.
    """
    copy = _in_memory(study, study.get_trials(deepcopy=False))
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    return copy


def _in_memory(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    import optuna

    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    copy.add_trials(trials)
    return copy


def _sample(trials: list[Any], size: int) -> list[Any]:
    """At most `size` of `trials`, drawn the same way every time, in their original order."""
    import random

    if len(trials) <= size:
        return trials
    kept = set(random.Random(0).sample(range(len(trials)), size))
    return [t for i, t in enumerate(trials) if i in kept]


def _evaluator(name: str) -> Any:
    from optuna.importance import FanovaImportanceEvaluator, PedAnovaImportanceEvaluator

    if name == "fANOVA":
        return FanovaImportanceEvaluator(seed=0)
    return PedAnovaImportanceEvaluator()


def best_of(study: optuna.Study, space: SearchSpace | None = None) -> dict[str, Any]:
    """The best trial with every parameter it used, and the study's trial counts: what
    `best` prints, and the head of every report. Raises StudyError without a completed trial.
    `space`: the study's, when the caller has it (else it is read from the study)."""
    from optuna.trial import TrialState

    summary = summarize(study)
    if summary.best_trial is None:
        reasons = sorted(
            {
                records.fail_reason(t, "no reason recorded")
                for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            }
        )
        raise StudyError(
            f"study {study.study_name!r} has no completed trial yet ({summary.pruned} pruned, "
            f"{summary.failed} failed, {summary.running} running), so there is no best trial."
            + (f" Failure reasons: {'; '.join(reasons[:3])}." if reasons else "")
            + f" Run `dlboost-search resume {study.study_name}` to add trials."
        )
    space = space_of(study) if space is None else space
    best = study.best_trial
    return {
        "study": study.study_name,
        "metric": space.objective.metric,
        "direction": summary.direction,
        "trials": {
            "complete": summary.complete,
            "pruned": summary.pruned,
            "failed": summary.failed,
            "running": summary.running,
        },
        "best": {
            "trial": best.number,
            "value": best.value,
            "params": space.resolve(best.params),
            **{key: best.user_attrs.get(key) for key in records.TRAINING},
        },
    }


def build_report(study: optuna.Study, space: SearchSpace | None = None) -> dict[str, Any]:
    """The whole report as plain data (what `report --format json` prints)."""
    from optuna.trial import TrialState

    report = best_of(study, space)
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    ranked = sorted(complete, key=lambda t: t.value, reverse=report["direction"] == "maximize")
    return {
        **report,
        "top_trials": [
            {
                "trial": t.number,
                "value": t.value,
                "params": t.params,
                "epochs_trained": t.user_attrs.get(records.EPOCHS_TRAINED),
            }
            for t in ranked[:TOP_TRIALS]
        ],  # fmt: skip
        "importances": {name: _importances(study, name, complete) for name in EVALUATORS},
        "pruning": _pruning(trials),
        "notes": _notes(report["trials"]),
    }


def _importances(
    study: optuna.Study, name: str, complete: list[optuna.trial.FrozenTrial]
) -> dict[str, float] | None:
    import optuna

    if len(complete) < 2 or not study.best_trial.distributions:
        return None
    if name == "fANOVA" and len(complete) > FANOVA_SAMPLE:
        study = _in_memory(study, _sample(complete, FANOVA_SAMPLE))
    try:
        importances = optuna.importance.get_param_importances(study, evaluator=_evaluator(name))
    except (ValueError, RuntimeError):  # e.g. every trial has the same parameters
        return None
    return {k: round(float(v), 4) for k, v in importances.items()}


def _pruning(trials: list[optuna.trial.FrozenTrial]) -> dict[str, Any]:
    """Epochs trained, against what the same trials would have cost without pruning.

    A pruned trial, left alone, would have trained as long as a typical completed one: the
    median epochs of the completed trials stands in for it.
    """
    from optuna.trial import TrialState

    complete = [records.epochs_trained(t) for t in trials if t.state == TrialState.COMPLETE]
    pruned = [records.epochs_trained(t) for t in trials if t.state == TrialState.PRUNED]
    others = [records.epochs_trained(t) for t in trials if t.state == TrialState.FAIL]
    typical = statistics.median(complete) if complete else 0
    trained = sum(complete) + sum(pruned) + sum(others)
    without = sum(complete) + sum(max(typical, e) for e in pruned) + sum(others)
    return {
        "epochs_trained": trained,
        "epochs_without_pruning": round(without),
        "epochs_saved_fraction": round(1 - trained / without, 3) if without else 0.0,
    }


def _notes(counts: dict[str, int]) -> list[str]:
    notes = []
    if counts["complete"] > FANOVA_SAMPLE:
        notes.append(
            f"fANOVA importances come from a fixed random sample of {FANOVA_SAMPLE} of the "
            f"{counts['complete']} completed trials (its cost grows faster than the number of "
            "trials); PED-ANOVA uses them all."
        )
    if counts["complete"] == 1:
        notes.append(
            "Only one trial has completed: its parameters are the best so far, but importances "
            "and comparisons need at least two."
        )
    if counts["running"]:
        notes.append(f"{counts['running']} trial(s) still running: this is a snapshot.")
    return notes


def figures(study: optuna.Study, report: dict[str, Any]) -> dict[str, go.Figure]:
    """The report's plots, by title. Plots that need more trials than the study has are left out."""
    import optuna.visualization as vis

    plots: dict[str, go.Figure] = {}
    for name, importances in report["importances"].items():
        if importances:
            plots[f"Parameter importances ({name})"] = _importance_figure(name, importances)
    plots["Optimization history"] = vis.plot_optimization_history(study)
    curves = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    shown = _sample(curves, CURVE_SAMPLE)
    title = "Learning curves (intermediate values)"
    if len(shown) < len(curves):
        title += f", a random {len(shown)} of {len(curves)} trials"
    plots[title] = vis.plot_intermediate_values(_in_memory(study, shown))
    if report["trials"]["complete"] >= 2 and study.best_trial.distributions:
        plots["Parallel coordinates"] = vis.plot_parallel_coordinate(study)
        plots["Slice plots"] = vis.plot_slice(study)
    return plots


def _importance_figure(name: str, importances: dict[str, float]) -> go.Figure:
    # Drawn from the report's numbers: computing them again, as optuna's plot would, costs
    # as much as the report itself.
    import plotly.graph_objects as go

    ranked = sorted(importances.items(), key=lambda item: item[1])
    figure = go.Figure(
        go.Bar(
            x=[v for _, v in ranked],
            y=[k for k, _ in ranked],
            orientation="h",
            text=[f"{v:.2f}" for _, v in ranked],
            textposition="outside",
        )
    )
    figure.update_layout(
        title=f"Parameter importances ({name})",
        xaxis_title="importance (sums to 1)",
        margin={"l": 120},
    )
    return figure


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def to_markdown(report: dict[str, Any]) -> str:
    best, counts = report["best"], report["trials"]
    lines = [
        f"# Study `{report['study']}`",
        "",
        f"**Best {report['metric']}: {best['value']:.6g}** ({report['direction']}d) at trial "
        f"{best['trial']}: {best['epochs_trained']} epochs (best epoch {best['best_epoch']}), "
        f"{best['n_params']} parameters, {best['train_seconds']} s of training.",
        "",
        f"Trials: {counts['complete']} complete, {counts['pruned']} pruned, "
        f"{counts['failed']} failed, {counts['running']} running.",
        "",
        *[f"> {note}" for note in report["notes"]],
        "## Best parameters",
        "",
        "| parameter | value |",
        "|---|---|",
        *[f"| {k} | {_format(v)} |" for k, v in best["params"].items()],
        "",
        "## Parameter importances",
        "",
    ]
    names = list(report["importances"])
    if all(report["importances"][n] is None for n in names):
        lines.append("Importances need at least two completed trials with different parameters.")
    else:
        params = sorted(
            {p for n in names for p in (report["importances"][n] or {})},
            key=lambda p: -(report["importances"][names[0]] or {}).get(p, 0),
        )
        lines += [f"| parameter | {' | '.join(names)} |", "|---|" + "---|" * len(names)]
        for p in params:
            cells = [_format((report["importances"][n] or {}).get(p, "-")) for n in names]
            lines.append(f"| {p} | {' | '.join(cells)} |")
        lines += [
            "",
            "fANOVA measures how much of the metric's variance each parameter explains over the "
            "whole space; PED-ANOVA how much each parameter separates the best trials from the "
            "rest. They answer different questions and can disagree.",
        ]
    pruning = report["pruning"]
    lines += [
        "",
        "## Pruning",
        "",
        f"{pruning['epochs_trained']} epochs trained; about {pruning['epochs_without_pruning']} "
        f"without pruning ({pruning['epochs_saved_fraction']:.0%} saved; a pruned trial is "
        f"counted at the median length of the completed ones).",
        "",
        f"## Top {len(report['top_trials'])} trials",
        "",
        f"| trial | {report['metric']} | epochs | parameters |",
        "|---|---|---|---|",
        *[
            f"| {t['trial']} | {t['value']:.6g} | {t['epochs_trained']} | "
            f"{', '.join(f'{k}={_format(v)}' for k, v in t['params'].items())} |"
            for t in report["top_trials"]
        ],
    ]
    return "\n".join(lines) + "\n"


def to_json(report: dict[str, Any]) -> str:
    return json.dumps(report, indent=2) + "\n"


def to_html(report: dict[str, Any], plots: dict[str, go.Figure]) -> str:
    """A single HTML file that opens offline: plotly.js is inlined once, no CDN."""
    import markdown
    from plotly.offline import get_plotlyjs

    body = markdown.markdown(to_markdown(report), extensions=["tables"])
    charts = "\n".join(
        f"<section><h2>{html.escape(title)}</h2>"
        f"{figure.to_html(full_html=False, include_plotlyjs=False)}</section>"
        for title, figure in plots.items()
    )
    return (
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'>"
        f"<title>{html.escape(report['study'])}: dlboost-search report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em}</style>"
        f"<script>{get_plotlyjs()}</script></head><body>{body}{charts}</body></html>\n"
    )


def publish(study: optuna.Study, report: dict[str, Any], plots: dict[str, go.Figure]) -> None:
    """Write the report as the study's dashboard note and its importance plots as figures.

    Same ids every time: a new publication replaces the previous one instead of piling up.
    """
    import optuna_dashboard

    optuna_dashboard.save_note(study, to_markdown(report))
    for name, figure_id in FIGURE_IDS.items():
        figure = plots.get(f"Parameter importances ({name})")
        if figure is not None:
            optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id=figure_id)
