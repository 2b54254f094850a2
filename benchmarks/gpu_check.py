"""GPUs on one machine: what a worker's device costs and gives, on search_spaces/digits_cnn.yaml.

Each setting runs in fresh worker processes placed and pinned as `dlboost-search start`
places them (devices.plan, then devices.pin and TensorFlow's import with memory growth or a
memory limit), all of a setting's workers training at once (a barrier after start-up):
  - an epoch of one digits_cnn model (parameters drawn from the space with seed 0, the same
    in every process): the first epoch (compile and tracing included) and a steady one (the
    median of the next ones), and the epochs per second of all the setting's workers together;
  - the CPU (GPUs hidden) with 1 and 2 workers sharing the cores, as `--workers 1` and `2`;
  - the first GPU with 1 worker (memory growth) and 2 workers (`--gpus-per-worker 0.5`, each
    limited to half its memory), each with mixed precision off and on (on a CPU `start`
    refuses mixed precision; see docs/many-machines.md);
  - memory per worker: host RSS, and the peak of TensorFlow's GPU allocator.
Without a GPU (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them) it says so and
measures the CPU settings only.

Prints a Markdown table and writes benchmarks/results/gpu_check.json. Run from the repository
root (about a minute on the CPU side):
    .venv/bin/python benchmarks/gpu_check.py [--epochs 5] [--space search_spaces/digits_cnn.yaml]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import time
from pathlib import Path
from typing import Any

from dlboost_search import devices

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu_check.json"


def measure(
    placement: devices.Placement, mixed: bool, space_file: str, epochs: int, ready, out
) -> None:
    """One worker process: pinned, TensorFlow imported, one model trained `epochs` epochs."""
    devices.pin(placement)
    from dlboost_search._tf import import_tensorflow_quietly

    seen = import_tensorflow_quietly(placement.threads, placement.memory_limit_mb)
    import optuna
    import tensorflow as tf

    from dlboost_search.spaces import load_space, space_from_dict, suggest
    from dlboost_search.training import TrainingRecord
    from dlboost_search.trial import TrialContext
    from dlboost_search.worker import rss_mb

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    space = load_space(space_file)
    as_dict = space.to_dict()
    as_dict["training"] = {
        **as_dict["training"],
        "mixed_precision": mixed,
        "early_stopping": {"patience": epochs},  # every epoch runs
    }
    space = space_from_dict(as_dict, space_file)
    context = TrialContext(space, "gpu_check", gpu=seen > 0)
    trial = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0)).ask()
    params = space.resolve(suggest(trial, space))
    model = context.model(params, 0)
    ready.wait()  # the setting's workers train at the same time
    stamps = [time.perf_counter()]
    context.fit(
        model, params, 0, record=TrainingRecord(), max_epochs=epochs,
        report=lambda epoch, value: stamps.append(time.perf_counter()),
    )  # fmt: skip
    laps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    peak = tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if seen else None
    out.put(
        {
            "device": devices.device_of(placement, seen),
            "first_epoch_s": laps[0],
            "steady_epoch_s": statistics.median(laps[1:]) if len(laps) > 1 else laps[0],
            "rss_mb": rss_mb(),
            "gpu_peak_mb": peak,
        }
    )


def run_setting(
    name: str, placements: list[devices.Placement], mixed: bool, space: str, epochs: int
) -> dict[str, Any]:
    context = multiprocessing.get_context("spawn")
    ready, out = context.Barrier(len(placements)), context.Queue()
    processes = [
        context.Process(target=measure, args=(p, mixed, space, epochs, ready, out))
        for p in placements
    ]
    for process in processes:
        process.start()
    workers = [out.get(timeout=900) for _ in processes]
    for process in processes:
        process.join()
    steady = statistics.median(w["steady_epoch_s"] for w in workers)
    peaks = [w["gpu_peak_mb"] for w in workers if w["gpu_peak_mb"] is not None]
    return {
        "setting": name,
        "devices": sorted({w["device"] for w in workers}),
        "workers": len(workers),
        "mixed_precision": mixed,
        "memory_limit_mb": placements[0].memory_limit_mb,
        "first_epoch_s": statistics.median(w["first_epoch_s"] for w in workers),
        "steady_epoch_s": steady,
        "epochs_per_s_all": sum(1 / w["steady_epoch_s"] for w in workers),
        "rss_mb": statistics.median(w["rss_mb"] for w in workers),
        "gpu_peak_mb": statistics.median(peaks) if peaks else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--space", default=str(ROOT / "search_spaces" / "digits_cnn.yaml"))
    args = parser.parse_args()
    cores = devices.cpu_cores()
    gpus = devices.visible_gpus()
    hidden = devices.Placement("cpu", "-1", None, None)
    settings: list[tuple[str, list[devices.Placement], bool]] = [
        ("cpu, 1 worker", [hidden], False),
        ("cpu, 2 workers", [devices.Placement("cpu", "-1", None, max(1, cores // 2))] * 2, False),
    ]
    if gpus:
        gpu = gpus[:1]
        for mixed in (False, True):
            settings += [
                (f"gpu:{gpu[0].index}, 1 worker", devices.plan(None, 1, gpu, cores), mixed),
                (f"gpu:{gpu[0].index}, 2 workers", devices.plan(None, 0.5, gpu, cores), mixed),
            ]
        print(f"GPUs: {', '.join(f'gpu:{g.index} ({g.memory_mb} MB)' for g in gpus)}")
    else:
        print(
            "no GPU here (nvidia-smi lists none, or CUDA_VISIBLE_DEVICES hides them): "
            "measuring the CPU side only."
        )
    rows = []
    for name, placements, mixed in settings:
        print(f"  {name}, mixed precision {'on' if mixed else 'off'}...", flush=True)
        rows.append(run_setting(name, placements, mixed, args.space, args.epochs))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(
        json.dumps({"cores": cores, "gpus": [vars(g) for g in gpus], "rows": rows}, indent=2)
    )
    print()
    print(
        "| setting | mixed precision | memory limit MB | first epoch s | steady epoch s "
        "| epochs/s, all workers | host RSS MB/worker | GPU peak MB/worker |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        limit = r["memory_limit_mb"] or "-"
        peak = "-" if r["gpu_peak_mb"] is None else f"{r['gpu_peak_mb']:.0f}"
        print(
            f"| {r['setting']} | {'on' if r['mixed_precision'] else 'off'} | {limit} "
            f"| {r['first_epoch_s']:.2f} | {r['steady_epoch_s']:.3f} "
            f"| {r['epochs_per_s_all']:.1f} | {r['rss_mb']:.0f} | {peak} |"
        )


if __name__ == "__main__":
    main()
