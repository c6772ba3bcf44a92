"""The one user-facing error type: a problem with what the user asked for, not a bug in linedraw.

Every library error a user can cause (a missing file, a bad argument, a corrupt checkpoint or index) derives from
`LinedrawError`. The CLI catches it once, prints its message as one line and exits 2; anything else is a bug and
shows its traceback. Messages name the file or the argument (as a Python user would pass it), never a CLI flag.
"""
from __future__ import annotations


class LinedrawError(Exception):
    """Something the caller can fix; `str()` is one line saying what is wrong and, where it helps, what to do."""


class UsageError(LinedrawError, ValueError):
    """An argument outside its range or of the wrong type; the message names the argument."""


class BusyError(LinedrawError):
    """A resource (an index, a run folder) is held by another writer."""


class MissingFileError(LinedrawError, FileNotFoundError):
    """A file or folder the caller named does not exist (or holds nothing usable); the message names it."""


class MissingDependencyError(LinedrawError, ImportError):
    """An optional dependency is not installed; the message says which extra to install."""


class InvalidFileError(LinedrawError, ValueError):
    """A file that exists but whose contents cannot be used (wrong format, shape or fields); names the file."""
