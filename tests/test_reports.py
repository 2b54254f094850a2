"""Reports (reports.py) on studies made through the storage, and the `report` command."""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path

import optuna
import optuna_dashboard
import pytest
import yaml
from optuna.trial import TrialState

from conftest import TINY_SPACE, call_wsgi, load
from dlboost_search import importance, reports
from dlboost_search.errors import StudyError
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import create_or_check, space_of
from dlboost_search.testing import synthetic_study


@pytest.fixture
def space():
    return space_from_dict({**TINY_SPACE, "name": "synthetic"}, "test")


@pytest.fixture
def study(space, storage):
    return synthetic_study(space, storage, 40, seed=1)


def test_the_report_holds_what_the_storage_holds(study):
    report = reports.build_report(study)
    best = study.best_trial
    trials = study.get_trials(deepcopy=False)
    assert report["best"]["value"] == best.value and report["best"]["trial"] == best.number
    assert report["best"]["params"]["units"] == best.params["units"]
    assert report["best"]["params"]["optimizer"] == "adam"  # a default, filled in
    assert report["best"]["epochs_trained"] == best.user_attrs["epochs_trained"]
    assert report["best"]["n_params"] == best.user_attrs["n_params"]
    for state, key in [(TrialState.COMPLETE, "complete"), (TrialState.PRUNED, "pruned"),
                       (TrialState.FAIL, "failed")]:  # fmt: skip
        assert report["trials"][key] == sum(t.state == state for t in trials)
    values = [t["value"] for t in report["top_trials"]]
    assert values == sorted(values) and values[0] == best.value and len(values) == 10


def test_both_importances_are_named_and_cover_the_searched_parameters(study):
    importances = reports.build_report(study)["importances"]
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials())
    assert complete >= importance.RANK_MIN_TRIALS  # enough: the final values, of those alone
    assert set(importances) == {"fANOVA", "PED-ANOVA"}
    for name, found in importances.items():
        assert (found["n_trials"], found["pruned"], found["epochs"]) == (complete, 0, None)
        assert found["explains"] == "each trial's final val_loss"
        assert set(found["params"]) == set(study.best_trial.params), name
        figures = found["params"].values()
        assert sum(f["importance"] for f in figures) == pytest.approx(1.0, abs=0.01)
        assert all(f["low"] <= f["importance"] <= f["high"] for f in figures)
        assert 0 <= found["top_stays_first"] <= found["resamples"] == importance.RESAMPLES
    # The synthetic value depends on learning_rate most, then units; fANOVA finds it.
    assert list(importances["fANOVA"]["params"])[:2] == ["learning_rate", "units"]


def _halving_study(space, storage, n_trials):
    """A study of `space` where only the learning rate matters, searched at random under
    successive halving (rungs at 1, 3, 9 epochs of 27): most trials are pruned."""
    study = create_or_check(space, storage)
    study.sampler = optuna.samplers.RandomSampler(seed=0)
    study.pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    noise = random.Random(0)

    def objective(trial):
        for name, spec in space.searched().items():  # suggested, and no effect
            if name != "learning_rate":
                suggest = trial.suggest_int if isinstance(spec.low, int) else trial.suggest_float
                suggest(name, spec.low, spec.high, log=spec.log)
        lr = trial.suggest_float("learning_rate", 1e-3, 1e-2, log=True)
        for step in range(27):
            value = (math.log10(lr) + 2.5) ** 2 + 1 / (step + 1) + noise.gauss(0, 0.002)
            trial.report(value, step)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return value

    study.optimize(objective, n_trials=n_trials)
    return study


