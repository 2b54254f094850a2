"""Data read in pieces, for files and image folders too large to hold (docs/data.md, "Data
larger than memory"): when to stream, which rows validate, which rows the recipe is fitted on,
and a table's rows chunk by chunk. No TensorFlow here; data.py builds the tf.data pipelines.

    threshold   data above it is streamed under `training.engine: auto`: 1/MEMORY_SHARE of the
                machine's memory, or DLBOOST_STREAM_ABOVE_BYTES (tests lower it)
    held_out    a row's side, from a hash of its number in the file and the seed: the same in
                every epoch, worker and machine, with no list of rows kept
    sample_key  the rows the recipe is fitted on: the SAMPLE_ROWS training rows of lowest key,
                an even sample of the file however it is ordered (the whole split when smaller)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from dlboost_search.errors import DataError, shown

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CHUNK_ROWS",
    "MEMORY_SHARE",
    "SAMPLE_ROWS",
    "THRESHOLD_VARIABLE",
    "held_out",
    "sample_key",
    "table_chunks",
    "threshold",
]

# Rows read, prepared and handed to TensorFlow at a time: a few MB per chunk for tables of tens
# of columns, large enough that pandas' per-call cost vanishes.
CHUNK_ROWS = 65_536
# The training rows the recipe (types, medians, categories, scaling) is fitted on.
SAMPLE_ROWS = 100_000
THRESHOLD_VARIABLE = "DLBOOST_STREAM_ABOVE_BYTES"
# Held in memory, a table takes about 8.5 times its size on disk (pandas' frame, the split's
# copies, the recipe's float64 block, the float32 arrays and TensorFlow's copy of them: measured
# on a Parquet file of float32 columns in benchmarks/README.md, "Data larger than memory"), and
# every worker holds its own: a file of 1/40 of the memory takes about a fifth per worker.
MEMORY_SHARE = 40


def threshold(memory: int) -> int:
    """The size in bytes above which data is streamed, on a machine of `memory` bytes."""
    raw = os.environ.get(THRESHOLD_VARIABLE)
    if raw is None:
        return memory // MEMORY_SHARE
    if not raw.strip().isdigit():
        raise DataError(
            f"environment variable {THRESHOLD_VARIABLE}={shown(raw)}: it must be a whole number "
            f"of bytes (data larger than that is streamed under `training.engine: auto`). Unset "
            f"it for the default, 1/{MEMORY_SHARE} of this machine's memory."
        )
    return int(raw)


def _uniform(rows: np.ndarray, salt: int) -> np.ndarray:
    """A number in [0, 1) for each row number, as if drawn at random, but the same for the same
    row and salt everywhere (splitmix64's finalizer, in numpy's wrapping uint64 arithmetic)."""
    with np.errstate(over="ignore"):
        z = rows.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15) * np.uint64(salt + 1)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype("float64") / float(1 << 53)


def held_out(rows: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Which of these row numbers are validation rows: about `fraction` of them."""
    return _uniform(rows, 2 * seed) < fraction


def sample_key(rows: np.ndarray, seed: int) -> np.ndarray:
    """Each row's key in the sample: the rows of the lowest keys are the sample."""
    return _uniform(rows, 2 * seed + 1)


def table_chunks(path: Path, rows: int | None = None) -> Iterator[tuple[int, pd.DataFrame]]:
    """A CSV or Parquet file's rows, `rows` (default CHUNK_ROWS) at a time, each chunk with
    the number of its first row in the file (from 0, header excluded) as its index. Columns
    are named as text, as data.py names them when it reads a file whole."""
    rows = rows or CHUNK_ROWS
    if path.suffix.lower() == ".csv":
        import pandas as pd

        try:
            # Closed however the reading ends: a caller that stops at a bad chunk too.
            with pd.read_csv(path, chunksize=rows) as reader:
                for start, chunk in _numbered(reader):
                    yield start, _named(chunk, path)
        except DataError:
            raise
        except Exception as exc:  # the parser raises many types; all mean "cannot read"
            raise DataError(f"{path}: cannot be read as csv: {exc}") from None
        return
    import pyarrow.parquet as pq

    try:
        # One row group at a time: iter_batches over the whole file reads ahead every row
        # group, holding as much as the file (1.1 GB of 1.1 GB measured).
        with pq.ParquetFile(path) as parquet:
            batches = (
                batch.to_pandas()
                for group in range(parquet.metadata.num_row_groups)
                for batch in parquet.iter_batches(batch_size=rows, row_groups=[group])
            )
            for start, chunk in _numbered(batches):
                yield start, _named(chunk, path)
    except DataError:
        raise
    except Exception as exc:  # pyarrow raises its own types
        raise DataError(f"{path}: cannot be read as parquet: {exc}") from None


def _numbered(chunks) -> Iterator[tuple[int, pd.DataFrame]]:
    start = 0
    for chunk in chunks:
        chunk.index = range(start, start + len(chunk))
        yield start, chunk
        start += len(chunk)


def _named(chunk: pd.DataFrame, path: Path) -> pd.DataFrame:
    names = [str(c) for c in chunk.columns]
    if len(set(names)) < len(names):
        twice = sorted({n for n in names if names.count(n) > 1})
        raise DataError(
            f"{path}: columns {', '.join(map(shown, twice))} appear more than once (as text); "
            f"every column needs a name of its own. Rename them."
        )
    chunk.columns = names
    return chunk
