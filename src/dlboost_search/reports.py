"""What a study found: best parameters, top trials, importances, plots, pruning savings.

One report, three renderings (JSON, Markdown, self-contained HTML) and one publication: the
Markdown as the study's note in optuna-dashboard and the importance plots as its figures.
This module never imports TensorFlow.
"""

from __future__ import annotations

import html
import json
import math
import statistics
from typing import TYPE_CHECKING, Any

import yaml

from dlboost_search import importance, limits, records
from dlboost_search.errors import StudyError
from dlboost_search.spaces import ConstraintsSpec
from dlboost_search.study import space_of, summarize

if TYPE_CHECKING:
    import optuna
    import plotly.graph_objects as go

    from dlboost_search.spaces import SearchSpace

__all__ = [
    "FIGURE_IDS",
    "SLICE_PARAMS",
    "TRADE_OFF_FIGURE_IDS",
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
# What a trial's model costs, against its value: the report's trade-off figures and table.
TRADE_OFF = (records.N_PARAMS, records.SIZE_MB, records.LATENCY_MS)
TRADE_OFF_NAMES = {
    records.N_PARAMS: "parameters",
    records.SIZE_MB: "size (MB)",
    records.LATENCY_MS: "latency (ms)",
}
# The Pareto fronts drawn and listed: size is the parameters' bytes, so it has no front of its own.
FRONTS = (records.N_PARAMS, records.LATENCY_MS)
# Colour and symbol of the trials within the limits, those over one, and the Pareto front.
TRADE_OFF_MARKERS = (("rgb(66,146,198)", "circle"), ("grey", "x"), ("rgb(203,24,29)", "diamond"))
# The trade-off figures' ids in the dashboard, by the measure against which they draw the value.
TRADE_OFF_FIGURE_IDS = {
    records.N_PARAMS: "dlboost-trade-off-parameters",
    records.LATENCY_MS: "dlboost-trade-off-latency",
}
# Rows of the report's Pareto-front table.
FRONT_ROWS = 20
FIGURE_IDS = {name: f"dlboost-importance-{name.lower()}" for name in importance.EVALUATORS}
# More learning curves than this draw as a solid block and slow the browser down.
CURVE_SAMPLE = 200
# Parameters per slice-plot figure: more would not fit the page's width.
SLICE_PARAMS = 4
# Worst to best: the light end stays visible on white, the best trial is the darkest.
COLOR_SCALE = [[0.0, "rgb(190,215,235)"], [0.5, "rgb(66,146,198)"], [1.0, "rgb(8,48,107)"]]


def snapshot(study: optuna.Study) -> optuna.Study:
    """An in-memory copy of a study, read from its storage once.

    Every evaluator and plot reads all trials again; on a database each read costs a round
    trip per call (seconds at 5,000 trials), in memory nearly nothing.
    """
    copy = _in_memory(study, study.get_trials(deepcopy=False))
    for key, value in study.user_attrs.items():
        copy.set_user_attr(key, value)
    for key, value in study._storage.get_study_system_attrs(study._study_id).items():
        records.set_study_record(copy, key, value)  # the stored space among them
    return copy


def _in_memory(study: optuna.Study, trials: list[optuna.trial.FrozenTrial]) -> optuna.Study:
    import optuna

    copy = optuna.create_study(study_name=study.study_name, directions=study.directions)
    copy.add_trials(trials)
    return copy


def best_of(study: optuna.Study, space: SearchSpace | None = None) -> dict[str, Any]:
    """The best feasible trial with every parameter it used, and the study's trial counts:
    what `best` prints, and the head of every report. Raises StudyError without a completed
    trial, or when none keeps to objective.constraints. `space`: the study's, when the caller
    has it (else it is read from the study)."""
    head = _head(study, space)
    if head["best"] is None:
        raise StudyError(limits.none_feasible(study, ConstraintsSpec(**head["constraints"])))
    return head


def _head(study: optuna.Study, space: SearchSpace | None) -> dict[str, Any]:
    """best_of's report, with "best" None when no complete trial keeps to the limits."""
    from optuna.trial import TrialState

    summary = summarize(study)
    if summary.complete == 0:
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
    best = limits.best_trial(study, space.objective.constraints)
    return {
        "study": study.study_name,
        "metric": space.objective.metric,
        "direction": summary.direction,
        "trials": {
            "complete": summary.complete,
            "pruned": summary.pruned,
            "failed": summary.failed,
            "running": summary.running,
            "over_limits": summary.infeasible,
        },
        "constraints": space.objective.constraints.given(),
        "best": None
        if best is None
        else {
            "trial": best.number,
            "value": best.value,
            "params": space.resolve(best.params),
            **{key: best.user_attrs.get(key) for key in records.TRAINING},
        },
    }


def build_report(study: optuna.Study, space: SearchSpace | None = None) -> dict[str, Any]:
    """The whole report as plain data (what `report --format json` prints)."""
    space = space_of(study) if space is None else space
    report = _head(study, space)
    basis = importance.basis_of(study, report["metric"])
    trials = study.get_trials(deepcopy=False)
    ranked = limits.ranked(study, space.objective.constraints)
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
        "importances": {
            name: importance.importances(study, basis, name) for name in importance.EVALUATORS
        },
        "pruning": _pruning(trials),
        "limits": _limits(study, space.objective.constraints),
        "notes": _notes(report["trials"]) + _start_up_note(space, ranked),
        "space": space.to_dict(),  # every setting, defaults included: what `resume` runs
    }