def test_importances_count_the_pruned_trials_and_rank_what_matters_first(storage):
    space = space_from_dict({**TINY_SPACE, "name": "halving"}, "test")
    study = _halving_study(space, storage, 40)
    complete = sum(t.state == TrialState.COMPLETE for t in study.get_trials())
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    assert complete < importance.RANK_MIN_TRIALS  # on completed trials alone: no ranking
    report = reports.build_report(study)
    for name, found in report["importances"].items():
        assert found["n_trials"] >= importance.RANK_MIN_TRIALS, name
        assert found["pruned"] == found["n_trials"] - complete > complete, name
        # Optuna's rungs sit at steps 1, 3, 9 (epochs 2, 4, 10): the deepest enough reached.
        assert found["epochs"] in (2, 4, 10), name
        assert complete + sum(max(t.intermediate_values) >= found["epochs"] for t in pruned) < 20
        assert (
            found["explains"]
            == f"each trial's best val_loss within its first {found['epochs']} epochs"
        )
        assert next(iter(found["params"])) == "learning_rate", name
    markdown = reports.to_markdown(report)
    assert (
        f"From {report['importances']['fANOVA']['n_trials']} trials ({complete} complete"
        in markdown
    )
    assert "- fANOVA: `learning_rate` ranks first in" in markdown


def test_too_few_trials_give_no_ranking_but_the_reason(space, storage):
    study = _halving_study(space_from_dict({**TINY_SPACE, "name": "few"}, "test"), storage, 8)
    report = reports.build_report(study)
    for found in report["importances"].values():
        assert found["params"] is None and found["n_trials"] == 8
        assert found["too_few"].startswith("Too few finished trials to rank parameters: 8 (")
    markdown = reports.to_markdown(report)
    assert "a ranking needs at least 20. Run `dlboost-search resume few --trials N`" in markdown
    assert not any(
        title.startswith("Parameter importances") for title in reports.figures(study, report)
    )


def test_ties_come_out_in_the_same_order_every_time(study):
    first, again = reports.build_report(study), reports.build_report(study)
    assert reports.to_markdown(first) == reports.to_markdown(again)
    for found in first["importances"].values():
        order = [(-f["importance"], p) for p, f in found["params"].items()]
        assert order == sorted(order)


def test_figures_color_the_best_trial_darkest_and_fit_the_page(study):
    report = reports.build_report(study)
    plots = reports.figures(study, report)
    slices = [f for title, f in plots.items() if title.startswith("Slice plots")]
    assert len(slices) == 2  # six parameters, at most four a figure
    for figure in slices:
        assert figure.layout.width is None and len(figure.data) <= reports.SLICE_PARAMS
        for trace in figure.data:
            assert list(trace.marker.color) == list(trace.y) and trace.marker.reversescale
    lines = [t for t in plots["Parallel coordinates"].data if t.mode == "lines"]
    darkness = [-sum(int(float(c)) for c in t.line.color[4:-1].split(",")) for t in lines]
    best = min(range(len(lines)), key=lambda i: lines[i].y[0])  # normalized objective
    assert darkness[best] == max(darkness)
    pruned = study.get_trials(states=(TrialState.PRUNED,))
    history = plots["Optimization history"].data
    assert [len(t.x) for t in history if t.name == "Pruned (value when stopped)"] == [len(pruned)]


def test_a_snapshot_holds_the_stored_trials_and_space(study):
    view = reports.snapshot(study)
    assert view.study_name == study.study_name and view.user_attrs == study.user_attrs
    stored = study.get_trials(deepcopy=False)
    copied = view.get_trials(deepcopy=False)
    assert [(t.number, t.state, t.value, t.params, t.intermediate_values) for t in copied] == [
        (t.number, t.state, t.value, t.params, t.intermediate_values) for t in stored
    ]
    assert reports.build_report(view) == reports.build_report(study)


def test_big_studies_sample_fanova_and_learning_curves_and_say_so(space, storage, monkeypatch):
    monkeypatch.setattr(importance, "FANOVA_SAMPLE", 30)
    monkeypatch.setattr(reports, "CURVE_SAMPLE", 25)
    study = reports.snapshot(synthetic_study(space, storage, 80, seed=2))
    report = reports.build_report(study)
    fanova = report["importances"]["fANOVA"]
    assert fanova["n_trials"] > 30 and fanova["sampled"] == 30
    assert "sampled" not in report["importances"]["PED-ANOVA"]
    assert f"a fixed random 30 of {fanova['n_trials']} trials" in reports.to_markdown(report)
    assert next(iter(fanova["params"])) == "learning_rate"  # the sample still finds it
    with_curves = sum(bool(t.intermediate_values) for t in study.get_trials(deepcopy=False))
    plots = reports.figures(study, report)
    title = f"Learning curves (intermediate values), a random 25 of {with_curves} trials"
    assert len(plots[title].data) == 25


