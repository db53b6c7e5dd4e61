"""User-facing errors: the CLI prints their message on one line (no traceback) and exits with status 2."""

from crossattentiondet.config import ConfigError


class DataError(ValueError):
    """A problem with the data on disk (missing/unreadable file, bad label line...), naming the file."""


class TrainingError(RuntimeError):
    """A run cannot go on (non-finite losses, no usable data...); the message says why and what to do."""


class RunLockedError(RuntimeError):
    """Another live process trains in the run directory; the message names it (pid, host, start time)."""


USER_ERRORS = (ConfigError, DataError, TrainingError, RunLockedError, FileNotFoundError)

__all__ = ["USER_ERRORS", "ConfigError", "DataError", "RunLockedError", "TrainingError"]
