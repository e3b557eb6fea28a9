"""The one error type a user's mistake becomes: printed as one line, exit code 2."""

from __future__ import annotations

import os


class HlimageError(Exception):
    """Bad input. The message names the file or key and says what to do."""

    exit_code = 2

    def __init__(self, message: str, *, where: str | os.PathLike[str] | None = None) -> None:
        self.where = os.fspath(where) if where is not None else None
        super().__init__(message)

    def __str__(self) -> str:
        message = super().__str__()
        if self.where:
            return f"{self.where}: {message}"
        return message


class FormatError(HlimageError):
    """A binary or text input does not parse as the format it should be in."""
