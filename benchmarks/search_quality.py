"""Search quality at an equal epoch budget: this service's searches against keras-tuner and random.

Every tool searches one shared space (units, layers, learning rate, dropout, batch size; Adam,
ReLU, at most 27 epochs per trial, early stopping with patience 5, val_loss minimized) on the
same data, and one epoch counter shared by all of them (`Budget`, fed by our training's
per-epoch report or by a Keras callback) stops each search at exactly --budget epochs. Tools:
  tpe+sha            this service's default: TPE with 20 random start-up trials + successive
                     halving (rungs 1, 3, 9, 27)
  tpe+hyperband      TPE + Optuna's HyperbandPruner (the default before this benchmark)
  tpe+median         TPE + median pruner
                     (both with Optuna's 10 start-up trials, the default when they were run)
  service-hyperband  this service's Hyperband backend (keras-tuner's Hyperband, our training)
  kt-hyperband       keras-tuner's Hyperband as its users write it (HyperModel, model.fit)
  kt-bayesian        keras-tuner's BayesianOptimization, the same way
  random             Optuna's random sampler, no pruning (early stopping only)
Datasets: scikit-learn's diabetes (regression), breast cancer (binary), digits (multiclass),
split once (fixed seed) into train / validation / test; searches see train and validation,
the test split scores each search's best model (its best epoch's weights).

Each run (tool, dataset, seed, budget) is a fresh process, appended as one JSON line to
benchmarks/results/search_quality.jsonl; the report merges every line there on the seeds it is
given (a rerun replaces the earlier line), so the matrix can be filled over several sessions:
    .venv/bin/python benchmarks/search_quality.py --datasets diabetes --seeds 0 1 2 3 4
    .venv/bin/python benchmarks/search_quality.py                  # all: 7 tools x 3 x 5 seeds
    .venv/bin/python benchmarks/search_quality.py --report-only --seeds 0 1 2 3 4
Writes benchmarks/results/search_quality.md and search_quality_<dataset>.png (best-so-far
against epochs and seconds: median over seeds, band from the lowest to the highest seed);
for a budget other than 300 or seeds other than 0-4, the names carry them
(search_quality_600.md, search_quality_digits_seeds0-9.png).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
LINES = RESULTS / "search_quality.jsonl"
TOOLS = ("tpe+sha", "tpe+hyperband", "tpe+median", "service-hyperband", "kt-hyperband",
         "kt-bayesian", "random")  # fmt: skip
DEFAULT = "tpe+sha"  # what `dlboost-search start` runs unless told otherwise
DATASETS = ("diabetes", "breast_cancer", "digits")
SEEDS = [0, 1, 2, 3, 4]  # every tool ran these
MAX_EPOCHS, PATIENCE = 27, 5
PARAMS = {
    "units": {"type": "int", "low": 16, "high": 256, "log": True},
    "layers": {"type": "int", "low": 1, "high": 3},
    "learning_rate": {"type": "float", "low": 1e-4, "high": 3e-2, "log": True},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "batch_size": {"type": "categorical", "choices": [16, 32, 64]},
}


class BudgetSpent(BaseException):
    """Stops a search from inside its training loop; a BaseException, so neither Optuna nor
    keras-tuner records it as a failed trial and carries on."""


class Budget:
    """The epoch counter every tool reports to; keeps the best model seen and the curve."""

    def __init__(self, epochs: int):
        self.epochs, self.spent, self.models = epochs, 0, 0
        self.started = time.perf_counter()
        self.best = math.inf
        self.best_model: Any = None
        self.best_weights: list | None = None
        self.curve: list[tuple[int, float, float]] = []  # (epochs spent, seconds, best so far)
        self._model: Any = None

    def on_epoch(self, model: Any, value: float) -> None:
        if model is not self._model:  # trials run one after another: a new model object
            self._model, self.models = model, self.models + 1
        self.spent += 1
        if math.isfinite(value) and value < self.best:
            self.best, self.best_model, self.best_weights = value, model, model.get_weights()
        self.curve.append((self.spent, time.perf_counter() - self.started, self.best))
        if self.spent >= self.epochs:
            raise BudgetSpent


def make_data(dataset: str, workdir: Path) -> tuple[Path, tuple]:
    """train/val as an NPZ the service reads, and the held-out test arrays (same encoding)."""
    import numpy as np

    from dlboost_search.data import prepare
    from dlboost_search.spaces import DataSpec

    full = prepare(DataSpec(builtin=dataset, validation_split=0.2), 0)
    order = np.random.default_rng(12345).permutation(len(full.x_train))
    test, train = order[: len(order) // 4], order[len(order) // 4 :]
    x, y = full.x_train[train], full.y_train[train]
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std == 0] = 1.0

    def scale(a):
        return ((a - mean) / std).astype("float32")

    if full.task == "regression":  # standardized with the search's training rows
        y_mean, y_std = y.mean(), y.std()
        fix_y = lambda t: ((t - y_mean) / y_std).astype("float32")  # noqa: E731
    else:
        fix_y = lambda t: t  # noqa: E731
    path = workdir / f"{dataset}.npz"
    np.savez(path, x_train=scale(x), y_train=fix_y(y), x_val=scale(full.x_val),
             y_val=fix_y(full.y_val))  # fmt: skip
    return path, (scale(full.x_train[test]), fix_y(full.y_train[test]), full.task)


def service_space(tool: str, npz: Path, task: str, seed: int):
    from dlboost_search.spaces import space_from_dict

    sampler, pruner = {"tpe+sha": ("tpe", "successive_halving"),
                       "tpe+hyperband": ("tpe", "hyperband"), "tpe+median": ("tpe", "median"),
                       "random": ("random", "none")}.get(tool, ("tpe", "none"))  # fmt: skip
    # The product's default for tpe+sha (the search runs to its epoch budget; as a study of 60
    # trials or more it gets 20 start-up trials); the 10 the other two were measured with.
    startup = {"startup_trials": 10} if tool in ("tpe+hyperband", "tpe+median") else {}
    return space_from_dict({
        "name": "quality", "data": {"path": str(npz), "task": task},
        "training": {"max_epochs": MAX_EPOCHS, "early_stopping": {"patience": PATIENCE}},
        "search": {"sampler": sampler, "pruner": pruner, "seed": seed, "trials": 10**6, **startup,
                   "max_consecutive_failures": 1000,
                   "backend": "hyperband" if tool == "service-hyperband" else "optuna",
                   "hyperband_iterations": 1000},
        "params": {**PARAMS, "optimizer": "adam", "activation": "relu"},
    }, "benchmark")  # fmt: skip


def run_service_optuna(tool: str, space: Any, budget: Budget) -> None:
    """The service's Optuna search as its worker runs it: sampler, pruner, builder, training."""
    import keras
    import optuna

    from dlboost_search.errors import TrialFailed
    from dlboost_search.spaces import suggest
    from dlboost_search.study import make_pruner, make_sampler
    from dlboost_search.training import TrainingRecord
    from dlboost_search.trial import TrialContext

    context = TrialContext(space, "benchmark", observe=budget.on_epoch)
    study = optuna.create_study(sampler=make_sampler(space, 0), pruner=make_pruner(space))

    def objective(trial: optuna.Trial) -> float:
        params = space.resolve(suggest(trial, space))
        model = context.model(params, trial.number)

        def report(epoch: int, value: float) -> None:
            trial.report(value, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()

        try:
            return context.fit(model, params, trial.number, record=TrainingRecord(), report=report)
        finally:
            keras.backend.clear_session(free_memory=False)

    study.optimize(objective, n_trials=10**6, catch=(TrialFailed,))


def run_service_hyperband(space: Any, budget: Budget, workdir: Path) -> None:
    """`dlboost-search start` with search.backend: hyperband, in this process."""
    from dlboost_search import hyperband
    from dlboost_search.study import create_or_check

    url = f"sqlite:///{workdir / 'studies.db'}"
    study = create_or_check(space, url)
    hyperband.run(study, url, space, on_event=lambda event: None, observe=budget.on_epoch)


def run_keras_tuner(
    tool: str, npz: Path, task: str, seed: int, budget: Budget, workdir: Path
) -> None:
    """keras-tuner used directly, as its documentation shows: a HyperModel and model.fit."""
    import keras
    import keras_tuner as kt
    import numpy as np

    arrays = np.load(npz)
    x, y, xv, yv = (arrays[k] for k in ("x_train", "y_train", "x_val", "y_val"))
    outputs, activation, loss = {
        "regression": (1, None, "mse"),
        "binary": (1, "sigmoid", "binary_crossentropy"),
        "multiclass": (int(max(y.max(), yv.max())) + 1, "softmax",
                       "sparse_categorical_crossentropy"),
    }[task]  # fmt: skip

    class Model(kt.HyperModel):
        def build(self, hp):
            model = keras.Sequential([keras.Input(shape=(x.shape[1],))])
            for _ in range(hp.Int("layers", 1, 3)):
                model.add(keras.layers.Dense(hp.Int("units", 16, 256, sampling="log"),
                                             activation="relu"))  # fmt: skip
                model.add(keras.layers.Dropout(hp.Float("dropout", 0.0, 0.5)))
            model.add(keras.layers.Dense(outputs, activation=activation))
            lr = hp.Float("learning_rate", 1e-4, 3e-2, sampling="log")
            model.compile(optimizer=keras.optimizers.Adam(lr), loss=loss)
            return model

        def fit(self, hp, model, *args, **kwargs):
            return model.fit(*args, batch_size=hp.Choice("batch_size", [16, 32, 64]), **kwargs)

    class Count(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            budget.on_epoch(self.model, float(logs["val_loss"]))

    common = {"objective": "val_loss", "seed": seed, "directory": str(workdir),
              "project_name": tool, "max_consecutive_failed_trials": 1000}  # fmt: skip
    if tool == "kt-hyperband":
        tuner = kt.Hyperband(Model(), max_epochs=MAX_EPOCHS, factor=3,
                             hyperband_iterations=1000, **common)  # fmt: skip
    else:
        tuner = kt.BayesianOptimization(Model(), max_trials=10**6, **common)
    tuner.search(x, y, validation_data=(xv, yv), epochs=MAX_EPOCHS, verbose=0,
                 callbacks=[keras.callbacks.EarlyStopping(patience=PATIENCE), Count()])  # fmt: skip


def test_scores(budget: Budget, test: tuple) -> dict[str, float]:
    """The best model's loss (and accuracy) on the held-out split."""
    import keras
    import numpy as np

    x_test, y_test, task = test
    model = budget.best_model
    model.set_weights(budget.best_weights)
    predicted = np.asarray(model.predict(x_test, verbose=0))
    if task == "regression":
        return {"test_loss": float(np.mean((predicted.ravel() - y_test.ravel()) ** 2))}
    if task == "binary":
        loss = keras.losses.binary_crossentropy(y_test.reshape(-1, 1), predicted)
        accuracy = np.mean((predicted.ravel() > 0.5) == (y_test.ravel() > 0.5))
    else:
        loss = keras.losses.sparse_categorical_crossentropy(y_test, predicted)
        accuracy = np.mean(predicted.argmax(axis=1) == y_test.ravel())
    return {"test_loss": float(np.mean(loss)), "test_accuracy": float(accuracy)}


def run_one(tool: str, dataset: str, seed: int, epochs: int) -> dict[str, Any]:
    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(threads=None)
    import keras
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="search_quality-") as tmp:
        workdir = Path(tmp)
        npz, test = make_data(dataset, workdir)
        budget = Budget(epochs)
        keras.utils.set_random_seed(seed)
        try:
            if tool.startswith("kt-"):
                run_keras_tuner(tool, npz, test[2], seed, budget, workdir)
            elif tool == "service-hyperband":
                run_service_hyperband(service_space(tool, npz, test[2], seed), budget, workdir)
            else:
                run_service_optuna(tool, service_space(tool, npz, test[2], seed), budget)
        except BudgetSpent:
            pass
        seconds = budget.curve[-1][1] if budget.curve else 0.0
        return {
            "tool": tool, "dataset": dataset, "seed": seed, "budget": epochs,
            "epochs_spent": budget.spent, "seconds": round(seconds, 2),
            "models": budget.models, "models_per_min": budget.models / seconds * 60,
            "best_val": budget.best, **test_scores(budget, test),
            "curve": [(e, round(s, 3), b) for e, s, b in budget.curve],
        }  # fmt: skip


def merged(budget: int, seeds: list[int], lines: Path = LINES) -> dict[tuple[str, str, int], dict]:
    """Every run recorded in `lines` at this budget on these seeds; a later line replaces an
    earlier one. Reports take one set of seeds, so every tool's medians are over the same seeds."""
    runs: dict[tuple[str, str, int], dict] = {}
    if lines.exists():
        for line in lines.read_text().splitlines():
            run = json.loads(line)
            if run["budget"] == budget and run["seed"] in seeds:
                runs[(run["tool"], run["dataset"], run["seed"])] = run
    return runs


def reached(run: dict, target: float) -> tuple[float, float]:
    """Epochs and seconds `run` took to reach `target` (inf if it never did)."""
    for epochs, seconds, best in run["curve"]:
        if best <= target:
            return epochs, seconds
    return math.inf, math.inf


def report(budget: int, seeds: list[int]) -> str:
    runs = merged(budget, seeds)
    lines = [
        f"Budget {budget} epochs per search, at most {MAX_EPOCHS} per trial; medians over the "
        f"seeds run (n) of {' '.join(map(str, seeds))}. 'to random's final': epochs / seconds "
        f"until the tool's best-so-far val_loss reached random search's final value on the same "
        f"seed (inf: never).",
        "",
        "| dataset | tool | n | best val_loss | test loss | test acc. | epochs to random's final "
        "| s to random's final | models built | models/min |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for dataset in DATASETS:
        for tool in TOOLS:
            mine = [r for (t, d, _), r in runs.items() if t == tool and d == dataset]
            if not mine:
                continue
            to_random = [
                reached(r, runs[("random", dataset, r["seed"])]["best_val"])
                for r in mine if ("random", dataset, r["seed"]) in runs
            ]  # fmt: skip

            def med(values, spec):
                values = [v for v in values if v is not None]
                return format(statistics.median(values), spec) if values else "-"

            lines.append(
                f"| {dataset} | {tool}{' (default)' if tool == DEFAULT else ''} | {len(mine)} "
                f"| {med([r['best_val'] for r in mine], '.4f')} "
                f"| {med([r['test_loss'] for r in mine], '.4f')} "
                f"| {med([r.get('test_accuracy') for r in mine], '.3f')} "
                f"| {med([e for e, _ in to_random], '.0f')} | {med([s for _, s in to_random], '.0f')} "
                f"| {med([r['models'] for r in mine], '.0f')} "
                f"| {med([r['models_per_min'] for r in mine], '.1f')} |"
            )
    return "\n".join(lines)


def suffix(budget: int, seeds: list[int]) -> str:
    """Report files of the default budget and seeds have plain names; others carry theirs."""
    label = "" if budget == 300 else f"_{budget}"
    if sorted(seeds) != SEEDS:
        low, high = min(seeds), max(seeds)
        contiguous = sorted(seeds) == list(range(low, high + 1))
        label += f"_seeds{low}-{high}" if contiguous else "_seeds" + "_".join(map(str, seeds))
    return label


def plot(budget: int, seeds: list[int]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    runs = merged(budget, seeds)
    warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before a curve starts
    written = []
    for dataset in DATASETS:
        tools = [t for t in TOOLS if any(k[0] == t and k[1] == dataset for k in runs)]
        if not tools:
            continue
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for tool in tools:
            mine = [r for (t, d, _), r in runs.items() if t == tool and d == dataset]
            longest = max(r["curve"][-1][1] for r in mine)
            for axis, column, grid in ((axes[0], 0, np.arange(1, budget + 1)),
                                       (axes[1], 1, np.linspace(0, longest, 200))):  # fmt: skip
                curves = []
                for r in mine:
                    xs = np.array([p[column] for p in r["curve"]])
                    ys = np.array([p[2] for p in r["curve"]])
                    at = np.searchsorted(xs, grid, side="right") - 1  # best so far at each x
                    curves.append(np.where(at >= 0, ys[np.clip(at, 0, None)], np.nan))
                curves = np.array(curves)
                label = f"{tool} (n={len(mine)})"
                axis.plot(grid, np.nanmedian(curves, axis=0), label=label,
                          linewidth=2.5 if tool == DEFAULT else 1.2)  # fmt: skip
                axis.fill_between(grid, np.nanmin(curves, axis=0), np.nanmax(curves, axis=0),
                                  alpha=0.12)  # fmt: skip
        for axis, xlabel in zip(axes, ("epochs spent", "seconds")):
            axis.set_xlabel(xlabel)
            axis.set_ylabel("best val_loss so far")
            axis.set_yscale("log")
            axis.grid(alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.suptitle(f"{dataset}: best-so-far val_loss, median over seeds (band: min-max)")
        fig.tight_layout()
        path = RESULTS / f"search_quality_{dataset}{suffix(budget, seeds)}.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tools", nargs="+", default=list(TOOLS), choices=TOOLS)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--seeds", nargs="+", type=int, default=SEEDS)
    parser.add_argument("--budget", type=int, default=300, help="epochs per search (300)")
    parser.add_argument("--report-only", action="store_true", help="merge, tabulate and plot")
    parser.add_argument("--one", nargs=3, metavar=("TOOL", "DATASET", "SEED"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.one:
        tool, dataset, seed = args.one
        print(json.dumps(run_one(tool, dataset, int(seed), args.budget)))
        return
    if not args.report_only:
        RESULTS.mkdir(parents=True, exist_ok=True)
        for seed in args.seeds:  # seeds outermost: a partial matrix still compares every tool
            for dataset in args.datasets:
                for tool in args.tools:
                    done = subprocess.run(
                        [sys.executable, __file__, "--one", tool, dataset, str(seed),
                         "--budget", str(args.budget)],
                        cwd=ROOT, capture_output=True, text=True,
                    )  # fmt: skip
                    if done.returncode != 0:
                        print(f"{tool} {dataset} {seed}: FAILED\n{done.stderr[-3000:]}",
                              file=sys.stderr, flush=True)  # fmt: skip
                        continue
                    run = json.loads(done.stdout.strip().splitlines()[-1])
                    with open(LINES, "a") as out:
                        out.write(json.dumps(run) + "\n")
                    brief = {k: v for k, v in run.items() if k != "curve"}
                    print(json.dumps(brief), file=sys.stderr, flush=True)
    table = report(args.budget, args.seeds)
    (RESULTS / f"search_quality{suffix(args.budget, args.seeds)}.md").write_text(table + "\n")
    print(table)
    for path in plot(args.budget, args.seeds):
        print(f"wrote {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