def _limits(study: optuna.Study, constraints: ConstraintsSpec) -> dict[str, Any]:
    """Each complete trial's cost (parameters, size, latency) against its value, whether it
    keeps to the limits, and the Pareto fronts of value against parameters and latency among
    the trials that do."""
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    complete = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if t.value is not None and math.isfinite(t.value)
    ]
    feasible = [t for t in complete if limits.feasible(constraints, t)]
    kept = {t.number for t in feasible}
    minimize = study.direction == StudyDirection.MINIMIZE
    return {
        "constraints": constraints.given(),
        "feasible": len(feasible),
        "trials": [
            {
                "trial": t.number,
                "value": t.value,
                **{key: t.user_attrs.get(key) for key in TRADE_OFF},
                "feasible": t.number in kept,
            }
            for t in complete
        ],
        "pareto_front": {
            key: [t.number for t in limits.pareto_front(feasible, key, minimize)] for key in FRONTS
        },
    }


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
    if counts["complete"] == 1:
        notes.append(
            "Only one trial has completed: its parameters are the best so far, but importances "
            "and comparisons need at least two."
        )
    if counts["running"]:
        notes.append(f"{counts['running']} trial(s) still running: this is a snapshot.")
    return notes


def _start_up_note(space: SearchSpace, ranked: list[optuna.trial.FrozenTrial]) -> list[str]:
    """Say so when the best trial is one TPE drew at random: the search has not yet found
    better than chance, and more trials may (trial numbers tell: TPE's first `startup()`
    trials are random)."""
    search = space.search
    if search.backend != "optuna" or search.sampler != "tpe" or not ranked:
        return []
    startup, best = search.startup(), ranked[0]
    if best.number >= startup:
        return []
    proposed = next((t for t in ranked if t.number >= startup), None)
    if proposed is None:
        found = "no trial TPE proposed has completed yet"
    else:
        found = f"TPE's best so far is trial {proposed.number} ({_format(proposed.value)}"
        if best.value:
            found += f", {abs(proposed.value - best.value) / abs(best.value):.1%} behind"
        # Measured: gaps of 2-7% were ties once both trained again with other initial
        # weights (benchmarks/README.md, "How far apart are the two best trials?").
        found += "; a gap of a few percent may come from the initial weights alone)"
    return [
        f"The best trial, {best.number}, is one of the {startup} random start-up trials "
        f"TPE draws before it models the results: {found}. More trials (`dlboost-search "
        f"resume {space.name} --trials N`) give TPE more chances to beat it."
    ]


def figures(study: optuna.Study, report: dict[str, Any]) -> dict[str, go.Figure]:
    """The report's plots, by title. Plots that need more trials than the study has are left out."""
    import optuna.visualization as vis
    from optuna.trial import TrialState

    plots: dict[str, go.Figure] = {}
    for name, found in report["importances"].items():
        if found["params"]:
            plots[f"Parameter importances ({name})"] = _importance_figure(name, found)
    plots["Optimization history"] = _history_figure(study, report["metric"])
    curves = [t for t in study.get_trials(deepcopy=False) if t.intermediate_values]
    shown = importance.sample(curves, CURVE_SAMPLE)
    title = "Learning curves (intermediate values)"
    if len(shown) < len(curves):
        title += f", a random {len(shown)} of {len(curves)} trials"
    plots[title] = vis.plot_intermediate_values(_in_memory(study, shown))
    minimize = report["direction"] == "minimize"
    for measure in FRONTS:
        figure = _trade_off_figure(report, measure)
        if figure is not None:
            plots[_trade_off_title(report, measure)] = figure
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    searched = complete[0].distributions if complete else {}
    if report["trials"]["complete"] >= 2 and searched:
        plots["Parallel coordinates"] = _recolored_lines(
            vis.plot_parallel_coordinate(study), minimize
        )
        params = sorted(searched)
        chunks = [params[i : i + SLICE_PARAMS] for i in range(0, len(params), SLICE_PARAMS)]
        for i, chunk in enumerate(chunks):
            figure = vis.plot_slice(study, params=chunk)
            title = "Slice plots" + (f" ({i + 1} of {len(chunks)})" if len(chunks) > 1 else "")
            plots[title] = _colored_by_value(figure, report["metric"], minimize)
    return plots


