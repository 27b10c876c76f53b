"""The one exception type for mistakes a user can fix (bad option, bad path, bad file).

The CLI prints its message as a single line and exits with code 2; anything else is a bug
and keeps its traceback. Library code says what is wrong in its own terms (a folder, a
field, a value) and names the parameter in `option`; the CLI turns that into its flag name.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input; the message says what is wrong and what to do.

    option: the parameter the problem is about (`out`, `lr`, ...), if one; the CLI shows it
    as its flag (`--out`), a notebook as the keyword argument.
    """

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    def for_cli(self) -> str:
        """The message with the flag it concerns, as the `probe` CLI prints it."""
        if self.option is None:
            return str(self)
        return f"--{self.option.replace('_', '-')}: {self}"


def check_count(value: int, option: str, least: int = 1) -> None:
    """An integer option that counts something (rows, pairs, a seed): at least `least`."""
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise UserError(f"{option}={value!r}: must be an integer >= {least}", option=option)


def check_positive(value: float, option: str) -> None:
    """A real option that must be a finite number > 0 (a strength, a budget)."""
    if not (isinstance(value, (int, float)) and 0 < value < float("inf")):
        raise UserError(f"{option}={value!r}: must be a finite number > 0", option=option)
