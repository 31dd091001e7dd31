"""The one error a user can fix.

Every verb reports a problem the user can act on by raising :class:`UserError`; the
command line prints it as one ``[!]`` line (or block) and exits with its code. Nothing
below the command line prints an error itself.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem the user can fix; the CLI prints ``[!] <report()>`` and exits with ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code

    def report(self) -> str:
        """What the user reads after ``[!] ``."""
        return str(self)