def test_pruning_savings_add_up(study):
    pruning = reports.build_report(study)["pruning"]
    trials = study.get_trials(deepcopy=False)
    assert pruning["epochs_trained"] == sum(t.user_attrs["epochs_trained"] for t in trials)
    assert pruning["epochs_without_pruning"] > pruning["epochs_trained"]
    expected = 1 - pruning["epochs_trained"] / pruning["epochs_without_pruning"]
    assert pruning["epochs_saved_fraction"] == pytest.approx(expected, abs=1e-3)


def test_a_study_with_one_trial_says_so(space, storage):
    study = synthetic_study(space, storage, 1, states=(1, 0, 0))
    report = reports.build_report(study)
    assert [f["params"] for f in report["importances"].values()] == [None, None]
    assert any("Only one trial" in note for note in report["notes"])
    markdown = reports.to_markdown(report)
    assert "Too few finished trials to rank parameters: 1 (1 complete, 0 pruned)" in markdown
    assert "Parallel coordinates" not in reports.figures(study, report)


def test_a_best_trial_from_tpe_s_random_start_up_is_said(space, storage):
    """The report says when its best trial is one TPE drew at random, and stops saying it
    once a trial TPE proposed beats it."""
    startup = space.search.startup()
    study = synthetic_study(space, storage, startup, states=(1, 0, 0))
    said = [n for n in reports.build_report(study)["notes"] if "random start-up" in n]
    assert said and "no trial TPE proposed has completed yet" in said[0]

    def add(value: float) -> None:
        best = study.best_trial
        study.add_trial(optuna.trial.create_trial(params=best.params,
                        distributions=best.distributions, value=value))  # fmt: skip

    add(study.best_value + 1.0)
    said = [n for n in reports.build_report(study)["notes"] if "random start-up" in n]
    assert said and f"TPE's best so far is trial {startup} " in said[0]
    assert f"{1.0 / abs(study.best_value):.1%} behind" in said[0]
    assert f"trial, {study.best_trial.number}, is one of the {startup}" in said[0]
    add(study.best_value - 1.0)
    assert not any("random start-up" in n for n in reports.build_report(study)["notes"])


def test_a_study_with_failed_trials_only_is_a_clear_error(space, storage):
    study = synthetic_study(space, storage, 3, states=(0, 0, 1))
    with pytest.raises(StudyError, match=r"no completed trial yet \(0 pruned, 3 failed.*nan"):
        reports.build_report(study)


def test_a_running_study_is_reported_as_a_snapshot(study):
    study.ask()  # a trial left running, as a worker would
    report = reports.build_report(study)
    assert report["trials"]["running"] == 1
    assert any("still running" in note for note in report["notes"])


def test_markdown_lists_best_parameters_and_importances_side_by_side(study):
    markdown = reports.to_markdown(reports.build_report(study))
    assert f"**Best val_loss: {study.best_value:.6g}**" in markdown
    assert "| parameter | fANOVA | PED-ANOVA |" in markdown
    assert re.search(r"\| units \| \d+ \|", markdown)


def test_html_is_self_contained(study):
    report = reports.build_report(study)
    page = reports.to_html(report, reports.figures(study, report))
    assert page.count("<script") == 1 + len(reports.figures(study, report))
    assert not re.search(r"<script[^>]+src=", page)  # plotly.js inlined, no CDN
    assert not re.search(r"<link[^>]+href=\"?https?:", page)
    for title in ("Parameter importances (fANOVA)", "Parameter importances (PED-ANOVA)",
                  "Optimization history", "Learning curves", "Parallel coordinates",
                  "Slice plots"):  # fmt: skip
        assert title in page


