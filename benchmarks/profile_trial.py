"""Where a trial's time goes: the service's training vs. the tutorial's model.fit, and storage.

Measures, in one warm process, on search_spaces/diabetes_mlp.yaml:
  - cold start: wall time of a fresh `python -c "import tensorflow, keras, optuna"`;
  - per model, for 12 parameter sets drawn at random from the space: the fixed cost (build,
    compile, tracing, clean-up) and the cost per epoch, from timing 1 and 6 epochs (no early
    stop, no pruning), for dlboost_search.training.train (the service) and for
    keras.Sequential + model.fit(validation_split=0.2) (the tutorial), and the service's fixed
    cost step by step (build and compile, variables, tracing, first call, clean-up);
  - storage: one trial's writes (ask, 10 reports with should_prune, 6 user attributes, tell)
    on the service's SQLite settings (WAL, synchronous=NORMAL) and on Optuna's defaults, and
    the same with the service's TPE sampler drawing the space's parameters after 100 trials:
    what a trial costs before any training.
Prints a Markdown table and writes benchmarks/results/profile_trial.json.

Run from the repository root (about 3 minutes):
    .venv/bin/python benchmarks/profile_trial.py
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tutorial_vs_service import src_fingerprint, tutorial_model  # noqa: E402

SPACE = ROOT / "search_spaces" / "diabetes_mlp.yaml"
MODELS = 12
# The user attributes a service trial writes.
TRIAL_ATTRS = ("worker", "epochs_trained", "best_epoch", "n_params", "train_seconds",
               "worker_rss_mb")  # fmt: skip


def timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def fixed_cost_parts(build, p: dict, data) -> dict[str, float]:
    """The epoch loop's fixed cost for one model, step by step (training.train's own steps)."""
    import keras
    import tensorflow as tf

    from dlboost_search import training

    x, y, x_val, y_val = training.as_tensors(data)
    seed = tf.constant([0, 0])
    parts, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        nonlocal started
        parts[name] = time.perf_counter() - started
        started = time.perf_counter()

    model = build(p, data.input_shape, data.task, data.n_outputs)
    training.compile_model(model, p, data.task)
    lap("build + compile")
    model.optimizer.build(model.trainable_variables)
    model.test_step((x_val[:2], y_val[:2]))
    epoch = training.epoch_function(model, len(x), len(x_val), int(p["batch_size"]))
    lap("optimizer and metric variables")
    epoch.get_concrete_function(x, y, x_val, y_val, seed)
    lap("tracing Keras' train and test steps")
    epoch(x, y, x_val, y_val, seed)
    lap("first call (graph set-up + one epoch)")
    keras.backend.clear_session(free_memory=False)
    lap("clear_session")
    return parts


def main() -> None:
    cold = statistics.median(
        timed(
            lambda: subprocess.run(
                [sys.executable, "-c", "import tensorflow, keras, optuna"], check=True
            )
        )  # fmt: skip
        for _ in range(3)
    )
    import keras
    import numpy as np
    import optuna

    from dlboost_search.data import prepare
    from dlboost_search.models import build_function
    from dlboost_search.spaces import load_space, suggest
    from dlboost_search.storage import open_storage
    from dlboost_search.study import make_pruner, make_sampler
    from dlboost_search.training import TrainingRecord, train

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE)
    data = prepare(space.data, 0)
    x, y = np.concatenate([data.x_train, data.x_val]), np.concatenate([data.y_train, data.y_val])
    draw = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    params = [space.resolve(suggest(draw.ask(), space)) for _ in range(MODELS)]
    build = build_function(space.model)

    def service(p: dict, epochs: int) -> None:
        model = build(p, data.input_shape, data.task, data.n_outputs)
        train(model, p, data, max_epochs=epochs, patience=1000, min_delta=0.0,
              monitor="val_loss", direction="minimize", seed=0, record=TrainingRecord())  # fmt: skip
        keras.backend.clear_session()

    def tutorial(p: dict, epochs: int) -> None:
        keras.backend.clear_session()
        model = tutorial_model(p, x.shape[1])
        model.fit(x, y, validation_split=0.2, epochs=epochs, batch_size=p["batch_size"], verbose=0)

    rows = {}
    for name, run in (("service", service), ("tutorial", tutorial)):
        run(params[0], 2)  # warm-up: first-use costs of the process, not of a trial
        one = [timed(lambda p=p: run(p, 1)) for p in params]
        six = [timed(lambda p=p: run(p, 6)) for p in params]
        per_epoch = [(b - a) / 5 for a, b in zip(one, six)]
        rows[name] = {
            "fixed_s": statistics.median(a - e for a, e in zip(one, per_epoch)),
            "per_epoch_s": statistics.median(per_epoch),
            "one_epoch_trial_s": statistics.median(one),
        }

    parts = [fixed_cost_parts(build, p, data) for p in params]
    fixed_parts = {k: statistics.median(part[k] for part in parts) for k in parts[0]}

    storage = {}
    with tempfile.TemporaryDirectory() as tmp:
        # Defaults first: open_storage's pragmas apply to every SQLite connection made after it.
        for label, url, opener in (
            ("tutorial (Optuna defaults)", f"sqlite:///{tmp}/plain.db", lambda u: u),
            ("service (WAL, synchronous=NORMAL)", f"sqlite:///{tmp}/wal.db", open_storage),
        ):
            study = optuna.create_study(storage=opener(url), study_name="profile",
                                        pruner=optuna.pruners.HyperbandPruner(1, 100))  # fmt: skip

            def one_trial() -> None:
                trial = study.ask()
                for epoch in range(10):
                    trial.report(1.0 / (epoch + 1), epoch)
                    trial.should_prune()
                for key in TRIAL_ATTRS:
                    trial.set_user_attr(key, 1)
                study.tell(trial, 0.5)

            storage[label] = statistics.median(timed(one_trial) for _ in range(30))

        # What a trial costs the service with no training at all: its sampler drawing the
        # space's parameters from 100 earlier trials, plus the writes above.
        study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp}/tpe.db"),
                                    sampler=make_sampler(space, 0), pruner=make_pruner(space))  # fmt: skip

        def sampled_trial() -> None:
            trial = study.ask()
            p = space.resolve(suggest(trial, space))
            for epoch in range(10):
                trial.report(p["learning_rate"] + 1.0 / (epoch + 1), epoch)
                if trial.should_prune():
                    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
                    return
            for key in TRIAL_ATTRS:
                trial.set_user_attr(key, 1)
            study.tell(trial, p["learning_rate"])

        for _ in range(100):
            sampled_trial()
        label = "service with its TPE sampler after 100 trials (sampling + writes)"
        storage[label] = statistics.median(timed(sampled_trial) for _ in range(30))

    lines = [
        f"src/ fingerprint {src_fingerprint()}; medians over {MODELS} random parameter sets.",
        "",
        f"Cold `import tensorflow, keras, optuna` in a fresh process: {cold:.1f} s.",
        "",
        "| training | fixed cost per model (s) | cost per epoch (s) | 1-epoch trial (s) |",
        "|---|---:|---:|---:|",
        *(
            f"| {k} | {v['fixed_s']:.3f} | {v['per_epoch_s']:.4f} | {v['one_epoch_trial_s']:.3f} |"
            for k, v in rows.items()
        ),  # fmt: skip
        "",
        "| epoch loop's fixed cost, step by step | s |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in fixed_parts.items()),
        "",
        "| storage | one trial without training: ask + 10 reports + 6 user attrs + tell (s) |",
        "|---|---:|",
        *(f"| {k} | {v:.3f} |" for k, v in storage.items()),
    ]
    print("\n".join(lines))
    out = ROOT / "benchmarks" / "results" / "profile_trial.json"
    out.write_text(json.dumps({"cold_import_s": cold, "training": rows,
                               "fixed_parts_s": fixed_parts, "storage_s": storage,
                               "table_markdown": "\n".join(lines)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