def _trade_off_title(report: dict[str, Any], measure: str) -> str:
    return f"Trade-off: {report['metric']} against {TRADE_OFF_NAMES[measure]}"


def _trade_off_figure(report: dict[str, Any], measure: str) -> go.Figure | None:
    """Each complete trial's value against `measure` (parameters or latency), the Pareto front
    of the feasible ones joined by a step line, trials over a limit greyed and the limit drawn;
    None when no trial recorded the measure."""
    import plotly.graph_objects as go

    found = report["limits"]
    trials = [t for t in found["trials"] if t[measure] is not None]
    if not trials:
        return None
    name, metric = TRADE_OFF_NAMES[measure], report["metric"]
    front = set(found["pareto_front"][measure])
    groups = {  # the front last, drawn on top
        "Within the limits" if found["constraints"] else "Trials": [
            t for t in trials if t["feasible"] and t["trial"] not in front
        ],
        "Over a limit": [t for t in trials if not t["feasible"]],
        "Pareto front": [t for t in trials if t["trial"] in front],
    }
    figure = go.Figure()
    for label, (color, symbol) in zip(groups, TRADE_OFF_MARKERS, strict=True):
        shown = sorted(groups[label], key=lambda t: t[measure])
        if not shown:
            continue
        figure.add_trace(
            go.Scatter(
                x=[t[measure] for t in shown],
                y=[t["value"] for t in shown],
                # The front as a step: the best value at each cost or less.
                mode="lines+markers" if label == "Pareto front" else "markers",
                line={"shape": "hv"},
                name=label,
                marker={"color": color, "symbol": symbol, "size": 8},
                text=[f"trial {t['trial']}" for t in shown],
                hovertemplate=f"%{{text}}<br>{name} %{{x:.4g}}<br>{metric} %{{y:.5g}}"
                "<extra></extra>",
            )
        )
    limit = {records.N_PARAMS: "max_params", records.LATENCY_MS: "max_latency_ms"}[measure]
    if limit in found["constraints"]:
        # A trace, not add_vline: on a log axis plotly places a line's annotation by the
        # exponent and the line itself by the value.
        value, values = found["constraints"][limit], [t["value"] for t in trials]
        figure.add_trace(
            go.Scatter(
                x=[value, value],
                y=[min(values), max(values)],
                mode="lines",
                line={"dash": "dash", "color": "black"},
                name=f"{limit} {value:g}",
                hoverinfo="skip",
            )
        )
    figure.update_layout(
        title=f"{metric} against {name}<br><sub>the Pareto front: trials within the limits "
        "that no other beats on both</sub>",
        xaxis={"title": name, "type": "log"},
        yaxis={"title": metric},
    )
    return figure


def _importance_figure(name: str, found: dict[str, Any]) -> go.Figure:
    # Drawn from the report's numbers: computing them again, as optuna's plot would, costs
    # as much as the report itself. The value sits in the axis label, where it is never cut off.
    import plotly.graph_objects as go

    ranked = list(found["params"].items())[::-1]  # most important at the top
    figure = go.Figure(
        go.Bar(
            x=[v["importance"] for _, v in ranked],
            y=[f"{p} {v['importance']:.2f}" for p, v in ranked],
            orientation="h",
            error_x={
                "type": "data",
                "symmetric": False,
                "array": [v["high"] - v["importance"] for _, v in ranked],
                "arrayminus": [v["importance"] - v["low"] for _, v in ranked],
            },
        )
    )
    figure.update_layout(
        title=f"Parameter importances ({name})<br><sub>{_basis(found)}</sub>",
        xaxis_title=(
            f"importance (sums to 1); bars: 10th-90th percentile over {found['resamples']} "
            "resamples"
        ),
        yaxis={"automargin": True},
    )
    return figure


