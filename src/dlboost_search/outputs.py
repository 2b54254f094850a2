"""Where commands write (a report, predictions, an exported model), checked before the work
that produces it: a mistyped --out fails at once, not after minutes of retraining, and
nothing is overwritten that the command did not write."""

from __future__ import annotations

import tempfile
from pathlib import Path

from dlboost_search.errors import OutputError

__all__ = [
    "check_file",
    "check_folder",
]


def check_file(path: Path, option: str = "--out", keep: tuple[Path, ...] = ()) -> None:
    """`path` can be written as a file: its folder exists and is writable, and it is neither
    a folder nor one of the files in `keep` (the command's input)."""
    if path.is_dir():
        raise OutputError(f"{option} {path}: a folder; give a file name, e.g. {path / 'out'}.")
    if any(path.resolve() == other.resolve() for other in keep):
        raise OutputError(
            f"{option} {path}: the input file itself; writing there would destroy it. Give "
            f"another file name."
        )
    folder = path.parent
    if not folder.is_dir():
        raise OutputError(
            f"{option} {path}: the folder {folder} does not exist; create it first or write "
            f"elsewhere."
        )
    _check_writable(folder, option, path)


def check_folder(path: Path, option: str = "--out") -> None:
    """`path` can be written as a folder: it is one already, or the nearest folder above it
    that exists is writable (where it will be made)."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputError(f"{option} {path}: {existing} is a file, not a folder.")
    _check_writable(existing, option, path)


def _check_writable(folder: Path, option: str, path: Path) -> None:
    # Tried for real: permission bits do not tell (root, read-only mounts, quotas).
    try:
        tempfile.TemporaryDirectory(dir=folder, prefix=".dlboost-check-").cleanup()
    except OSError as exc:
        raise OutputError(
            f"{option} {path}: cannot write in {folder} ({exc.strerror}); write elsewhere."
        ) from None
