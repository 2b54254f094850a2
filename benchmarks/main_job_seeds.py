"""Who proposes the main job's best trial: TPE, or one of its random start-up trials?

Runs the README's main job (search_spaces/diabetes_mlp.yaml, 60 trials, TPE with 20 random
start-up trials, successive halving) once per search seed, each a fresh SQLite study through
the real CLI, and tabulates the best trial's number, whether it was a start-up trial, the best
value TPE's own trials reached, the completed trials and the wall time. The seed also draws
the validation split, so values compare within a seed only.

    .venv/bin/python benchmarks/main_job_seeds.py --seeds 0 1 2 3 4 5 6 7 8 9
    .venv/bin/python benchmarks/main_job_seeds.py --startup-trials 10   # one setting changed

Appends one JSON line per seed to benchmarks/results/main_job_seeds.jsonl (a rerun of a seed
replaces it) and prints the table for the seeds and setting given.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "diabetes_mlp.yaml"
LINES = ROOT / "benchmarks" / "results" / "main_job_seeds.jsonl"


def run(seed: int, startup_trials: int | None) -> dict:
    space = yaml.safe_load(SPACE.read_text())
    space["search"]["seed"] = seed
    if startup_trials is not None:
        space["search"]["startup_trials"] = startup_trials
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "space.yaml"
        path.write_text(yaml.safe_dump(space, sort_keys=False))  # key order draws the trials
        url = f"sqlite:///{tmp}/studies.db"
        started = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "dlboost_search", "start", str(path), "--storage", url, "-q"],
            check=True,
        )
        seconds = time.perf_counter() - started
        study = optuna.load_study(study_name=space["name"], storage=url)
        complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    from dlboost_search.spaces import space_from_dict

    startup = space_from_dict(space, str(SPACE)).search.startup()
    tpe = [t.value for t in complete if t.number >= startup]
    return {
        "seed": seed,
        "startup_trials": startup,
        "best_trial": study.best_trial.number,
        "best": round(study.best_value, 4),
        "from_start_up": study.best_trial.number < startup,
        "tpe_best": round(min(tpe), 4) if tpe else None,
        "complete": len(complete),
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--startup-trials", type=int, help="default: the space's rule (20 here)")
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in [] if args.report_only else args.seeds:
        line = run(seed, args.startup_trials)
        print(json.dumps(line), flush=True)
        same = (seed, line["startup_trials"])
        kept = [row for row in _lines() if (row["seed"], row["startup_trials"]) != same]
        LINES.write_text("".join(json.dumps(row) + "\n" for row in [*kept, line]))
    startup = args.startup_trials or 20
    rows = sorted(
        (r for r in _lines() if r["seed"] in args.seeds and r["startup_trials"] == startup),
        key=lambda r: r["seed"],
    )
    print("| seed | best trial | best val_loss | from start-up | TPE's best | complete | s |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['best_trial']} | {r['best']} | "
              f"{'yes' if r['from_start_up'] else 'no'} | {r['tpe_best']} | {r['complete']} | "
              f"{r['seconds']} |")  # fmt: skip
    print(f"best trial proposed by TPE in {sum(not r['from_start_up'] for r in rows)} of "
          f"{len(rows)} seeds")  # fmt: skip


def _lines() -> list[dict]:
    return [json.loads(x) for x in LINES.read_text().splitlines()] if LINES.exists() else []


if __name__ == "__main__":
    main()
