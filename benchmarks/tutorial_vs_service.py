"""dlboost-search vs. the plain Optuna + Keras loop that tutorials teach, same wall-clock budget.

What it measures, on search_spaces/diabetes_mlp.yaml (same space, data, split, pruner):
  service  - `dlboost-search start SPACE --trials 1000000 --quiet` on a fresh SQLite file, sent
             SIGTERM when the budget is spent (the service closes the running trial as FAIL);
  tutorial - a fresh Python process running optuna.create_study(storage="sqlite:///...") with
             TPESampler(seed) + HyperbandPruner(1, max_epochs), default SQLite settings, and an
             objective that samples the same parameters (dlboost_search.spaces.suggest), builds a
             keras.Sequential MLP of the same shape and calls model.fit on NumPy arrays with
             validation_split=0.2, EarlyStopping and KerasPruningCallback, clear_session between
             trials, study.optimize(timeout=...); it gets the same SIGTERM at the deadline.
The clock starts when the process is launched, so both pay their own Python/TensorFlow start-up.
Only trials finished (COMPLETE or PRUNED) before the deadline count; the best value is the best
val_loss of a COMPLETE trial. Repeats alternate the order (ab, ba, ab, ...). Medians are reported.

Run from the repository root:
    .venv/bin/python benchmarks/tutorial_vs_service.py              # 3 repeats x 180 s each
    .venv/bin/python benchmarks/tutorial_vs_service.py --budget 60 --repeats 1
Writes benchmarks/results/tutorial_vs_service.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from importlib.metadata import version
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "diabetes_mlp.yaml"
RESULTS = ROOT / "benchmarks" / "results"
GRACE_S = 150  # how long a process may take to exit after SIGTERM


def src_fingerprint() -> str:
    """Hash of the service's source: the results belong to this version of src/."""
    digest = hashlib.sha256()
    for path in sorted((ROOT / "src").rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def tutorial_model(p: dict, n_features: int, task: str = "regression", n_outputs: int = 1):
    """The tutorial's model: a keras.Sequential of the space's shape, compiled with the task's
    usual loss (and accuracy for classifiers)."""
    import keras

    model = keras.Sequential([keras.Input(shape=(n_features,))])
    for _ in range(p["layers"]):
        model.add(
            keras.layers.Dense(
                p["units"],
                activation=p["activation"],
                kernel_regularizer=keras.regularizers.L1L2(l1=p["l1"], l2=p["l2"]),
            )
        )
        if p["batch_norm"]:
            model.add(keras.layers.BatchNormalization())
        model.add(keras.layers.Dropout(p["dropout"]))
    activation, loss = {"regression": (None, "mse"), "binary": ("sigmoid", "binary_crossentropy"),
                        "multiclass": ("softmax", "sparse_categorical_crossentropy")}[task]  # fmt: skip
    model.add(keras.layers.Dense(n_outputs, activation=activation))
    optimizer = {"adam": keras.optimizers.Adam, "rmsprop": keras.optimizers.RMSprop,
                 "sgd": keras.optimizers.SGD}[p["optimizer"]]  # fmt: skip
    clip = {k: p[k] for k in ("clipvalue", "clipnorm") if p.get(k) is not None}
    model.compile(optimizer(learning_rate=p["learning_rate"], **clip), loss,
                  metrics=[] if task == "regression" else ["accuracy"])  # fmt: skip
    return model


def tutorial(space_path: str, url: str, deadline: float) -> None:
    """The tutorial baseline; runs in its own process (see --tutorial-child)."""
    import keras
    import optuna
    from optuna_integration import KerasPruningCallback

    from dlboost_search.data import prepare
    from dlboost_search.spaces import load_space, suggest

    space = load_space(space_path)
    seed = space.search.seed or 0
    data = prepare(space.data, seed)
    x = np.concatenate([data.x_train, data.x_val])
    y = np.concatenate([data.y_train, data.y_val])
    split = space.data.validation_split
    # Keras holds out the last rows: exactly the service's validation rows.
    assert len(x) - int(len(x) * (1 - split)) == len(data.x_val), (len(x), len(data.x_val))
    max_epochs, metric = space.training.max_epochs, space.objective.metric
    best = min if space.direction == "minimize" else max

    def objective(trial: optuna.Trial) -> float:
        keras.backend.clear_session()
        p = space.resolve(suggest(trial, space))
        model = tutorial_model(p, x.shape[1], data.task, data.n_outputs)
        history = model.fit(
            x, y, validation_split=split, epochs=max_epochs, batch_size=p["batch_size"],
            callbacks=[
                keras.callbacks.EarlyStopping(
                    monitor=metric, patience=space.training.early_stopping.patience,
                    restore_best_weights=True),
                KerasPruningCallback(trial, metric),
            ],
            verbose=0,
        )  # fmt: skip
        return best(history.history[metric])

    study = optuna.create_study(
        study_name=space.name,  # same name: Hyperband puts trial n in the same bracket
        storage=url,
        direction=space.direction,
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs),
    )
    try:
        study.optimize(objective, timeout=max(1.0, deadline - time.time()))
    except KeyboardInterrupt:
        pass  # Ctrl-C by hand: Optuna already marked the running trial FAIL


