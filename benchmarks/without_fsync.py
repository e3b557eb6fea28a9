"""What durable outputs cost: hlimage run with os.fsync a no-op, or with each fsync timed.

    .venv/bin/python -m benchmarks.without_fsync build hlimage.toml -f unified -o out.efi
    .venv/bin/python -m benchmarks.without_fsync --timed fsync.log build ...

The first is `hlimage build ...` whose outputs are renamed into place without being flushed to
disk first: for measurement only (hlimage has no such option; a build that may lose power must
flush). The second is hlimage as it is, appending "CALLS SECONDS" (its fsync calls and the time
spent in them) to fsync.log when it exits: on a busy machine that time is steadier than the
difference of two builds' wall times. The floor to compare a durable build with is
`cat_and_sync`: every byte read, written and flushed once.
"""

from __future__ import annotations

import atexit
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def command(timed: Path | None = None) -> list[str]:
    """The argv prefix that runs hlimage without fsync, or with its fsync calls timed into
    `timed` (run from the repository's root)."""
    prefix = [sys.executable, "-m", "benchmarks.without_fsync"]
    return prefix if timed is None else [*prefix, "--timed", str(timed)]


def fsync_time(log: Path) -> tuple[int, float]:
    """(calls, seconds) of the run that spent least in fsync, of those `log` holds."""
    runs = [line.split() for line in log.read_text().splitlines() if line.strip()]
    calls, seconds = min(runs, key=lambda run: float(run[1]))
    return int(calls), float(seconds)


def cat_and_sync(inputs: list[Path], output: Path) -> list[str]:
    """cat of the inputs into `output`, then that file flushed to disk (sync FILE fsyncs it)."""
    return ["sh", "-c", 'out="$1"; shift; cat "$@" > "$out" && sync "$out"', "sh",
            str(output), *map(str, inputs)]  # fmt: skip


def _timed(log: Path, real: Callable[[int], None]) -> Callable[[int], None]:
    spent = [0, 0.0]

    def fsync(descriptor: int) -> None:
        started = time.perf_counter()
        try:
            real(descriptor)
        finally:
            spent[0] += 1
            spent[1] += time.perf_counter() - started

    def report() -> None:
        with log.open("a") as stream:
            stream.write(f"{spent[0]} {spent[1]:.6f}\n")

    atexit.register(report)
    return fsync


def main() -> None:
    def no_fsync(descriptor: int) -> None:
        del descriptor

    if sys.argv[1:2] == ["--durable"]:
        # hlimage as it is, fsync and all: the same interpreter start-up as the others.
        del sys.argv[1:2]
        replacement: Callable[[int], None] = os.fsync
    elif sys.argv[1:2] == ["--timed"]:
        replacement = _timed(Path(sys.argv[2]), os.fsync)
        del sys.argv[1:3]
    else:
        replacement = no_fsync
    setattr(os, "fsync", replacement)  # noqa: B010 (mypy refuses to assign a module's function)
    from hlimage.cli import main as hlimage

    sys.argv[0] = "hlimage"
    hlimage()


if __name__ == "__main__":
    main()
