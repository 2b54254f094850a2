"""Limits on size and latency (limits.py, `objective.constraints`): what each trial records of
its model, trials over a limit never reported as best, the report's trade-off, and
`export-model --smallest-within`. Refusals of malformed limits are in test_adversarial.py."""

from __future__ import annotations

import json
import math

import optuna
import pytest
from optuna.trial import TrialState, create_trial

from conftest import TINY_SPACE, deep_update, load
from dlboost_search import limits, reports
from dlboost_search.errors import StudyError
from dlboost_search.spaces import distributions, space_from_dict
from dlboost_search.study import create_or_check, summarize
from dlboost_search.testing import synthetic_study

MAX_PARAMS = 140  # 12 * units + 1 parameters on diabetes: units 4-11 keep to it, 12-16 do not


@pytest.mark.slow  # a real study and an export-model
def test_trials_over_max_params_are_never_the_best(write_space, storage, run_cli, tmp_path):
    space = write_space(
        objective={"metric": "val_loss", "constraints": {"max_params": MAX_PARAMS}},
        training={"max_epochs": 3},
        search={"pruner": "none", "trials": 6},
    )
    done = run_cli("start", str(space), "--storage", storage, "-q")
    assert done.returncode == 0, done.stderr
    trials = load(storage).get_trials(deepcopy=False)
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 6
    for t in trials:
        n_params = t.user_attrs["n_params"]
        assert n_params == 12 * t.params["units"] + 1  # one hidden layer, one output
        assert t.user_attrs["size_mb"] == pytest.approx(4 * n_params / 1e6)  # float32 weights
        assert t.user_attrs["latency_ms"] > 0
        # What TPE reads: the excess over the limit, as a fraction of it.
        assert t.constraints == {"max_params": pytest.approx(n_params / MAX_PARAMS - 1)}
    within = [t for t in trials if t.user_attrs["n_params"] <= MAX_PARAMS]
    assert 1 < len(within) < len(trials)
    best = min(within, key=lambda t: t.value)
    # A trial over the limit scored better: only the limit keeps it from being the best.
    assert min(t.value for t in trials if t not in within) < best.value

    shown = run_cli("best", "tiny", "--storage", storage, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["best"]["trial"] == best.number
    study = load(storage)
    summary = summarize(study)
    assert (summary.best_trial, summary.infeasible) == (best.number, len(trials) - len(within))
    report = reports.build_report(study)
    assert report["best"]["trial"] == best.number
    assert {t["trial"] for t in report["limits"]["trials"] if t["feasible"]} == {
        t.number for t in within
    }
    # Only models within the limits are kept (search.keep_models' default keeps all six
    # otherwise): one over a limit is never exported.
    stored = {
        t.number
        for t in study.get_trials()
        if any(k.startswith("artifacts:") for k in t.system_attrs)
    }
    assert stored == {t.number for t in within}

    done = run_cli("export-model", "tiny", "--storage", storage, "--out", "model")
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "model" / "dlboost_model.json").read_text())
    assert [m["trial"] for m in meta["members"]] == [best.number]
    import keras

    exported = keras.saving.load_model(tmp_path / "model" / "model.keras", compile=False)
    assert exported.count_params() == best.user_attrs["n_params"]


def _constructed(storage: str) -> optuna.Study:
    """A study of the tiny space with max_params 10,000, holding trials made to measure:
    trial 0 is the best within the limit (val_loss 0.5, 5,000 parameters), trials 1 and 2
    are within 1 % of it with 300 parameters each (trial 1 the better), trial 3 has 100 but
    is 4 % worse, trial 4 is the best of all but over the limit."""
    space = space_from_dict(
        deep_update(TINY_SPACE, {"objective": {"constraints": {"max_params": 10_000}}}), "test"
    )
    study = create_or_check(space, storage)
    made = [(0.5, 5000), (0.504, 300), (0.5049, 300), (0.52, 100), (0.4, 20_000)]
    params = {"units": 4, "learning_rate": 0.005, "dropout": 0.1, "l2": 1e-4, "clipvalue": 1.0}
    for value, n_params in made:
        attrs = {"n_params": n_params, "size_mb": n_params * 4e-6, "latency_ms": n_params / 1e4,
                 "epochs_trained": 2, "best_epoch": 2}  # fmt: skip
        study.add_trial(
            create_trial(
                value=value, params=params, distributions=distributions(space), user_attrs=attrs
            )
        )
    return study


def test_smallest_within_takes_the_fewest_parameters_near_the_best_within_the_limits(storage):
    study = _constructed(storage)
    ranked = limits.ranked(study)
    assert [t.number for t in ranked] == [0, 1, 2, 3]  # trial 4 is over max_params
    assert limits.smallest_within(ranked, 0.01, minimize=True).number == 1
    assert limits.smallest_within(ranked, 0.0, minimize=True).number == 0
    assert limits.smallest_within(ranked, 0.05, minimize=True).number == 3
    front = limits.pareto_front(ranked, "n_params", minimize=True)
    assert [t.number for t in front] == [3, 1, 0]  # 2 has the parameters of 1, a worse value


