"""The one exception type for mistakes a user can fix (bad option, bad path, bad file).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do."""
