"""The compiled epoch loop against Keras' fit and the tutorial loop, on three shipped datasets.

For each of search_spaces/{diabetes,breast_cancer,digits}_mlp.yaml (regression, binary,
multiclass), side by side in one run:
  1. per model, in one warm process, for --models parameter sets drawn at random from the space:
     the fixed cost (build, compile, tracing, clean-up) and the cost per epoch, from timing
     1-epoch and 6-epoch trainings (no early stop): the service's `epoch_loop` and `fit`
     engines (dlboost_search.training.train) and the tutorial's keras.Sequential + model.fit
     on NumPy arrays with validation_split;
  2. whole studies, --budget seconds each: `dlboost-search start` with training.engine forced
     to epoch_loop, then to fit, and the tutorial's Optuna loop (benchmarks/tutorial_vs_service.py),
     each on a fresh SQLite file, finished trials per minute and best value.
Run from the repository root, with nothing else running (about 25 minutes):
    .venv/bin/python benchmarks/engines.py
    .venv/bin/python benchmarks/engines.py --budget 60 --models 4 --spaces diabetes_mlp
Writes benchmarks/results/engines.json and prints Markdown tables.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tutorial_vs_service import run_once, src_fingerprint, tutorial_model  # noqa: E402

SPACES = ("diabetes_mlp", "breast_cancer_mlp", "digits_mlp")
APPROACHES = ("service:epoch_loop", "service:fit", "tutorial")


def per_model_costs(space_name: str, models: int) -> dict[str, dict[str, float]]:
    """Fixed cost per model and cost per epoch of each approach, medians over `models`."""
    import keras
    import numpy as np
    import optuna
    import tensorflow as tf

    from dlboost_search.data import prepare
    from dlboost_search.models import build_function
    from dlboost_search.spaces import load_space, suggest
    from dlboost_search.training import TrainingRecord, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(ROOT / "search_spaces" / f"{space_name}.yaml")
    data = prepare(space.data, 0)
    x, y = np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val])
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    params = [space.resolve(suggest(draw.ask(), space)) for _ in range(models)]
    build = build_function(space.model)

    def service(engine: str):
        def run(p: dict, epochs: int) -> None:
            model = build(p, data.input_shape, data.task, data.n_outputs)
            train(model, p, data, max_epochs=epochs, patience=1000, min_delta=0.0,
                  monitor=space.objective.metric, direction=space.direction, seed=0,
                  record=TrainingRecord(), engine=engine)  # fmt: skip
            keras.backend.clear_session(free_memory=False)  # as the worker does

        return run

    def tutorial(p: dict, epochs: int) -> None:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": False})
        keras.backend.clear_session()
        model = tutorial_model(p, x.shape[1], data.task, data.n_outputs)
        model.fit(x, y, validation_split=space.data.validation_split, epochs=epochs,
                  batch_size=p["batch_size"], verbose=0)  # fmt: skip

    def timed(run, p: dict, epochs: int) -> float:
        started = time.perf_counter()
        run(p, epochs)
        return time.perf_counter() - started

    runs = {"service:epoch_loop": service("epoch_loop"), "service:fit": service("fit"),
            "tutorial": tutorial}  # fmt: skip
    for run in runs.values():
        run(params[0], 2)  # warm-up: first-use costs of the process, not of a model
    one = {name: [] for name in runs}
    six = {name: [] for name in runs}
    for p in params:  # approaches interleaved, so noise hits them alike
        for name, run in runs.items():
            one[name].append(timed(run, p, 1))
            six[name].append(timed(run, p, 6))
    rows = {}
    for name in runs:
        per_epoch = [(b - a) / 5 for a, b in zip(one[name], six[name])]
        rows[name] = {
            "fixed_s": statistics.median(a - e for a, e in zip(one[name], per_epoch)),
            "per_epoch_s": statistics.median(per_epoch),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=120.0, help="seconds per study (120)")
    parser.add_argument("--models", type=int, default=8, help="parameter sets per dataset (8)")
    parser.add_argument("--spaces", nargs="+", default=list(SPACES), choices=SPACES)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engines.json"))
    args = parser.parse_args()

    src = src_fingerprint()
    results: dict[str, dict] = {}
    for name in args.spaces:
        results[name] = {"per_model": per_model_costs(name, args.models), "studies": {}}
        print(name, json.dumps(results[name]["per_model"]), file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory(prefix="engines-") as tmp:
        for name in args.spaces:
            for approach in APPROACHES:
                workdir = Path(tmp) / f"{name}-{approach.replace(':', '-')}"
                workdir.mkdir()
                run = run_once(approach, args.budget, workdir,
                               ROOT / "search_spaces" / f"{name}.yaml")  # fmt: skip
                results[name]["studies"][approach] = run
                brief = {k: v for k, v in run.items() if k != "log_tail"}
                print(name, json.dumps(brief), file=sys.stderr, flush=True)

    lines = [
        f"{args.models} random parameter sets per dataset (per-model costs, medians) and one "
        f"{args.budget:g} s study per approach and dataset; src/ fingerprint {src}"
        f"{'' if src_fingerprint() == src else ' (WARNING: src/ changed during the run)'}.",
        "",
        "| dataset | approach | fixed s/model | ms/epoch | finished trials/min | best value "
        "| trials/min vs tutorial |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for name, result in results.items():
        tutorial_rate = result["studies"]["tutorial"]["trials_per_min"]
        for approach in APPROACHES:
            cost, study = result["per_model"][approach], result["studies"][approach]
            best = "-" if study["best_value"] is None else f"{study['best_value']:.4f}"
            ratio = study["trials_per_min"] / tutorial_rate if tutorial_rate else float("inf")
            lines.append(
                f"| {name} | {approach} | {cost['fixed_s']:.3f} | {cost['per_epoch_s'] * 1e3:.1f} "
                f"| {study['trials_per_min']:.1f} | {best} | {ratio:.2f}x |"
            )
    print("\n".join(lines))
    Path(args.out).write_text(json.dumps(
        {"args": vars(args), "src_fingerprint": src, "results": results,
         "table_markdown": "\n".join(lines)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
