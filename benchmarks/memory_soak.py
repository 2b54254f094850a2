"""Memory soak: does the worker's resident memory stay bounded over 200 trials thanks to recycling?

Runs the diabetes space with a short training budget (a temporary copy of
search_spaces/diabetes_mlp.yaml with max_epochs 5, patience 2, pruner none; all else kept),
200 trials, twice on fresh SQLite files:
  `dlboost-search start COPY.yaml --trials 200 --recycle-every 50`   (the default recycling)
  `dlboost-search start COPY.yaml --trials 200 --recycle-every 200`  (recycling off: one worker)
and reads the worker_rss_mb user attribute (the worker's RSS after each trial) from the storage.
Prints a Markdown table (RSS at trials 1, 50, 100, 150, 200, the max, and the growth per trial
fitted by least squares) and writes benchmarks/results/memory_soak.csv (trial, RSS of both runs)
and memory_soak.json. No PNG: plotly needs kaleido (not installed) to write images.

Run from the repository root (about 15 minutes on 2 cores):
    .venv/bin/python benchmarks/memory_soak.py
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "diabetes_mlp.yaml"
RESULTS = ROOT / "benchmarks" / "results"
CHECKPOINTS = (1, 50, 100, 150, 200)


def soak(space_file: Path, trials: int, recycle_every: int, workdir: Path) -> dict:
    url = f"sqlite:///{workdir / f'recycle-{recycle_every}.db'}"
    started = time.perf_counter()
    subprocess.run(
        [str(ROOT / ".venv/bin/dlboost-search"), "start", str(space_file), "--trials", str(trials),
         "--recycle-every", str(recycle_every), "--storage", url, "--quiet"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    elapsed = time.perf_counter() - started
    study = optuna.load_study(
        study_name=yaml.safe_load(space_file.read_text())["name"], storage=url
    )
    trials_ = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    rss = [t.user_attrs.get("worker_rss_mb") for t in trials_]
    return {
        "recycle_every": recycle_every,
        "elapsed_s": round(elapsed, 1),
        "states": {
            s: sum(t.state.name == s for t in trials_) for s in ("COMPLETE", "PRUNED", "FAIL")
        },
        "workers": len({t.user_attrs.get("worker") for t in trials_}),
        "rss_mb": rss,
    }


def slope(rss: list[float | None], first: int = 1) -> float:
    """Least-squares growth in MB per trial, from trial `first` (1-based) on."""
    points = [(n, v) for n, v in enumerate(rss, 1) if n >= first and v is not None]
    return float(np.polyfit(*np.array(points, dtype=float).T, 1)[0])


def peak(rss: list[float | None]) -> float | None:
    return max((v for v in rss if v is not None), default=None)


def mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    raw = yaml.safe_load(SPACE.read_text())
    raw["training"]["max_epochs"] = 5
    raw["training"]["early_stopping"]["patience"] = 2
    raw["search"]["pruner"] = "none"
    runs = []
    with tempfile.TemporaryDirectory(prefix="memory_soak-") as tmp:
        space_file = Path(tmp) / "diabetes_soak.yaml"
        space_file.write_text(yaml.safe_dump(raw, sort_keys=False))
        for recycle_every in (50, args.trials):
            runs.append(soak(space_file, args.trials, recycle_every, Path(tmp)))
            print(json.dumps({k: v for k, v in runs[-1].items() if k != "rss_mb"}), flush=True)

    points = [n for n in CHECKPOINTS if n <= args.trials]
    src = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "src").rglob("*.py"))))
    src = src.hexdigest()[:12]  # same fingerprint as tutorial_vs_service.py
    lines = [
        f"Worker RSS (MB) after trial n; diabetes space with max_epochs 5, patience 2, no pruner; "
        f"{args.trials} trials; {os.cpu_count()} CPUs, TensorFlow {version('tensorflow')}, "
        f"Keras {version('keras')}; src/ fingerprint {src}.",
        "",
        "| --recycle-every | workers | "
        + " | ".join(f"trial {n}" for n in points)
        + " | max | growth MB/trial (all) | growth MB/trial (trials 10+) | wall time (s) |",
        "|---|---:|" + "---:|" * (len(points) + 4),
    ]
    for run in runs:
        rss = run["rss_mb"]
        lines.append(
            f"| {run['recycle_every']} | {run['workers']} | "
            + " | ".join(mb(rss[n - 1]) for n in points)
            + f" | {mb(peak(rss))} | {slope(rss):.3f} | {slope(rss, 10):.3f} | {run['elapsed_s']:.0f} |"
        )
    off = runs[-1]["rss_mb"]
    lines += [
        "",
        f"Without recycling the worker grows {slope(off):.3f} MB per trial (least squares over all "
        f"{len(off)} trials), {off[-1] - off[0]:+.0f} MB from trial 1 to trial {len(off)}; with "
        f"--recycle-every 50 the max is {mb(peak(runs[0]['rss_mb']))} MB against {mb(peak(off))} MB.",
    ]
    print("\n".join(lines))

    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "memory_soak.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["trial"] + [f"rss_mb_recycle_{r['recycle_every']}" for r in runs])
        for i in range(max(len(r["rss_mb"]) for r in runs)):
            writer.writerow(
                [i + 1] + [r["rss_mb"][i] if i < len(r["rss_mb"]) else "" for r in runs]
            )
    (RESULTS / "memory_soak.json").write_text(json.dumps(
        {"src_fingerprint": src, "runs": runs, "table_markdown": "\n".join(lines)}, indent=2) + "\n")  # fmt: skip


if __name__ == "__main__":
    main()
