"""Where reports and the dashboard hold: studies of 100, 1,000 and 5,000 trials.

Studies are made through the storage (dlboost_search.testing.synthetic_study: the diabetes
space, 60% complete / 30% pruned / 10% failed trials with per-epoch curves), not by training.
For each size it times, as medians of --repeats runs:
  - reading the study once (`snapshot`) and `build_report` (fANOVA and PED-ANOVA importances),
  - the figures and the self-contained HTML,
  - the dashboard's study-page API call, GET /api/studies/<id>, called in-process over WSGI
    (the call the browser's study page polls).

    .venv/bin/python benchmarks/reports_dashboard.py [--sizes 100 1000 5000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from wsgiref.util import setup_testing_defaults

import optuna

from dlboost_search import reports
from dlboost_search.dashboard import dashboard_app
from dlboost_search.spaces import load_space
from dlboost_search.testing import synthetic_study

SPACE = Path(__file__).resolve().parent.parent / "search_spaces" / "diabetes_mlp.yaml"


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        started = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - started)
    return statistics.median(times), result


def api_call(app, path: str) -> int:
    environ = {"PATH_INFO": path, "REQUEST_METHOD": "GET", "QUERY_STRING": ""}
    setup_testing_defaults(environ)
    status = []
    result = app(environ, lambda s, h, e=None: status.append(s))
    body = b"".join(result)
    if hasattr(result, "close"):
        result.close()
    assert status[0].startswith("200"), status
    return len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space = load_space(SPACE)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.sizes:
            rows.append(measure(space, f"sqlite:///{Path(folder) / f'{size}.db'}", size, args))
            print(f"{size} trials: {rows[-1]}", file=sys.stderr, flush=True)
    print(
        "| trials | report (s) | figures + HTML (s) | HTML (MB) "
        "| dashboard study API (s) | API answer (MB) |"
    )
    print("|---:|---:|---:|---:|---:|---:|")
    for size, _, report_s, html_s, html_mb, api_s, api_mb in rows:
        print(
            f"| {size:,} | {report_s:.2f} | {html_s:.2f} | {html_mb:.1f} "
            f"| {api_s:.3f} | {api_mb:.1f} |"
        )
    print(f"\nmedians of {args.repeats} runs (API: {max(args.repeats, 5)}); "
          f"making the studies took {', '.join(f'{r[1]:.0f} s' for r in rows)}")  # fmt: skip


def measure(space, url: str, size: int, args) -> tuple:
    made = time.perf_counter()
    study = synthetic_study(space, url, size)
    made = time.perf_counter() - made

    def report_from_storage():
        view = reports.snapshot(study)
        return view, reports.build_report(view)

    report_s, (view, report) = timed(report_from_storage, args.repeats)
    html_s, page = timed(
        lambda: reports.to_html(report, reports.figures(view, report)), args.repeats
    )
    app = dashboard_app(url, None)
    path = f"/api/studies/{study._study_id}"
    api_call(app, path)  # the first call fills the dashboard's cache
    api_s, size_bytes = timed(lambda: api_call(app, path), max(args.repeats, 5))
    return size, made, report_s, html_s, len(page) / 2**20, api_s, size_bytes / 2**20


if __name__ == "__main__":
    main()
