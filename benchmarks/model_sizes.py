"""How much room the trial models and mid-trial checkpoints of the shipped spaces take, and
what storing one costs.

For each space, 12 parameter sets drawn at random from it (seeded) plus its largest corner
(every int and float at its upper bound, the largest number among
numeric choices, the first of other choices: adam for the optimizer), each model built, compiled and trained one step (so
its optimizer's slots hold values, as a trial's do: a stored model carries them), saved as the
worker saves it and written to a FileSystemArtifactStore: the file's size, the parameter count and
the seconds to save and store it; and the mid-trial checkpoint a running trial of it would write
(training.TrainingState: variables, optimizer state, best weights), its size and the seconds to
take and store it.

    .venv/bin/python benchmarks/model_sizes.py [search_spaces/diabetes_mlp.yaml ...]
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SPACES = ["search_spaces/diabetes_mlp.yaml", "search_spaces/digits_cnn.yaml"]
DRAWS = 12


def largest(space) -> dict:
    from dlboost_search.spaces import FloatParam, IntParam

    corner = {}
    for name, spec in space.searched().items():
        if isinstance(spec, (IntParam, FloatParam)):
            corner[name] = spec.high
        elif all(isinstance(c, (int, float)) for c in spec.choices):
            corner[name] = max(spec.choices)
        else:  # the first choice: adam, whose two slots per weight make the largest file
            corner[name] = spec.choices[0]
    return space.resolve(corner)


def measure(path: str) -> dict:
    import optuna
    from optuna.artifacts import FileSystemArtifactStore, upload_artifact

    from dlboost_search.spaces import load_space, suggest
    from dlboost_search.training import TrainingState, compile_model
    from dlboost_search.trial import TrialContext

    space = load_space(path)
    context = TrialContext(space, path)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        store = FileSystemArtifactStore(folder)
        for i in range(DRAWS + 1):
            trial = study.ask()
            params = largest(space) if i == DRAWS else space.resolve(suggest(trial, space))
            model = context.model(params, i)
            compile_model(model, params, context.data.task, space.objective.metric)
            # One step of training: the optimizer's slots hold values, as after a trial (left
            # at zero they would compress to nothing in the .keras zip).
            data = context.data
            model.fit(data.x_train[:64], data.y_train[:64], epochs=1, batch_size=64, verbose=0)
            started = time.perf_counter()
            file = Path(folder) / f"trial-{i}.keras"
            model.save(file)
            upload_artifact(artifact_store=store, file_path=str(file), study_or_trial=trial)
            seconds = time.perf_counter() - started
            started = time.perf_counter()
            checkpoint = TrainingState(
                epoch=1, history=[0.0], best_value=0.0, best_epoch=1, since_improvement=0,
                variables=[np.asarray(v) for v in model.variables],
                optimizer=[np.asarray(v) for v in model.optimizer.variables],
                best_weights=model.get_weights(),
            ).dumps()  # fmt: skip
            store.write(f"checkpoint-{i}", io.BytesIO(checkpoint))
            checkpoint_seconds = time.perf_counter() - started
            rows.append(
                {"largest": i == DRAWS, "optimizer": params.get("optimizer"),
                 "n_params": model.count_params(),
                 "kb": file.stat().st_size / 1024, "seconds": seconds,
                 "checkpoint_kb": len(checkpoint) / 1024, "checkpoint_seconds": checkpoint_seconds}
            )  # fmt: skip
            study.tell(trial, 0.0)
    drawn = [r for r in rows if not r["largest"]]
    return {
        "space": path,
        "median_kb": statistics.median(r["kb"] for r in drawn),
        "max_drawn_kb": max(r["kb"] for r in drawn),
        "largest_kb": rows[-1]["kb"],
        "largest_params": rows[-1]["n_params"],
        "median_params": statistics.median(r["n_params"] for r in drawn),
        "median_store_s": statistics.median(r["seconds"] for r in drawn),
        "median_checkpoint_kb": statistics.median(r["checkpoint_kb"] for r in drawn),
        "largest_checkpoint_kb": rows[-1]["checkpoint_kb"],
        "median_checkpoint_s": statistics.median(r["checkpoint_seconds"] for r in drawn),
        "rows": rows,
    }


def main() -> None:
    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(None)
    results = [measure(path) for path in (sys.argv[1:] or SPACES)]
    out = Path("benchmarks/results/model_sizes.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(
        "| space | median parameters | median model | largest drawn | largest corner (parameters) | save + store, median |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {Path(r['space']).stem} | {r['median_params']:,.0f} | {r['median_kb']:,.0f} KB | "
            f"{r['max_drawn_kb']:,.0f} KB | {r['largest_kb']:,.0f} KB ({r['largest_params']:,}) | "
            f"{r['median_store_s']:.2f} s |"
        )
    print()
    print("| space | median checkpoint | largest corner's checkpoint | take + store, median |")
    print("|---|---:|---:|---:|")
    for r in results:
        print(
            f"| {Path(r['space']).stem} | {r['median_checkpoint_kb']:,.0f} KB | "
            f"{r['largest_checkpoint_kb']:,.0f} KB | {r['median_checkpoint_s']:.3f} s |"
        )


if __name__ == "__main__":
    main()
