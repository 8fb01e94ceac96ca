"""The root of steerlab's errors: every error the library raises on purpose derives from `SteerlabError`.

Each error class also keeps its builtin parent (`VectorFileError` is a `ValueError`, `ModelLoadError` a
`RuntimeError`, ...), so `except ValueError` callers keep working. `except steerlab.SteerlabError` catches
every refusal the library makes, each one line that names what is wrong (a reader's starts with the file's
path); anything else escaping steerlab is a bug, and the command line says so.
"""

from __future__ import annotations


class SteerlabError(Exception):
    """An input, file, option or environment steerlab refuses; the message says what is wrong and the fix."""


class UsageError(SteerlabError, ValueError):
    """A function was given an argument it cannot work with (a count, a range, a name); the message says
    what to give instead. Refusals of a file's content or of a model use their own classes."""


class OutputExistsError(SteerlabError, FileExistsError):
    """An output path exists and replacing it was not asked for; the message names the path and the flag."""


class MissingFileError(SteerlabError, FileNotFoundError):
    """A file or folder steerlab was pointed at does not exist or is not what it should be."""
