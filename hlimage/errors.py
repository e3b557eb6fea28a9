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


class TruncatedError(FormatError):
    """Data shorter than its own headers say it is: a copy or a download cut short.

    `size` is what there is and `needed` what the headers say there must be, where a format
    states it (a stream that only ends with an end marker has no `needed`)."""

    advice = "give the whole file (was a copy or a download cut short?)"

    def __init__(self, message: str, *, size: int | None = None, needed: int | None = None):
        self.size = size
        self.needed = needed
        super().__init__(message)

    @classmethod
    def stated(cls, what: str, *, size: int, needed: int, by: str) -> TruncatedError:
        """The usual message: 'truncated WHAT: it has SIZE bytes, but BY says it needs NEEDED'."""
        return cls(
            f"truncated {what}: it has {size} bytes, but {by} says it needs {needed}",
            size=size,
            needed=needed,
        )
