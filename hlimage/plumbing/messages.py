"""Warnings and notes on stderr; stdout is kept for what a command prints as its result."""

from __future__ import annotations

import sys

quiet = False


def warn(message: str) -> None:
    print(f"hlimage: warning: {message}", file=sys.stderr)


def note(message: str) -> None:
    if not quiet:
        print(f"hlimage: {message}", file=sys.stderr)
