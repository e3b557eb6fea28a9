"""A progress bar on stderr for long copies: only when stderr is a terminal, never under
--quiet, and only for copies of THRESHOLD bytes or more (smaller ones finish before a bar would
mean anything).

The copy loops call `Bar.update` once per chunk (1 MiB); it costs one clock read, and the bar is
redrawn at most every INTERVAL seconds, so a copy running at disk speed is not slowed by it.
Nothing here touches the output: the bar only reads how far the copy got.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from typing import TextIO

THRESHOLD = 64 << 20
INTERVAL = 0.25
WIDTH = 24
NAME_WIDTH = 28


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


class Bar:
    def __init__(self, label: str, total: int, stream: TextIO) -> None:
        name = label.rsplit("/", 1)[-1] or label
        if len(name) > NAME_WIDTH:
            name = "..." + name[-(NAME_WIDTH - 3) :]
        self.name = name
        self.total = total
        self.stream = stream
        self.next_draw = 0.0
        self.drawn = False

    def update(self, done: int) -> None:
        now = time.monotonic()
        if now < self.next_draw:
            return
        self.next_draw = now + INTERVAL
        self._draw(done)

    def _draw(self, done: int) -> None:
        fraction = min(1.0, done / self.total) if self.total else 1.0
        filled = int(fraction * WIDTH)
        self.stream.write(
            f"\rhlimage: copying {self.name:<{NAME_WIDTH}} [{'#' * filled}{'.' * (WIDTH - filled)}]"
            f" {fraction * 100:3.0f}% {done >> 20}/{self.total >> 20} MiB"
        )
        self.stream.flush()
        self.drawn = True

    def finish(self) -> None:
        """Clear the bar's line, so that the next message starts on a clean one."""
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def start(label: str, total: int | None) -> Bar | None:
    """A bar for a copy of `total` bytes, or None when none should be shown."""
    if total is None or total < THRESHOLD:
        return None
    from hlimage.plumbing import messages

    if messages.quiet or not _is_terminal(sys.stderr):
        return None
    bar = Bar(label, total, sys.stderr)
    bar.update(0)
    return bar


@contextlib.contextmanager
def bar(label: str, total: int | None) -> Iterator[Bar | None]:
    """`start`, and the bar's line cleared however the copy ends (an error message that
    follows must not share the line with it)."""
    shown = start(label, total)
    try:
        yield shown
    finally:
        if shown is not None:
            shown.finish()
