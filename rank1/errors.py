"""The library's error types. Every stage's entry point turns them into one ``error:`` line and exit status 2
(:func:`rank1.logs.run_main`); their messages say what was wrong and what to do."""


class Rank1Error(Exception):
    """Bad input or a failed check: the message names the file or value and what to do about it."""


class CheckFailed(Rank1Error, RuntimeError):
    """A saved artifact or a served model failed a check that guards the numbers computed from it."""


class OtherSettings(Rank1Error, ValueError):
    """A folder holds finished or partial work made from other settings or inputs than asked."""
