"""The errors dlboost-search raises on purpose.

Every message says what broke, the value received and how to fix it. The CLI turns these
(and only these) into a one-paragraph message and the exit code below; anything else is a
bug and keeps its traceback.

    DlboostError                  exit 1
    ├── SpaceError                exit 2   the YAML search space is wrong
    ├── DataError                 exit 2   a data file or built-in dataset cannot be used
    ├── StudyError                exit 2   no such study, or a study that conflicts with the space
    ├── DashboardError            exit 2   the dashboard cannot be served as asked
    ├── DeviceError               exit 2   workers or devices asked for that this machine lacks
    ├── ClusterError              exit 2   a Ray cluster that cannot be used as asked (ray not
    │                                      installed, unreachable, SQLite across its nodes)
    ├── OutputError               exit 2   where to write is unusable (no such folder, a folder
    │                                      where a file belongs, not writable); checked first
    ├── ArtifactError             exit 2   the store of trial models cannot be used (a folder
    │                                      not writable, an endpoint unreachable, no credentials)
    ├── StorageError              exit 3   the storage URL cannot be opened
    ├── SearchAborted             exit 4   the search stopped itself (no metric, failures in a row)
    └── Interrupted               exit 130 Ctrl-C or SIGTERM; the running trial was closed

TrialFailed is different: it fails one trial (a NaN loss, say) and the search goes on.
"""

from __future__ import annotations

import itertools
import reprlib

__all__ = [
    "ArtifactError",
    "ClusterError",
    "DashboardError",
    "DataError",
    "DeviceError",
    "DlboostError",
    "Interrupted",
    "OutputError",
    "SearchAborted",
    "SpaceError",
    "StorageError",
    "StudyError",
    "TrialFailed",
    "shown",
]


class DlboostError(Exception):
    exit_code = 1


class SpaceError(DlboostError):
    exit_code = 2


class DataError(DlboostError):
    exit_code = 2


class StudyError(DlboostError):
    exit_code = 2


class DashboardError(DlboostError):
    exit_code = 2


class DeviceError(DlboostError):
    exit_code = 2


class ClusterError(DlboostError):
    exit_code = 2


class OutputError(DlboostError):
    exit_code = 2


class ArtifactError(DlboostError):
    exit_code = 2


class StorageError(DlboostError):
    exit_code = 3


class SearchAborted(DlboostError):
    exit_code = 4


class Interrupted(DlboostError):
    exit_code = 130


class TrialFailed(Exception):
    """One trial cannot produce a value; it is recorded as FAILED and the search goes on."""


def shown(value: object, limit: int = 80) -> str:
    """`value` as a message quotes it: its repr, cut short. A message echoes what it was given,
    never megabytes of it (a YAML alias bomb, a huge text cell)."""
    text = _Short().repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class _Short(reprlib.Repr):
    """reprlib's bounded repr, keeping a mapping's own order (reprlib sorts the keys)."""

    def __init__(self) -> None:
        super().__init__()  # Python 3.11's takes no keyword arguments
        self.maxlevel, self.maxlist, self.maxdict = 3, 8, 8
        self.maxstring = self.maxother = 80

    def repr_dict(self, x: dict, level: int) -> str:
        if not x:
            return "{}"
        if level <= 0:
            return "{...}"
        items = [
            f"{self.repr1(key, level - 1)}: {self.repr1(value, level - 1)}"
            for key, value in itertools.islice(x.items(), self.maxdict)
        ]
        return "{" + ", ".join(items) + (", ..." if len(x) > self.maxdict else "") + "}"