def _basis(found: dict[str, Any]) -> str:
    """Which trials and which value importances rest on, in a line."""
    trials = f"{found['n_trials']} trials"
    if found["pruned"]:
        trials += f" ({found['complete']} complete, {found['pruned']} pruned)"
    if "sampled" in found:
        trials = f"a fixed random {found['sampled']} of {trials}"
    return f"{trials}, {found['explains']}"


def _history_figure(study: optuna.Study, metric: str) -> go.Figure:
    """Optuna's history of completed trials, with the pruned ones marked at their last value."""
    import optuna.visualization as vis
    import plotly.graph_objects as go
    from optuna.trial import TrialState

    figure = vis.plot_optimization_history(study, target_name=metric)
    pruned = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if t.intermediate_values
    ]
    if pruned:
        figure.add_trace(
            go.Scatter(
                x=[t.number for t in pruned],
                y=[t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                mode="markers",
                marker={"symbol": "x", "color": "grey", "size": 7},
                name="Pruned (value when stopped)",
            )
        )
    return figure


def _color_of(position: float) -> str:
    import plotly.colors

    return plotly.colors.sample_colorscale(COLOR_SCALE, [position])[0]


def _recolored_lines(figure: go.Figure, minimize: bool) -> go.Figure:
    # Optuna draws one line per trial, its first point at the normalized objective value, on a
    # scale whose weak end is white: recolored on COLOR_SCALE, the best line darkest.
    for trace in figure.data:
        # Optuna's "Feasible"/"Infeasible" legend entries (objective.constraints) have no points.
        if trace.mode == "lines" and trace.y[0] is not None:
            value = trace.y[0]
            trace.line.color = _color_of(1 - value if minimize else value)
            trace.opacity = 0.8
        elif trace.marker.colorscale is not None:  # the colour bar's stand-in trace
            trace.marker.colorscale = COLOR_SCALE
            trace.marker.reversescale = minimize
    return figure


def _colored_by_value(figure: go.Figure, metric: str, minimize: bool) -> go.Figure:
    # Optuna colours slice points by trial number (early trials near-white, and the best trial
    # is often an early one): coloured by the objective instead, the best darkest.
    values = [v for trace in figure.data for v in trace.y]
    for i, trace in enumerate(figure.data):
        if trace.name == "Infeasible Trial":  # Optuna's, grey: over objective.constraints
            continue
        trace.marker.update(
            color=list(trace.y),
            cmin=min(values),
            cmax=max(values),
            colorscale=COLOR_SCALE,
            reversescale=minimize,
            showscale=i == 0,
            colorbar={"title": {"text": metric}},
        )
    figure.update_layout(width=None, autosize=True)
    return figure


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def to_markdown(report: dict[str, Any]) -> str:
    best, counts = report["best"], report["trials"]
    over = f" ({counts['over_limits']} of them over a limit)" if counts.get("over_limits") else ""
    lines = [
        f"# Study `{report['study']}`",
        "",
        *_best_lines(report),
        "",
        f"Trials: {counts['complete']} complete{over}, {counts['pruned']} pruned, "
        f"{counts['failed']} failed, {counts['running']} running.",
        "",
        *[line for note in report["notes"] for line in (f"> {note}", "")],
    ]
    if best is not None:
        lines += [
            "## Best parameters",
            "",
            "| parameter | value |",
            "|---|---|",
            *[f"| {k} | {_format(v)} |" for k, v in best["params"].items()],
            "",
        ]
    lines += ["## Parameter importances", ""]
    lines += _importance_lines(report)
    pruning = report["pruning"]
    lines += [
        "",
        "## Pruning",
        "",
        f"{pruning['epochs_trained']} epochs trained; about {pruning['epochs_without_pruning']} "
        f"without pruning ({pruning['epochs_saved_fraction']:.0%} saved; a pruned trial is "
        f"counted at the median length of the completed ones).",
        "",
        *_limits_lines(report),
        f"## Top {len(report['top_trials'])} trials"
        + (" within the limits" if report["constraints"] else ""),
        "",
        f"| trial | {report['metric']} | epochs | parameters |",
        "|---|---|---|---|",
        *[
            f"| {t['trial']} | {t['value']:.6g} | {t['epochs_trained']} | "
            f"{', '.join(f'{k}={_format(v)}' for k, v in t['params'].items())} |"
            for t in report["top_trials"]
        ],
    ]
    # Readable where the study's attributes are not (the dashboard's note).
    lines += [
        "",
        "## Search space, as stored",
        "",
        "```yaml",
        yaml.safe_dump(report["space"], sort_keys=False).rstrip(),
        "```",
    ]
    return "\n".join(lines) + "\n"


def _best_lines(report: dict[str, Any]) -> list[str]:
    best, limited = report["best"], report["constraints"]
    within = (
        f"Limits (objective.constraints): "
        f"{limits.describe(ConstraintsSpec.model_validate(limited))}."
        if limited
        else ""
    )
    if best is None:
        return [f"**No trial keeps to the limits**, so there is no best trial. {within}"]
    size, latency = best.get(records.SIZE_MB), best.get(records.LATENCY_MS)
    costs = "".join(
        (
            f", {best['n_params']} parameters",
            "" if size is None else f" ({size:.3g} MB)",
            "" if latency is None else f", {latency:.3g} ms a row",
        )
    )
    rmse, mae = best.get(records.RMSE), best.get(records.MAE)
    units = (
        ""
        if rmse is None
        else f" On the validation rows, in the target's own units: RMSE {rmse:.4g}, MAE {mae:.4g}."
    )
    return [
        f"**Best {report['metric']}: {best['value']:.6g}** ({report['direction']}d) at trial "
        f"{best['trial']}: {best['epochs_trained']} epochs (best epoch {best['best_epoch']})"
        f"{costs}, {best['train_seconds']} s of training.{units}" + (f" {within}" if within else "")
    ]


def _limits_lines(report: dict[str, Any]) -> list[str]:
    """The Pareto front of value against parameters, as a table."""
    found = report["limits"]
    by_number = {t["trial"]: t for t in found["trials"]}
    front = [by_number[n] for n in found["pareto_front"][records.N_PARAMS]]
    if not front:
        return []
    among = "the trials"
    if found["constraints"]:
        among = (
            f"of the {found['feasible']} of {len(found['trials'])} complete trials within the "
            f"limits, those"
        )
    lines = [
        "## Size and latency",
        "",
        f"The Pareto front of {report['metric']} against parameters: {among} that no other "
        "beats on both, smallest first.",
        "",
        f"| trial | {report['metric']} | parameters | size (MB) | latency (ms) |",
        "|---|---|---|---|---|",
    ]
    for t in front[:FRONT_ROWS]:
        cells = [_format(t[key]) if t[key] is not None else "-" for key in TRADE_OFF]
        lines.append(f"| {t['trial']} | {t['value']:.6g} | {' | '.join(cells)} |")
    if len(front) > FRONT_ROWS:
        lines += ["", f"{len(front) - FRONT_ROWS} more in the JSON report (`limits`)."]
    return [*lines, ""]


def _importance_lines(report: dict[str, Any]) -> list[str]:
    found = report["importances"]
    ranked = {name: f for name, f in found.items() if f["params"]}
    if not ranked:
        reason = next(iter(found.values()))["too_few"]
        return [
            f"{reason} Run `dlboost-search resume {report['study']} --trials N` to add trials; "
            "no ranking is shown until then."
        ]
    names = list(ranked)
    first = ranked[names[0]]
    lines = [
        f"From {_basis(first)}. In brackets, the 10th to 90th percentile over "
        f"{first['resamples']} resamples of those trials: how far each figure can move.",
        "",
        f"| parameter | {' | '.join(names)} |",
        "|---|" + "---|" * len(names),
    ]
    for param in first["params"]:
        cells = []
        for name in names:
            figure = ranked[name]["params"].get(param)
            cells.append(
                f"{figure['importance']:.2f} ({figure['low']:.2f}-{figure['high']:.2f})"
                if figure
                else "-"
            )
        lines.append(f"| {param} | {' | '.join(cells)} |")
    lines.append("")
    for name, f in ranked.items():
        top = next(iter(f["params"]))
        lines.append(
            f"- {name}: `{top}` ranks first in {f['top_stays_first']} of {f['resamples']} "
            "resamples."
        )
    lines += [
        "",
        "fANOVA measures how much of the metric's variance each parameter explains over the "
        "whole space; PED-ANOVA how much each parameter separates the best trials from the "
        "rest. They answer different questions and can disagree.",
    ]
    return lines


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
    """Write the report as the study's dashboard note, and its importance and trade-off plots
    as figures.

    Same ids every time: a new publication replaces the previous one instead of piling up.
    """
    import optuna_dashboard

    optuna_dashboard.save_note(study, to_markdown(report))
    titles = {f"Parameter importances ({name})": id_ for name, id_ in FIGURE_IDS.items()}
    titles |= {
        _trade_off_title(report, measure): id_ for measure, id_ in TRADE_OFF_FIGURE_IDS.items()
    }
    for title, figure_id in titles.items():
        figure = plots.get(title)
        if figure is not None:
            optuna_dashboard.save_plotly_graph_object(study, figure, graph_object_id=figure_id)
