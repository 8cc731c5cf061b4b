"""The library's error types. Every stage's entry point turns them into one ``error:`` line and exit status 2
(:func:`rank1.logs.run_main`); their messages say what was wrong and what to do."""

import json


class Rank1Error(Exception):
    """Bad input or a failed check: the message names the file or value and what to do about it."""


class CheckFailed(Rank1Error, RuntimeError):
    """A saved artifact or a served model failed a check that guards the numbers computed from it."""


class OtherSettings(Rank1Error, ValueError):
    """A folder holds finished or partial work made from other settings or inputs than asked."""


class CorruptArtifact(Rank1Error, json.JSONDecodeError):
    """A saved file that cannot be parsed (cut short, overwritten, not what its name says); the message names it
    and what rebuilds it. Still a :class:`json.JSONDecodeError`, so a reader that recovers from a bad JSON file
    (a cache entry it recomputes) keeps doing so."""

    def __init__(self, message: str, doc: str = "", pos: int = 0):
        json.JSONDecodeError.__init__(self, message, doc, pos)
        self.args = (message,)

    def __str__(self) -> str:
        return self.args[0]

    def __reduce__(self):
        return type(self), (self.args[0],)


class CannotWrite(Rank1Error, OSError):
    """An output that could not be written (disk full, read-only or missing folder, no permission); the message
    names the path and what to do. Still an :class:`OSError` with the ``errno`` of the cause, so code that
    tolerates an unwritable place (a cache beside read-only weights) keeps doing so."""

    def __init__(self, message: str, errno: int | None = None):
        OSError.__init__(self, message)
        self.errno = errno
