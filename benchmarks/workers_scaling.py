"""Finished trials per minute with 1, 2 and 4 worker processes on one SQLite study.

Each run is `dlboost-search start search_spaces/diabetes_mlp.yaml --workers N --trials 1000000
--quiet` on a fresh SQLite file, sent SIGTERM when the budget is spent; the clock starts at
launch, so every worker's Python and TensorFlow start-up is paid. Only trials finished
(COMPLETE or PRUNED) before the deadline count. Runs rotate the order of the worker counts
(1 2 4, 2 4 1, 4 1 2, ...); medians are reported, with each count's speed-up over one worker
and its scaling efficiency (speed-up / N, and speed-up / min(N, cores)).

Run from the repository root, with nothing else running:
    .venv/bin/python benchmarks/workers_scaling.py                # 3 rounds x 120 s per count
    .venv/bin/python benchmarks/workers_scaling.py --budget 60 --rounds 1
Writes benchmarks/results/workers_scaling.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tutorial_vs_service import run_until  # noqa: E402

SPACE = ROOT / "search_spaces" / "diabetes_mlp.yaml"
RESULTS = ROOT / "benchmarks" / "results"


def run_once(workers: int, budget: float, workdir: Path) -> dict:
    import optuna

    url = f"sqlite:///{workdir / 'studies.db'}"
    load = os.getloadavg()[0]
    deadline = time.time() + budget
    cmd = [str(ROOT / ".venv/bin/dlboost-search"), "start", str(SPACE), "--trials", "1000000",
           "--workers", str(workers), "--storage", url, "--quiet"]  # fmt: skip
    with open(workdir / "run.log", "w") as log:
        exit_code = run_until(cmd, budget, log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="diabetes-mlp", storage=url).get_trials(deepcopy=False)
    end = datetime.fromtimestamp(deadline)
    done = [
        t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete <= end
    ]
    reasons = [t.user_attrs.get("fail_reason", "") for t in trials if t.state.name == "FAIL"]
    return {
        "workers": workers,
        "exit_code": exit_code,
        "finished": len(done),
        "trials_per_min": len(done) / budget * 60,
        "best_val_loss": min((t.value for t in done if t.state.name == "COMPLETE"), default=None),
        "workers_seen": len({t.user_attrs.get("worker") for t in done} - {None}),
        "failed": len(reasons),
        "locked_errors": sum("locked" in r for r in reasons),
        "left_running": sum(t.state.name == "RUNNING" for t in trials),
        "load_avg_1min_before": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per run (120)")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each worker count (3)")
    parser.add_argument("--counts", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--out", default=str(RESULTS / "workers_scaling.json"))
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    runs = []
    with tempfile.TemporaryDirectory(prefix="workers_scaling-") as tmp:
        for r in range(args.rounds):
            order = args.counts[r % len(args.counts) :] + args.counts[: r % len(args.counts)]
            for workers in order:
                workdir = Path(tmp) / f"{r}-{workers}"
                workdir.mkdir()
                result = {"round": r, **run_once(workers, args.budget, workdir)}
                runs.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)

    def median(workers: int, key: str):
        values = [x[key] for x in runs if x["workers"] == workers and x[key] is not None]
        return statistics.median(values) if values else None

    base = median(args.counts[0], "trials_per_min")
    lines = [
        f"Median of {args.rounds} round(s) x {args.budget:g} s per worker count, {cores} cores, "
        "diabetes MLP space, one SQLite file.",
        "",
        "| workers | finished trials/min | speed-up | efficiency (/N) | efficiency (/min(N, cores)) "
        '| best val_loss | failed | "database is locked" | left RUNNING |',
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in args.counts:
        rate = median(workers, "trials_per_min")
        speedup = rate / base if base else float("nan")
        best = median(workers, "best_val_loss")
        lines.append(
            f"| {workers} | {rate:.1f} | {speedup:.2f}x | {speedup / workers:.0%} "
            f"| {speedup / min(workers, cores):.0%} | {best:.4f} | "
            f"{sum(x['failed'] for x in runs if x['workers'] == workers)} | "
            f"{sum(x['locked_errors'] for x in runs if x['workers'] == workers)} | "
            f"{sum(x['left_running'] for x in runs if x['workers'] == workers)} |"
        )
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(json.dumps({"runs": runs, "table_markdown": table}, indent=2))


if __name__ == "__main__":
    main()
