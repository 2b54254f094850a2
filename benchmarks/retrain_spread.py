"""Is a study's best trial better than the runner-up, or did it draw lucky initial weights?

Runs a shipped space's study (the real CLI, a fresh SQLite file, its shipped seed unless
--seed), then trains again the best random start-up trial and the best trial TPE proposed,
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
import subprocess
import sys
import tempfile
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
LINES = ROOT / "benchmarks" / "results" / "retrain_spread.jsonl"
# Weight seeds far from the study's own (search.seed + trial number), so none repeats a trial.
SEED_OFFSET = 10_000


def study_of(space_file: Path, seed: int, tmp: str) -> tuple[dict, optuna.Study]:
    space = yaml.safe_load(space_file.read_text())
    space["search"]["seed"] = seed
    path = Path(tmp) / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))  # key order draws the trials
    url = f"sqlite:///{tmp}/studies.db"
    cli = [sys.executable, "-m", "dlboost_search", "start", str(path), "--storage", url, "-q"]
    subprocess.run(cli, check=True, cwd=ROOT)  # from the root: custom builders import from it
    return space, optuna.load_study(study_name=space["name"], storage=url)


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

    with tempfile.TemporaryDirectory() as tmp:
        raw, study = study_of(args.space, args.seed, tmp)
    space = space_from_dict(raw, str(args.space))
    startup = space.search.startup()
    ranked = limits.ranked(study)
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
    kept = [
        line
        for line in (LINES.read_text().splitlines() if LINES.exists() else [])
        if (json.loads(line)["space"], json.loads(line)["seed"]) != (row["space"], args.seed)
    ]
    LINES.write_text("".join(f"{line}\n" for line in [*kept, json.dumps(row)]))


if __name__ == "__main__":
    main()
