"""What durable outputs cost: hlimage run with os.fsync a no-op, to compare with the real one.

    .venv/bin/python -m benchmarks.without_fsync build hlimage.toml -f unified -o out.efi

is `hlimage build ...` whose outputs are renamed into place without being flushed to disk
first: for measurement only (hlimage has no such option; a build that may lose power must
flush). The floor to compare a durable build with is `cat_and_sync`: every byte read, written
and flushed once.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def command() -> list[str]:
    """The argv prefix that runs hlimage without fsync (from the repository's root)."""
    return [sys.executable, "-m", "benchmarks.without_fsync"]


def cat_and_sync(inputs: list[Path], output: Path) -> list[str]:
    """cat of the inputs into `output`, then that file flushed to disk (sync FILE fsyncs it)."""
    return ["sh", "-c", 'out="$1"; shift; cat "$@" > "$out" && sync "$out"', "sh",
            str(output), *map(str, inputs)]  # fmt: skip


def main() -> None:
    def no_fsync(descriptor: object) -> None:
        del descriptor

    setattr(os, "fsync", no_fsync)  # noqa: B010 (mypy refuses to assign a module's function)
    from hlimage.cli import main as hlimage

    sys.argv[0] = "hlimage"
    hlimage()


if __name__ == "__main__":
    main()
