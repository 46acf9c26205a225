"""The one exception type for expected bad input."""


class UserError(Exception):
    """Bad input a user can fix (missing corpus, malformed STM line, ...).

    scripts/run.py prints the message and exits non-zero without a traceback; anything else is a bug
    and keeps its traceback.
    """
