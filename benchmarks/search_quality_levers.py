"""The search-quality benchmark's default tool with one setting changed: what moves the numbers.

Every setting is the default these levers were measured against (`before`: multivariate TPE
with Optuna's 10 random start-up trials, successive halving with rungs at 1, 3, 9, 27 epochs)
with one change, run through benchmarks/search_quality.py's default tool (`tpe+sha`) in place
of the service's sampler and pruner: same space, data, splits, seeds and 300-epoch budget.
  before    the default until the levers below were run at ten seeds
  rung3     successive halving's first rung at 3 epochs instead of 1 (rungs 3, 9, 27)
  startup5  TPE's first 5 trials random instead of 10
  rf2       successive halving keeps the best half at each rung instead of the best third
            (rungs 1, 2, 4, 8, 16)
  startup20 TPE's first 20 trials random instead of 10: the default now (search.startup_trials)
  indep     TPE samples each parameter on its own (multivariate=False)
  rung2     successive halving's first rung at 2 epochs (rungs 2, 6, 18)
  boot2     startup20, and successive halving promotes from a rung only once 2 trials reached
            it before (Optuna's bootstrap_count=2): no free pass for a trial alone at a rung
  boot3     the same with 3 (bootstrap_count=3)
  boot1     the same with 1 (bootstrap_count=1)
Each run is a fresh process appended to benchmarks/results/search_quality_levers.jsonl; the
report compares every setting over one set of seeds, with random search's final value from
search_quality.jsonl as the mark to reach:
    .venv/bin/python benchmarks/search_quality_levers.py --levers rf2 --datasets diabetes
    .venv/bin/python benchmarks/search_quality_levers.py --report-only --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import search_quality  # noqa: E402

LINES = search_quality.RESULTS / "search_quality_levers.jsonl"
BEFORE_SAMPLER = {"multivariate": True, "constant_liar": True, "n_startup_trials": 10}
BEFORE_PRUNER = {"min_resource": 1, "reduction_factor": 3}
LEVERS = {  # lever: (sampler changes, pruner changes)
    "before": ({}, {}),
    "rung3": ({}, {"min_early_stopping_rate": 1}),
    "startup5": ({"n_startup_trials": 5}, {}),
    "rf2": ({}, {"reduction_factor": 2}),
    "startup20": ({"n_startup_trials": 20}, {}),
    "indep": ({"multivariate": False}, {}),
    "rung2": ({}, {"min_resource": 2}),
    "boot2": ({"n_startup_trials": 20}, {"bootstrap_count": 2}),
    "boot3": ({"n_startup_trials": 20}, {"bootstrap_count": 3}),
    "boot1": ({"n_startup_trials": 20}, {"bootstrap_count": 1}),
}
NOW_DEFAULT = "startup20"


def install(lever: str) -> None:
    """Put the lever's TPE sampler and successive-halving pruner in place of the service's."""
    import optuna

    import dlboost_search.study as study

    sampler_changes, pruner_changes = LEVERS[lever]
    sampler = {**BEFORE_SAMPLER, **sampler_changes}
    pruner = {**BEFORE_PRUNER, **pruner_changes}
    study.make_sampler = lambda space, trials_so_far, stream=0: optuna.samplers.TPESampler(
        seed=space.search.seed, **sampler
    )
    study.make_pruner = lambda space: optuna.pruners.SuccessiveHalvingPruner(**pruner)


def report(seeds: list[int], budget: int) -> str:
    """Every setting over `seeds` only, so that each row's medians are over the same seeds."""
    # The levers' runs, and random search's from search_quality.jsonl: the mark to reach.
    runs = {
        **search_quality.merged(budget, seeds),
        **search_quality.merged(budget, seeds, LINES),
    }
    lines = [
        "| dataset | setting | n | best val_loss | test loss | epochs to random's final "
        "(per seed) | models built |",
        "|---|---|---:|---:|---:|---|---:|",
    ]
    for dataset in search_quality.DATASETS:
        for tool in (*LEVERS, "random"):
            mine = [r for (t, d, _), r in sorted(runs.items()) if t == tool and d == dataset]
            if not mine:
                continue
            reach = [search_quality.reached(r, runs[("random", dataset, r["seed"])]["best_val"])[0]
                     for r in mine if ("random", dataset, r["seed"]) in runs]  # fmt: skip
            name = f"{tool} (the default now)" if tool == NOW_DEFAULT else tool
            per_seed = ", ".join("never" if math.isinf(e) else str(int(e)) for e in reach)
            to_random = f"{statistics.median(reach):g} ({per_seed})" if reach else "-"
            if tool == "random":
                to_random = "-"  # the mark itself
            lines.append(
                f"| {dataset} | {name} | {len(mine)} "
                f"| {statistics.median(r['best_val'] for r in mine):.4f} "
                f"| {statistics.median(r['test_loss'] for r in mine):.4f} "
                f"| {to_random} "
                f"| {statistics.median(r['models'] for r in mine):g} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--levers", nargs="+", default=list(LEVERS), choices=LEVERS)
    parser.add_argument("--datasets", nargs="+", default=list(search_quality.DATASETS),
                        choices=search_quality.DATASETS)  # fmt: skip
    parser.add_argument("--seeds", nargs="+", type=int, default=search_quality.SEEDS)
    parser.add_argument("--budget", type=int, default=300, help="epochs per search (300)")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--one", nargs=3, metavar=("LEVER", "DATASET", "SEED"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.one:
        lever, dataset, seed = args.one
        install(lever)
        run = search_quality.run_one(search_quality.DEFAULT, dataset, int(seed), args.budget)
        print(json.dumps({**run, "tool": lever}))
        return
    if not args.report_only:
        for lever in args.levers:
            for dataset in args.datasets:
                for seed in args.seeds:
                    done = subprocess.run([sys.executable, __file__, "--one", lever, dataset,
                                           str(seed), "--budget", str(args.budget)],
                                          capture_output=True, text=True)  # fmt: skip
                    if done.returncode != 0:
                        print(f"{lever} {dataset} {seed}: FAILED\n{done.stderr[-3000:]}",
                              file=sys.stderr)  # fmt: skip
                        continue
                    with open(LINES, "a") as out:
                        out.write(done.stdout.strip().splitlines()[-1] + "\n")
    print(report(args.seeds, args.budget))


if __name__ == "__main__":
    main()
