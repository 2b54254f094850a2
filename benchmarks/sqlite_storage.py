"""Storage cost per trial: Optuna's default SQLite against ours (WAL, synchronous=NORMAL).

A trial's storage work without any training: ask, set the user attributes a trial records,
report 10 epochs with a pruning check each, tell. Both storages run side by side, alternating
rounds so machine noise hits both; medians over rounds.

    .venv/bin/python benchmarks/sqlite_storage.py [--trials 50] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import optuna

from dlboost_search.storage import open_storage


def storage_ms_per_trial(storage: object, trials: int) -> float:
    study = optuna.create_study(storage=storage, pruner=optuna.pruners.MedianPruner())
    started = time.perf_counter()
    for _ in range(trials):
        trial = study.ask()
        trial.suggest_float("learning_rate", 1e-4, 1e-2, log=True)
        trial.suggest_int("units", 8, 256)
        trial.set_user_attr("worker", "host:1")
        for epoch in range(10):
            trial.report(1.0 / (epoch + 1), epoch)
            trial.should_prune()
        for key in ("epochs_trained", "best_epoch", "n_params", "train_seconds", "worker_rss_mb"):
            trial.set_user_attr(key, 1)
        study.tell(trial, 0.5)
    return (time.perf_counter() - started) / trials * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, list[float]] = {"optuna default": [], "dlboost-search": []}
    with tempfile.TemporaryDirectory() as folder:
        for round_ in range(args.rounds):
            default_url = f"sqlite:///{Path(folder) / f'default{round_}.db'}"
            tuned_url = f"sqlite:///{Path(folder) / f'tuned{round_}.db'}"
            results["optuna default"].append(
                storage_ms_per_trial(optuna.storages.RDBStorage(default_url), args.trials)
            )
            results["dlboost-search"].append(
                storage_ms_per_trial(open_storage(tuned_url), args.trials)
            )
            print(
                f"round {round_ + 1}: "
                + ", ".join(f"{k} {v[-1]:.1f} ms" for k, v in results.items())
            )
    default, tuned = (statistics.median(v) for v in results.values())
    print("\n| storage | median ms of storage work per trial |\n|---|---|")
    print(f"| Optuna's default SQLite | {default:.1f} |")
    print(f"| dlboost-search SQLite (WAL, NORMAL) | {tuned:.1f} |")
    print(f"\nratio default / ours: {default / tuned:.1f}x")
    print(f"({args.trials} trials x {args.rounds} rounds)")


if __name__ == "__main__":
    main()
