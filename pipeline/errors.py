"""The one exception type that means "the user gave us something wrong".

Stages catch it at the CLI boundary and print its message as a single line on stderr with a
non-zero exit; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input from the user (config, paths, data): the message is the whole explanation."""