def run_until(cmd: list[str], budget: float, log) -> int:
    """Run `cmd` from the repository root, SIGTERM it after `budget` seconds, wait for it to
    close its trials (killed after GRACE_S more); return its exit code."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        proc.wait(timeout=budget)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # SIGINT is ignored in background jobs
    try:
        proc.wait(timeout=GRACE_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    return proc.returncode


def run_once(approach: str, budget: float, workdir: Path, space_path: Path = SPACE) -> dict:
    """Launch one approach on a fresh SQLite file, SIGTERM it at the deadline, read the trials.

    `approach`: "tutorial", "service", or "service:ENGINE" (the space with training.engine
    set to ENGINE). The service's copy of the space uses the tutorial's Hyperband pruner."""
    import optuna
    import yaml

    from dlboost_search.spaces import load_space

    db = workdir / f"{approach}.db"
    url = f"sqlite:///{db}"
    log = open(workdir / f"{approach}.log", "w")
    load_before, src_before = os.getloadavg()[0], src_fingerprint()
    started = time.time()
    deadline = started + budget
    space = load_space(space_path)
    if approach.startswith("service"):
        # The tutorial's pruner (the shipped spaces default to successive halving since the
        # search-quality benchmark), so that only the training loops differ.
        raw = yaml.safe_load(space_path.read_text())
        raw.setdefault("search", {})["pruner"] = "hyperband"
        if ":" in approach:
            raw.setdefault("training", {})["engine"] = approach.split(":")[1]
        space_path = workdir / space_path.name
        space_path.write_text(yaml.safe_dump(raw))
        cmd = [str(ROOT / ".venv/bin/dlboost-search"), "start", str(space_path),
               "--trials", "1000000", "--storage", url, "--quiet"]  # fmt: skip
    else:
        cmd = [sys.executable, __file__, "--tutorial-child", url, str(deadline), str(space_path)]
    exit_code = run_until(cmd, budget, log)
    exited = time.time()
    log.close()

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name=space.name, storage=url)
    end = datetime.fromtimestamp(deadline)
    trials = study.get_trials(deepcopy=False)
    done = [
        t for t in trials if t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete <= end
    ]
    complete = [t for t in done if t.state.name == "COMPLETE"]
    first_start = min((t.datetime_start for t in trials if t.datetime_start), default=None)
    durations = [(t.datetime_complete - t.datetime_start).total_seconds() for t in done]
    epochs = [len(t.intermediate_values) for t in done]
    # Trial time ~ fixed cost per model (build, compile, tracing) + cost per epoch.
    per_epoch, fixed = np.polyfit(epochs, durations, 1) if len(done) > 2 else (None, None)
    return {
        "approach": approach,
        "budget_s": budget,
        "exit_code": exit_code,
        "exit_after_deadline_s": round(exited - deadline, 1),
        "finished": len(done),
        "complete": len(complete),
        "pruned": len(done) - len(complete),
        "failed_or_cut": sum(t.state.name == "FAIL" for t in trials),
        "left_running": sum(t.state.name == "RUNNING" for t in trials),
        "finished_after_deadline": sum(
            t.state.name in ("COMPLETE", "PRUNED") and t.datetime_complete > end for t in trials
        ),
        "trials_per_min": len(done) / budget * 60,
        "best_value": (min if space.direction == "minimize" else max)(
            (t.value for t in complete), default=None
        ),
        "startup_s": (first_start.timestamp() - started) if first_start else None,
        "in_trial_s": round(sum(durations), 1),
        "mean_epochs": float(np.mean(epochs)) if epochs else None,
        "fixed_s_per_trial": None if fixed is None else round(float(fixed), 3),
        "s_per_epoch": None if per_epoch is None else round(float(per_epoch), 4),
        "workers": len({t.user_attrs.get("worker") for t in done} - {None}),
        "load_avg_1min_before": load_before,
        "src": src_before if src_fingerprint() == src_before else "CHANGED DURING RUN",
        "log_tail": (workdir / f"{approach}.log").read_text()[-1500:],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=float, default=180.0, help="seconds per run (180)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each approach (3)")
    parser.add_argument("--out", default=str(RESULTS / "tutorial_vs_service.json"))
    parser.add_argument(
        "--tutorial-child", nargs=3, metavar=("URL", "DEADLINE", "SPACE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.tutorial_child:
        url, deadline, space_path = args.tutorial_child
        return tutorial(space_path, url, float(deadline))

    env = {"cpus": os.cpu_count(), "python": platform.python_version(),
           "platform": platform.platform(), **{p: version(p) for p in
           ("tensorflow", "keras", "optuna", "optuna-integration", "dlboost-search")}}  # fmt: skip
    src = src_fingerprint()
    runs = []
    with tempfile.TemporaryDirectory(prefix="tutorial_vs_service-") as tmp:
        for r in range(args.repeats):
            order = ("service", "tutorial") if r % 2 == 0 else ("tutorial", "service")
            for approach in order:
                workdir = Path(tmp) / f"{r}-{approach}"
                workdir.mkdir()
                result = {"repeat": r, **run_once(approach, args.budget, workdir)}
                runs.append(result)
                brief = {k: v for k, v in result.items() if k != "log_tail"}
                print(json.dumps(brief), file=sys.stderr, flush=True)

    def median(approach: str, key: str):
        values = [x[key] for x in runs if x["approach"] == approach and x[key] is not None]
        return statistics.median(values) if values else None

    keys = ("trials_per_min", "best_value", "finished", "complete", "pruned", "startup_s",
            "in_trial_s", "mean_epochs", "fixed_s_per_trial", "s_per_epoch")  # fmt: skip
    summary = {a: {k: median(a, k) for k in keys} for a in ("service", "tutorial")}

    def divide(a: float, b: float) -> float:
        return a / b if b else float("inf")

    ratio = divide(summary["service"]["trials_per_min"], summary["tutorial"]["trials_per_min"])
    stable = all(x["src"] == src for x in runs) and src_fingerprint() == src
    lines = [
        f"Median of {args.repeats} repeat(s) x {args.budget:g} s per approach, "
        f"{env['cpus']} CPUs, TensorFlow {env['tensorflow']}, Keras {env['keras']}, "
        f"Optuna {env['optuna']}; src/ fingerprint {src}"
        f"{'' if stable else ' (WARNING: src/ changed during the benchmark)'}.",
        "",
        "| approach | finished trials/min | best val_loss | finished (complete+pruned) "
        "| start-up to 1st trial (s) | time inside trials (s) | mean epochs/trial "
        "| fixed s/trial | s/epoch |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def f(value, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for a in ("service", "tutorial"):
        s = summary[a]
        lines.append(
            f"| {a} | {f(s['trials_per_min'], '.1f')} | {f(s['best_value'], '.4f')} "
            f"| {f(s['finished'], 'g')} ({f(s['complete'], 'g')}+{f(s['pruned'], 'g')}) "
            f"| {f(s['startup_s'], '.1f')} | {f(s['in_trial_s'], '.0f')} "
            f"| {f(s['mean_epochs'], '.1f')} | {f(s['fixed_s_per_trial'], '.2f')} "
            f"| {f(s['s_per_epoch'], '.4f')} |"
        )
    per_repeat = []
    for r in range(args.repeats):
        pair = {x["approach"]: x for x in runs if x["repeat"] == r}
        per_repeat.append(
            divide(pair["service"]["trials_per_min"], pair["tutorial"]["trials_per_min"])
        )
    bests = summary["service"]["best_value"], summary["tutorial"]["best_value"]
    better = None not in bests and bests[0] <= bests[1]
    lines += [
        "",
        f"Trials/min ratio service / tutorial: **{ratio:.2f}x** (per repeat: "
        f"{', '.join(f'{x:.2f}' for x in per_repeat)}). Target >= 2x at an equal or better "
        f"best value: **{'met' if ratio >= 2 and better else 'NOT met'}** "
        f"(best val_loss {'equal or better' if better else 'worse'}).",
    ]
    print("\n".join(lines))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(
        {"args": {"budget_s": args.budget, "repeats": args.repeats}, "environment": env,
         "src_fingerprint": src, "src_stable": stable,
         "runs": runs, "median": summary, "ratio_trials_per_min": ratio,
         "ratio_per_repeat": per_repeat, "table_markdown": "\n".join(lines)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
