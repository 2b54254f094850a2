"""Is a study's best trial better than the runner-up, or did it draw lucky initial weights?

Runs a shipped space's study (the real CLI, a fresh SQLite file, search seed 0 as shipped
unless --seed), then trains again the best random start-up trial and the best trial TPE proposed,
each with its parameters, the same validation split and --repeats other weight seeds
(TrialContext.fit, as a trial trains, early stopping included). It prints each one's value in
the study and the median and range of its retrained values.

    .venv/bin/python benchmarks/retrain_spread.py   # diabetes_custom, seed 0, 10 repeats
    .venv/bin/python benchmarks/retrain_spread.py --space search_spaces/sunspots_rnn.yaml

Appends one JSON line per space and seed to benchmarks/results/retrain_spread.jsonl.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

import optuna
import yaml
from main_job_seeds import run_study

ROOT = Path(__file__).resolve().parents[1]
LINES = ROOT / "benchmarks" / "results" / "retrain_spread.jsonl"
# Weight seeds far from the study's own (search.seed + trial number), so none repeats a trial.
SEED_OFFSET = 10_000


def retrained(context, params: dict, repeats: int) -> list[float]:
    from dlboost_search.training import TrainingRecord

    values = []
    for k in range(repeats):
        number = SEED_OFFSET + k  # the weight seed is search.seed + this number
        model = context.model(params, number)
        values.append(round(context.fit(model, params, number, record=TrainingRecord()), 4))
    return values


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--space", type=Path, default=ROOT / "search_spaces" / "diabetes_custom.yaml"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sys.path.insert(0, str(ROOT))  # search_spaces.custom_model, as the CLI finds it

    from dlboost_search import limits
    from dlboost_search.spaces import space_from_dict
    from dlboost_search.trial import TrialContext

    raw = yaml.safe_load(args.space.read_text())
    raw["search"]["seed"] = args.seed
    space = space_from_dict(raw, str(args.space))
    with tempfile.TemporaryDirectory() as tmp:  # read the trials before the file goes
        ranked = limits.ranked(run_study(raw, tmp)[0])
    startup = space.search.startup()
    picks = {
        "start-up": next((t for t in ranked if t.number < startup), None),
        "TPE": next((t for t in ranked if t.number >= startup), None),
    }
    context = TrialContext(space, str(args.space))
    row = {"space": args.space.stem, "seed": args.seed, "repeats": args.repeats}
    print("| proposed by | trial | value in the study | retrained: median | min | max |")
    print("|---|---:|---:|---:|---:|---:|")
    for who, trial in picks.items():
        if trial is None:
            continue
        values = retrained(context, space.resolve(trial.params), args.repeats)
        row[who] = {"trial": trial.number, "value": round(trial.value, 4), "retrained": values}
        print(f"| {who} | {trial.number} | {trial.value:.4f} | {statistics.median(values):.4f} "
              f"| {min(values):.4f} | {max(values):.4f} |")  # fmt: skip
    rows = [json.loads(line) for line in LINES.read_text().splitlines()] if LINES.exists() else []
    kept = [r for r in rows if (r["space"], r["seed"]) != (row["space"], row["seed"])]
    LINES.write_text("".join(json.dumps(r) + "\n" for r in [*kept, row]))


if __name__ == "__main__":
    main()
