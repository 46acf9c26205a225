"""The exception types for expected bad input."""


class UserError(Exception):
    """Bad input a user can fix (missing corpus, malformed STM line, ...).

    scripts/run.py prints the message and exits non-zero without a traceback; anything else is a bug
    and keeps its traceback.
    """


class CorruptFile(UserError):
    """A file that cannot be what it should be (a truncated checkpoint, a JSON file with a broken line, a file
    that is not a checkpoint at all). The message names the file, and the line where there is one."""
