"""Who proposes the main job's best trial: TPE, or one of its random start-up trials?

Runs the README's main job (search_spaces/diabetes_mlp.yaml, 60 trials, TPE with 20 random
start-up trials, successive halving), or another shipped space (--space), once per search
seed, each a fresh SQLite study through the real CLI, and tabulates the best trial's number, whether it was a start-up trial, the best
value TPE's own trials reached, the completed trials and the wall time. The seed also draws
the validation split, so values compare within a seed only.

    .venv/bin/python benchmarks/main_job_seeds.py --seeds 0 1 2 3 4 5 6 7 8 9
    .venv/bin/python benchmarks/main_job_seeds.py --startup-trials 10   # one setting changed
    .venv/bin/python benchmarks/main_job_seeds.py --bootstrap 2   # search.halving_bootstrap
    .venv/bin/python benchmarks/main_job_seeds.py --max-epochs 100 --patience 10   # training budget
    .venv/bin/python benchmarks/main_job_seeds.py --space search_spaces/sunspots_rnn.yaml
    .venv/bin/python benchmarks/main_job_seeds.py --pruner median   # search.pruner

Appends one JSON line per seed to benchmarks/results/main_job_seeds.jsonl (a rerun of a seed
replaces it) and prints the table for the seeds and setting given. Rows without
`halving_bootstrap` ran before that setting existed: successive halving's bootstrap was 0;
rows without `pruner` ran with successive halving;
rows without `max_epochs` and `patience` ran with 100 and 10, the space's before it had 27 and 5;
rows without `space` ran the main job.
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

from dlboost_search import limits
from dlboost_search.spaces import space_from_dict

ROOT = Path(__file__).resolve().parents[1]
MAIN_JOB = ROOT / "search_spaces" / "diabetes_mlp.yaml"
LINES = ROOT / "benchmarks" / "results" / "main_job_seeds.jsonl"


def configured(args: argparse.Namespace, seed: int = 0) -> dict:
    """The --space YAML with the settings the command line changes."""
    space = yaml.safe_load(args.space.read_text())
    space["search"]["seed"] = seed
    changes = {
        ("search", "trials"): args.trials,
        ("search", "startup_trials"): args.startup_trials,
        ("search", "halving_bootstrap"): args.bootstrap,
        ("search", "pruner"): args.pruner,
        ("training", "max_epochs"): args.max_epochs,
    }
    for (part, key), value in changes.items():
        if value is not None:
            space[part][key] = value
    if args.patience is not None:
        space["training"]["early_stopping"]["patience"] = args.patience
    return space


def setting_of(space: dict, args: argparse.Namespace) -> dict:
    """What a row records of the settings it ran with, as the space resolves them."""
    parsed = space_from_dict(space, str(args.space))
    return {
        "space": args.space.stem,
        "trials": parsed.search.trial_target(),
        "startup_trials": parsed.search.startup(),
        "halving_bootstrap": parsed.search.bootstrap(),
        "pruner": parsed.search.pruner,
        "max_epochs": parsed.training.max_epochs,
        "patience": parsed.training.early_stopping.patience,
    }


def run_study(space: dict, folder: str) -> tuple[optuna.Study, float]:
    """`space`'s study, run by the real CLI from the repository root (where custom builders
    import from) into a fresh SQLite file in `folder`, and its seconds."""
    path = Path(folder) / "space.yaml"
    path.write_text(yaml.safe_dump(space, sort_keys=False))  # key order draws the trials
    url = f"sqlite:///{folder}/studies.db"
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dlboost_search", "start", str(path), "--storage", url, "-q"],
        check=True,
        cwd=ROOT,
    )
    seconds = time.perf_counter() - started
    return optuna.load_study(study_name=space["name"], storage=url), seconds


def run(seed: int, args: argparse.Namespace) -> dict:
    space = configured(args, seed)
    with tempfile.TemporaryDirectory() as tmp:
        study, seconds = run_study(space, tmp)
        ranked = limits.ranked(study)  # complete trials, best first in the objective's direction
        deepest = max((t.last_step or 0) for t in study.get_trials(deepcopy=False))
    setting = setting_of(space, args)
    startup = setting["startup_trials"]
    tpe = [t.value for t in ranked if t.number >= startup]
    best = ranked[0] if ranked else None  # none: every trial pruned
    return {
        "seed": seed,
        **setting,
        "best_trial": best and best.number,
        "best": best and round(best.value, 4),
        "from_start_up": best and best.number < startup,
        "tpe_best": round(tpe[0], 4) if tpe else None,
        "complete": len(ranked),
        "deepest_epoch": deepest,
        "seconds": round(seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--space", type=Path, default=MAIN_JOB, help="default: the main job's")
    parser.add_argument("--trials", type=int, help="search.trials (default: the space's)")
    parser.add_argument("--startup-trials", type=int, help="default: the space's rule (20 here)")
    parser.add_argument("--bootstrap", type=int,
                        help="search.halving_bootstrap (default: the space's rule)")  # fmt: skip
    parser.add_argument("--pruner", help="search.pruner (default: the space's)")
    parser.add_argument("--max-epochs", type=int, help="training.max_epochs (default: the space's)")
    parser.add_argument(
        "--patience", type=int, help="early stopping's patience (default: the space's)"
    )
    parser.add_argument("--report-only", action="store_true")
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for seed in [] if args.report_only else args.seeds:
        line = run(seed, args)
        print(json.dumps(line), flush=True)
        kept = [r for r in _lines() if (r["seed"], _setting(r)) != (seed, _setting(line))]
        LINES.write_text("".join(json.dumps(row) + "\n" for row in [*kept, line]))
    wanted = _setting(setting_of(configured(args), args))
    rows = sorted(
        (r for r in _lines() if r["seed"] in args.seeds and _setting(r) == wanted),
        key=lambda r: r["seed"],
    )
    print("| seed | best trial | best value | from start-up | TPE's best | complete | s |")
    print("|---:|---:|---:|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['seed']} | {r['best_trial']} | {r['best']} | "
              f"{_who(r['from_start_up'])} | {r['tpe_best']} | {r['complete']} | "
              f"{r['seconds']} |")  # fmt: skip
    print(f"best trial proposed by TPE in {sum(r['from_start_up'] is False for r in rows)} of "
          f"{len(rows)} seeds")  # fmt: skip


def _who(from_start_up: bool | None) -> str:
    return {True: "yes", False: "no", None: "none complete"}[from_start_up]


def _setting(row: dict) -> tuple[str | int, ...]:
    return (
        row.get("space", MAIN_JOB.stem),
        row["trials"],
        row["startup_trials"],
        row.get("halving_bootstrap", 0),
        row.get("pruner", "successive_halving"),
        row.get("max_epochs", 100),
        row.get("patience", 10),
    )


def _lines() -> list[dict]:
    return [json.loads(x) for x in LINES.read_text().splitlines()] if LINES.exists() else []


if __name__ == "__main__":
    main()