@pytest.mark.slow  # export-model retrains the trial it picks
def test_export_model_smallest_within_says_which_trial_and_why(storage, run_cli, tmp_path):
    _constructed(storage)
    done = run_cli(
        "export-model", "tiny", "--storage", storage, "--out", "small", "--smallest-within", "1%"
    )
    assert done.returncode == 0, done.stderr
    meta = json.loads((tmp_path / "small" / "dlboost_model.json").read_text())
    assert [m["trial"] for m in meta["members"]] == [1]
    why = (
        "--smallest-within 1%: trial 1 (300 parameters, val_loss 0.504), the fewest parameters "
        "of the trials within objective.constraints whose val_loss is within 1% of the best, "
        "trial 0 (5,000 parameters, val_loss 0.5)"
    )
    assert meta["picked"] == why and why in " ".join(done.stderr.split())
    assert why in (tmp_path / "small" / "model_card.md").read_text()


def test_the_report_shows_the_trade_off_with_the_pareto_front(storage):
    space = space_from_dict(
        deep_update(
            {**TINY_SPACE, "name": "synthetic"},
            {"objective": {"constraints": {"max_params": 150, "max_latency_ms": 0.14}}},
        ),
        "test",
    )
    study = synthetic_study(space, storage, 40, seed=1)
    report = reports.build_report(study)
    found = report["limits"]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    assert [t["trial"] for t in found["trials"]] == [t.number for t in complete]
    for row, trial in zip(found["trials"], complete, strict=True):
        attrs = trial.user_attrs
        assert (row["n_params"], row["size_mb"], row["latency_ms"]) == (
            attrs["n_params"], attrs["size_mb"], attrs["latency_ms"])  # fmt: skip
        assert row["feasible"] == (attrs["n_params"] <= 150 and attrs["latency_ms"] <= 0.14)
    feasible = [t for t in found["trials"] if t["feasible"]]
    assert 0 < len(feasible) < len(complete)
    assert report["best"]["trial"] == min(feasible, key=lambda t: t["value"])["trial"]
    for measure in ("n_params", "latency_ms"):
        # The front, by its definition: no feasible trial at most as costly and as bad.
        front = {
            t["trial"]
            for t in feasible
            if not any(
                o[measure] <= t[measure] and o["value"] <= t["value"]
                and (o[measure], o["value"]) != (t[measure], t["value"])
                for o in feasible
            )
        }  # fmt: skip
        assert set(found["pareto_front"][measure]) == front, measure
    plots = reports.figures(study, report)
    figure = plots["Trade-off: val_loss against parameters"]
    by_name = {trace.name: trace for trace in figure.data}
    assert sorted(by_name["Pareto front"].text) == sorted(
        f"trial {n}" for n in found["pareto_front"]["n_params"]
    )
    over = [t for t in found["trials"] if not t["feasible"]]
    assert len(by_name["Over a limit"].x) == len(over)
    assert list(by_name["max_params 150"].x) == [150, 150]  # the limit, dashed
    assert "Trade-off: val_loss against latency (ms)" in plots
    markdown = reports.to_markdown(report)
    assert "## Size and latency" in markdown
    assert "Limits (objective.constraints): max_params 150, max_latency_ms 0.14 ms." in markdown
    assert f"Trials: {len(complete)} complete ({len(over)} of them over a limit)" in markdown


def test_a_study_with_no_trial_within_the_limits_says_so(storage, run_cli):
    space = space_from_dict(
        deep_update(
            {**TINY_SPACE, "name": "synthetic"}, {"objective": {"constraints": {"max_params": 10}}}
        ),
        "test",
    )
    study = synthetic_study(space, storage, 6, states=(1, 0, 0))
    with pytest.raises(StudyError) as refused:
        reports.best_of(study)
    assert "none of its 6 complete trials keeps to objective.constraints (max_params 10)" in str(
        refused.value
    )
    nearest = min(study.trials, key=lambda t: (t.user_attrs["n_params"], t.number))
    assert f"the nearest, trial {nearest.number}, is over max_params 10 (" in str(refused.value)
    summary = summarize(study)
    assert (summary.best_trial, summary.infeasible) == (None, 6)
    report = reports.build_report(study)  # the report still shows the trade-off
    assert report["best"] is None and report["top_trials"] == []
    assert "**No trial keeps to the limits**" in reports.to_markdown(report)
    assert "Trade-off: val_loss against parameters" in reports.figures(study, report)
    shown = run_cli("best", "synthetic", "--storage", storage)
    assert shown.returncode == 2 and "none of its 6 complete trials keeps to" in shown.stderr
    status = run_cli("status", "--storage", storage)
    assert status.returncode == 0, status.stderr
    assert "over limits" in status.stdout and "none within limits" in status.stdout


def test_a_study_without_limits_has_every_complete_trial_feasible(storage):
    space = space_from_dict({**TINY_SPACE, "name": "synthetic"}, "test")
    study = synthetic_study(space, storage, 20, seed=3)
    assert limits.constraints_of(study).given() == {}
    assert limits.best_trial(study).number == study.best_trial.number
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(limits.ranked(study)) == len(complete)
    assert all(math.isfinite(t.value) for t in limits.ranked(study))