def test_publish_replaces_the_previous_report(study):
    report = reports.build_report(study)
    plots = reports.figures(study, report)
    reports.publish(study, report, plots)
    study.add_trial(
        optuna.trial.create_trial(
            value=0.0001,
            params=study.best_trial.params,
            distributions=study.best_trial.distributions,
            user_attrs=study.best_trial.user_attrs,
        )
    )
    newer = reports.build_report(study)
    reports.publish(study, newer, reports.figures(study, newer))

    # What the dashboard serves for the study: one note, two importance figures and two
    # trade-off figures (not eight).
    app = optuna_dashboard.wsgi(study._storage)
    status, _, body = call_wsgi(app, f"/api/studies/{study._study_id}")
    served = json.loads(body)
    assert status == 200
    assert "**Best val_loss: 0.0001**" in served["note"]["body"]
    assert {g["id"] for g in served["plotly_graph_objects"]} == {
        *reports.FIGURE_IDS.values(), *reports.TRADE_OFF_FIGURE_IDS.values()}  # fmt: skip


def test_report_command_writes_each_format(run_cli, study, storage, tmp_path):
    html_run = run_cli("report", "synthetic", "--storage", storage)
    assert html_run.returncode == 0, html_run.stderr
    assert (tmp_path / "synthetic-report.html").stat().st_size > 1_000_000  # plotly.js inside
    md = run_cli("report", "synthetic", "--storage", storage, "--format", "md")
    assert md.returncode == 0 and md.stdout.startswith("# Study `synthetic`")
    out = tmp_path / "r.json"
    js = run_cli("report", "synthetic", "--storage", storage, "--out", str(out))
    assert js.returncode == 0
    assert json.loads(out.read_text())["best"]["value"] == study.best_value


def test_report_command_publishes_to_the_dashboard(run_cli, study, storage):
    result = run_cli("report", "synthetic", "--storage", storage, "--format", "md", "--publish")
    assert result.returncode == 0, result.stderr
    note = optuna_dashboard.get_note(optuna.load_study(study_name="synthetic", storage=storage))
    assert "Best val_loss" in note
    # The space as the study stores it, as YAML a reader can copy into a file.
    stored = note.split("## Search space, as stored\n\n```yaml\n", 1)[1].split("```", 1)[0]
    assert yaml.safe_load(stored) == space_of(load(storage, "synthetic")).to_dict()


def test_report_of_failed_trials_only_exits_2(run_cli, space, storage):
    synthetic_study(space, storage, 2, states=(0, 0, 1))
    result = run_cli("report", "synthetic", "--storage", storage)
    assert result.returncode == 2 and "no completed trial" in result.stderr


def test_report_of_a_study_that_does_not_exist(run_cli, space, storage):
    create_or_check(space, storage)
    result = run_cli("report", "nope", "--storage", storage)
    assert result.returncode == 2 and "studies there: synthetic" in result.stderr


@pytest.mark.slow
def test_the_main_job_s_report_rests_on_twenty_trials_and_a_best_that_tpe_proposed(
    run_cli, tmp_path
):
    """Issue 16: the README's main job, as shipped, gives importances over at least 20 trials
    and a best trial of TPE's own, not one of its random start-up trials."""
    space = Path("search_spaces/diabetes_mlp.yaml").resolve()
    assert run_cli("start", str(space), "-q").returncode == 0
    assert run_cli("report", "diabetes-mlp", "--out", "report.json").returncode == 0
    report = json.loads((tmp_path / "report.json").read_text())
    startup = space_from_dict(yaml.safe_load(space.read_text()), str(space)).search.startup()
    assert report["best"]["trial"] >= startup
    assert not any("random start-up" in note for note in report["notes"])
    assert all(method["n_trials"] >= 20 for method in report["importances"].values())
    assert report["importances"]["fANOVA"]["params"]  # ranked, not "too few"
