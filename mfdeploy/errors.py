"""The one exception type that reaches the user as a one-line message instead of a traceback."""

from __future__ import annotations


class UserError(Exception):
    """A mistake the user can fix: the message says what was wrong and what to do.

    The CLI prints it as a single line and exits with ``exit_code``.
    """

    def __init__(self, message: str, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    def __str__(self) -> str:
        return self.message
