"""The errors dlboost-search raises on purpose.

Every message says what broke, the value received and how to fix it. The CLI turns these
(and only these) into a one-paragraph message and the exit code below; anything else is a
bug and keeps its traceback.

    DlboostError                  exit 1
    ├── SpaceError                exit 2   the YAML search space is wrong
    ├── DataError                 exit 2   a data file or built-in dataset cannot be used
    ├── StudyError                exit 2   no such study, or a study that conflicts with the space
    ├── DashboardError            exit 2   the dashboard cannot be served as asked
    ├── StorageError              exit 3   the storage URL cannot be opened
    ├── SearchAborted             exit 4   the search stopped itself (no metric, failures in a row)
    └── Interrupted               exit 130 Ctrl-C or SIGTERM; the running trial was closed

TrialFailed is different: it fails one trial (a NaN loss, say) and the search goes on.
"""

from __future__ import annotations


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


class StorageError(DlboostError):
    exit_code = 3


class SearchAborted(DlboostError):
    exit_code = 4


class Interrupted(DlboostError):
    exit_code = 130


class TrialFailed(Exception):
    """One trial cannot produce a value; it is recorded as FAILED and the search goes on."""
