"""Reports (reports.py) on studies made through the storage, and the `report` command."""

from __future__ import annotations

import json
import re

import optuna
import optuna_dashboard
import pytest
from optuna.trial import TrialState

from conftest import TINY_SPACE, call_wsgi
from dlboost_search import reports
from dlboost_search.errors import StudyError
from dlboost_search.spaces import space_from_dict
from dlboost_search.study import create_or_check
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
    assert set(importances) == {"fANOVA", "PED-ANOVA"}
    for name, values in importances.items():
        assert set(values) == set(study.best_trial.params), name
        assert sum(values.values()) == pytest.approx(1.0, abs=0.01)
    # The synthetic value depends on learning_rate most, then units; fANOVA finds it.
    ranked = sorted(importances["fANOVA"], key=importances["fANOVA"].get, reverse=True)
    assert ranked[:2] == ["learning_rate", "units"]


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
    monkeypatch.setattr(reports, "FANOVA_SAMPLE", 30)
    monkeypatch.setattr(reports, "CURVE_SAMPLE", 25)
    study = reports.snapshot(synthetic_study(space, storage, 80, seed=2))
    report = reports.build_report(study)
    complete = report["trials"]["complete"]
    assert complete > 30
    assert any(f"sample of 30 of the {complete} completed" in note for note in report["notes"])
    ranked = sorted(report["importances"]["fANOVA"], key=report["importances"]["fANOVA"].get)
    assert ranked[-1] == "learning_rate"  # the sample still finds what matters most
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
    assert report["importances"] == {"fANOVA": None, "PED-ANOVA": None}
    assert any("Only one trial" in note for note in report["notes"])
    markdown = reports.to_markdown(report)
    assert "Importances need at least two completed trials" in markdown
    assert "Parallel coordinates" not in reports.figures(study, report)


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

    # What the dashboard serves for the study: one note, two figures (not four).
    app = optuna_dashboard.wsgi(study._storage)
    status, _, body = call_wsgi(app, f"/api/studies/{study._study_id}")
    served = json.loads(body)
    assert status == 200
    assert "**Best val_loss: 0.0001**" in served["note"]["body"]
    assert {g["id"] for g in served["plotly_graph_objects"]} == set(reports.FIGURE_IDS.values())


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
    assert "Best val_loss" in optuna_dashboard.get_note(
        optuna.load_study(study_name="synthetic", storage=storage)
    )


def test_report_of_failed_trials_only_exits_2(run_cli, space, storage):
    synthetic_study(space, storage, 2, states=(0, 0, 1))
    result = run_cli("report", "synthetic", "--storage", storage)
    assert result.returncode == 2 and "no completed trial" in result.stderr


def test_report_of_a_study_that_does_not_exist(run_cli, space, storage):
    create_or_check(space, storage)
    result = run_cli("report", "nope", "--storage", storage)
    assert result.returncode == 2 and "studies there: synthetic" in result.stderr
