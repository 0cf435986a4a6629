"""The exceptions that mean "stop, and tell the user in one line" rather than "this is a bug".

Stages catch them at the CLI boundary and print the message as a single line on stderr: a
`UserError` exits 2, a `StorageError` (and any raw `OSError`) exits 1, an `Interrupted` exits 130.
Anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (config, paths, data): the message is the whole explanation."""


class StorageError(UserError):
    """A file the OS refused or that is damaged (truncated JSON, bad weights, an unknown label in a shard).

    A subclass of `UserError` because the cure is the same kind (fix or redo the named file), but the
    CLI exits 1: nothing the user typed was wrong, the disk holds something we cannot trust.
    """


class Interrupted(Exception):
    """Ctrl-C (SIGINT) reached a stage: the message says what was kept and how to resume."""
