"""Every error a user can meet, in one place: each message says what is wrong, where, and what to do.

The command line turns these into one line on stderr and exit status 2; the
notebooks show them as they are. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class ParamsError(ValueError):
    """A params file (or override) that cannot be used; the message says why and where."""


class DatasetError(RuntimeError):
    """The data set cannot be used (missing folder, fewer than two usable classes, ...)."""


class ModelLoadError(RuntimeError):
    """A model (or hub data set) could not be loaded; the message says which and what to do."""


class StageError(RuntimeError):
    """A stage cannot start or go on (disk, permissions, GPU memory); the message says what to change."""


class StaleOutputsError(RuntimeError):
    """A stage folder was produced with different params than the ones now in force."""


class CorruptFileError(RuntimeError):
    """A file in the run directory cannot be read (truncated or garbled outside our atomic writes)."""


class VersionError(ImportError):
    """An installed library is outside the range sgid was tested with; raised when sgid_utils is imported."""


USER_ERRORS = (ParamsError, DatasetError, ModelLoadError, StageError, StaleOutputsError, CorruptFileError,
               FileNotFoundError)
