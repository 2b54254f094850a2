"""Data larger than memory: peak memory and epoch time of a worker holding a table in memory
against one streaming it (docs/data.md, "Data larger than memory").

Generates, in chunks of a million rows (numpy, written by pyarrow, never whole in memory), a
Parquet table of 12 float32 features, a text column of 8 categories and a binary target: a
small one (--small-rows) and a big one of a few GB (--big-rows), in a temporary folder under
/tmp that is deleted at the end. Each case then runs in a fresh process, as a worker does:
TrialContext prepares the data (engine auto, the threshold set through
DLBOOST_STREAM_ABOVE_BYTES to hold or to stream), builds the MLP of the space's defaults
(64 units, batch 1024) and trains one epoch through `fit` as a trial does. The process reports
its peak RSS (ru_maxrss), the preparation time and the epoch's time (validation included).
The big table in memory runs only when the small one's peak RSS per byte of file, times the big
file, fits in this machine's memory; otherwise the row says it was skipped and why.

Run from the repository root (about 10 minutes on 2 cores):
    .venv/bin/python benchmarks/streaming.py
Writes benchmarks/results/streaming.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CHUNK = 1_000_000
FEATURES = 12

CASE = """
import json, resource, sys, time
from dlboost_search._tf import import_tensorflow_quietly
import_tensorflow_quietly(None)
from dlboost_search.spaces import space_from_dict
from dlboost_search.trial import TrialContext
from dlboost_search.training import TrainingRecord
space = space_from_dict(json.loads(sys.argv[1]), "benchmark")
started = time.perf_counter()
context = TrialContext(space, "benchmark")
prepared = time.perf_counter() - started
params = space.resolve({})
model = context.model(params, 0)
record = TrainingRecord()
context.fit(model, params, 0, record=record, max_epochs=1)
print(json.dumps({
    "engine": context.engine, "streamed": type(context.data).__name__ == "StreamedData",
    "prepare_s": round(prepared, 1), "epoch_s": round(record.train_seconds, 1),
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    "training_rows": context.data.n_train,
}))
"""


def generate(path: Path, rows: int) -> None:
    """A Parquet table of `rows` rows, written a chunk at a time."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    weights = rng.normal(size=FEATURES).astype("float32")
    writer = None
    for start in range(0, rows, CHUNK):
        n = min(CHUNK, rows - start)
        x = rng.standard_normal((n, FEATURES), dtype="float32")
        colors = rng.integers(0, 8, n)
        signal = x @ weights + (colors % 3) - 1 + rng.standard_normal(n, dtype="float32")
        columns = {f"f{i}": x[:, i] for i in range(FEATURES)}
        columns["color"] = pa.DictionaryArray.from_arrays(
            colors.astype("int32"), [f"c{i}" for i in range(8)]
        ).cast(pa.string())
        columns["target"] = np.where(signal > 0, "yes", "no")
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table)
    writer.close()


def run_case(path: Path, streamed: bool) -> dict:
    space = {
        "name": "streaming-benchmark",
        "data": {"path": str(path), "target": "target"},
        "training": {"max_epochs": 1, "batch_size": 1024},
        "params": {},
    }
    env = {**os.environ, "DLBOOST_STREAM_ABOVE_BYTES": "0" if streamed else str(10**15)}
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CASE, json.dumps(space)], env=env,
                          capture_output=True, text=True)  # fmt: skip
    if done.returncode != 0:
        return {"failed": done.stderr[-2000:], "exit": done.returncode}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = round(time.perf_counter() - started, 1)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-rows", type=int, default=4_000_000)
    parser.add_argument("--big-rows", type=int, default=40_000_000)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from dlboost_search.devices import machine_memory

    memory = machine_memory()
    rows = []
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="dlboost-streaming-") as folder:
        for label, n in (("small", args.small_rows), ("big", args.big_rows)):
            path = Path(folder) / f"{label}.parquet"
            started = time.perf_counter()
            generate(path, n)
            size = path.stat().st_size
            print(f"{label}: {n} rows, {size / 1e9:.2f} GB, generated in "
                  f"{time.perf_counter() - started:.0f} s", flush=True)  # fmt: skip
            for streamed in (False, True):
                case = {"table": label, "rows": n, "file_gb": round(size / 1e9, 2), "file_bytes": size,
                        "how": "streamed" if streamed else "in memory"}  # fmt: skip
                small = next((r for r in rows if r["table"] == "small" and r["how"] == "in memory"
                              and "peak_rss_mb" in r), None)  # fmt: skip
                if not streamed and label == "big" and small:
                    per_byte = small["peak_rss_mb"] * 2**20 / small["file_bytes"]
                    needed = per_byte * size
                    if needed > 0.8 * memory:
                        case["skipped"] = (
                            f"needs about {needed / 1e9:.0f} GB ({per_byte:.1f} x the file, as "
                            f"measured on the small table), this machine has "
                            f"{memory / 1e9:.0f} GB"
                        )
                        rows.append(case)
                        print(case, flush=True)
                        continue
                case.update(run_case(path, streamed))
                rows.append(case)
                print(case, flush=True)
            path.unlink()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "streaming.json").write_text(json.dumps(rows, indent=2) + "\n")
    print("\n| table | file | rows | how | engine | peak RSS | preparing | one epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "skipped" in r:
            print(f"| {r['table']} | {r['file_gb']} GB | {r['rows']:,} | {r['how']} | | skipped: "
                  f"{r['skipped']} | | |")  # fmt: skip
        elif "failed" in r:
            print(f"| {r['table']} | {r['file_gb']} GB | {r['rows']:,} | {r['how']} | | failed "
                  f"(exit {r['exit']}) | | |")  # fmt: skip
        else:
            print(f"| {r['table']} | {r['file_gb']} GB | {r['rows']:,} | {r['how']} | "
                  f"{r['engine']} | {r['peak_rss_mb'] / 1024:.2f} GiB | {r['prepare_s']} s | "
                  f"{r['epoch_s']} s |")  # fmt: skip


if __name__ == "__main__":
    main()
