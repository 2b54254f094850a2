"""What running the workers through Ray costs: 1 and 2 workers through `--ray local` against
the same through plain `--workers`, on one SQLite study each.

Each run is `dlboost-search start search_spaces/diabetes_mlp.yaml --trials 1000000 --workers N
[--ray local] --quiet` on a fresh SQLite file, sent SIGTERM when the budget is spent; the
clock starts at launch. For each run:
- finished trials per minute over the whole budget (start-up included);
- start-up: launch to the first finished trial (Python, Ray's own start for --ray local, the
  workers' TensorFlow import, the first trial);
- seconds per trial: the median of the finished trials' own durations (created to
  finished), which hold what Ray adds to a trial: each event (trial started, every epoch)
  is a round trip to the driver's mailbox actor, and Ray runs its workers at nice 15. Ray's
  cost per trial is the difference of these medians; a lone worker samples from the space's
  seed, so with 1 worker both sides train the same trials.
The settings alternate in rotating order; medians over the runs are reported, side by side.

Run from the repository root, with nothing else running:
    .venv/bin/python benchmarks/ray_overhead.py                  # 2 rounds x 45 s per setting
    .venv/bin/python benchmarks/ray_overhead.py --budget 60 --rounds 3
Writes benchmarks/results/ray_overhead.json and prints a Markdown table.
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
SETTINGS = [("workers", 1), ("ray local", 1), ("workers", 2), ("ray local", 2)]


def run_once(how: str, workers: int, budget: float, workdir: Path) -> dict:
    import optuna

    url = f"sqlite:///{workdir / 'studies.db'}"
    cmd = [str(ROOT / ".venv/bin/dlboost-search"), "start", str(SPACE), "--trials", "1000000",
           "--workers", str(workers), "--storage", url, "--quiet"]  # fmt: skip
    if how == "ray local":
        cmd += ["--ray", "local"]
    load = os.getloadavg()[0]
    launched = time.time()
    with open(workdir / "run.log", "w") as log:
        exit_code = run_until(cmd, budget, log)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name="diabetes-mlp", storage=url).get_trials(deepcopy=False)
    deadline = datetime.fromtimestamp(launched + budget)
    done = [
        t
        for t in trials
        if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete <= deadline
    ]
    ends = sorted(t.datetime_complete.timestamp() for t in done)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    return {
        "how": how,
        "workers": workers,
        "exit_code": exit_code,
        "finished": len(ends),
        "trials_per_min": len(ends) / budget * 60,
        "startup_s": ends[0] - launched if ends else None,
        "s_per_trial": statistics.median(durations) if durations else None,
        "left_running": sum(t.state.name == "RUNNING" for t in trials),
        "load_avg_1min_before": load,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=45.0, help="seconds per run (45)")
    parser.add_argument("--rounds", type=int, default=2, help="runs of each setting (2)")
    parser.add_argument("--out", default=str(RESULTS / "ray_overhead.json"))
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory(prefix="ray_overhead-") as tmp:
        for r in range(args.rounds):
            for how, workers in SETTINGS[r % len(SETTINGS) :] + SETTINGS[: r % len(SETTINGS)]:
                workdir = Path(tmp) / f"{r}-{how.replace(' ', '-')}-{workers}"
                workdir.mkdir()
                result = {"round": r, **run_once(how, workers, args.budget, workdir)}
                runs.append(result)
                print(json.dumps(result), file=sys.stderr, flush=True)

    def median(how: str, workers: int, key: str) -> float:
        values = [x[key] for x in runs if (x["how"], x["workers"]) == (how, workers)]
        values = [v for v in values if v is not None]
        return statistics.median(values) if values else float("nan")

    lines = [
        f"Medians of {args.rounds} round(s) x {args.budget:g} s per setting, "
        f"{len(os.sched_getaffinity(0))} cores, diabetes MLP space, one SQLite file per run.",
        "",
        "| workers | trials/min, --workers | trials/min, --ray local | start-up s, --workers "
        "| start-up s, --ray local | s per trial, --workers | s per trial, --ray local "
        "| Ray's cost per trial, s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for workers in (1, 2):
        plain, ray = (
            {key: median(how, workers, key) for key in ("trials_per_min", "startup_s",
                                                        "s_per_trial")}
            for how in ("workers", "ray local")
        )  # fmt: skip
        lines.append(
            f"| {workers} | {plain['trials_per_min']:.1f} | {ray['trials_per_min']:.1f} "
            f"| {plain['startup_s']:.1f} | {ray['startup_s']:.1f} "
            f"| {plain['s_per_trial']:.2f} | {ray['s_per_trial']:.2f} "
            f"| {ray['s_per_trial'] - plain['s_per_trial']:+.2f} |"
        )
    table = "\n".join(lines)
    print(table)
    Path(args.out).write_text(json.dumps({"runs": runs, "table_markdown": table}, indent=2))


if __name__ == "__main__":
    main()
