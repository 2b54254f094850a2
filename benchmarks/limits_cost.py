"""What measuring a trial's model costs (limits.py): the weights' size and the one-row latency
that every complete trial records, against the trial's own training time.

For each shipped space below, in one warm process: a model with the space's example parameters
(each searched one at its low end or first choice) and one with the defaults of its family,
trained as a trial is (TrialContext.fit, at most 5 epochs), then timed: `weights_mb` and
`latency_ms` (3 warm-up calls, the first tracing, and 20 timed ones), 3 times each; medians.
Prints a Markdown table and writes benchmarks/results/limits_cost.json.

Run from the repository root (about a minute):
    .venv/bin/python benchmarks/limits_cost.py
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from tutorial_vs_service import src_fingerprint  # noqa: E402

SPACES = ("diabetes_mlp.yaml", "digits_cnn.yaml", "sunspots_rnn.yaml")
REPEATS = 3
EPOCHS = 5


def measure(context, params: dict) -> dict[str, float]:
    from dlboost_search import limits
    from dlboost_search.training import TrainingRecord

    model = context.model(params, 0)
    record = TrainingRecord()
    started = time.perf_counter()
    context.fit(model, params, 0, record=record, max_epochs=EPOCHS)
    fit = time.perf_counter() - started
    size, latency = [], []
    for _ in range(REPEATS):
        started = time.perf_counter()
        limits.weights_mb(model)
        size.append(time.perf_counter() - started)
        started = time.perf_counter()
        measured = limits.latency_ms(model, context.data.x_val[:1])
        latency.append(time.perf_counter() - started)
    return {
        "n_params": record.n_params,
        "fit_s (latency included)": round(fit, 3),
        "weights_mb_ms": round(statistics.median(size) * 1000, 2),
        "latency_ms_call_ms": round(statistics.median(latency) * 1000, 1),
        "latency_ms": measured,
    }


def main() -> None:
    from dlboost_search._tf import import_tensorflow_quietly

    import_tensorflow_quietly(None)
    from dlboost_search.spaces import load_space
    from dlboost_search.trial import TrialContext

    rows = []
    for name in SPACES:
        space = load_space(ROOT / "search_spaces" / name)
        context = TrialContext(space, name)
        for label, params in (
            ("low end", space.example_params()),
            ("defaults", space.resolve({})),
        ):
            rows.append({"space": name, "model": label, **measure(context, params)})
    print("| space | model | parameters | trial's fit, 5 epochs at most (s) | weights_mb (ms) "
          "| latency_ms, all 23 calls (ms) | median latency (ms) |")  # fmt: skip
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['space']} | {r['model']} | {r['n_params']:,} | "
              f"{r['fit_s (latency included)']} | {r['weights_mb_ms']} | "
              f"{r['latency_ms_call_ms']} | {r['latency_ms']} |")  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "limits_cost.json"
    out.write_text(json.dumps({"src": src_fingerprint(), "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
