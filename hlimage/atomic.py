"""Outputs appear whole or not at all: written beside the target, then renamed into place.

A killed build leaves the previous output (or nothing) at the target, and at worst a hidden
temporary file beside it, which the next build into the same place removes.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from hlimage.errors import HlimageError

TEMP_MARK = ".hlimage-tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _check_parent(target: Path) -> None:
    parent = target.parent
    if not parent.is_dir():
        raise HlimageError(
            f"-o: the directory {parent} does not exist; create it first", where=target
        )


def _clean_stale(target: Path) -> None:
    """Temporaries of earlier builds into the same target that were killed half-way."""
    prefix = f".{target.name}."
    for stale in target.parent.glob(f"{prefix}*{TEMP_MARK}"):
        # Another build of the same target may be running; only remove what is old.
        with contextlib.suppress(OSError):
            if time.time() - stale.stat().st_mtime > 3600:
                if stale.is_dir():
                    shutil.rmtree(stale, ignore_errors=True)
                else:
                    stale.unlink()


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    _check_parent(target)
    if target.is_dir():
        raise HlimageError(
            "-o: is a directory, but this format writes one file; name a file", where=target
        )
    _clean_stale(target)
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK
    )
    os.close(descriptor)
    try:
        # Opened by name so that stream.name is the temporary's path.
        with open(temporary, "w+b") as stream:
            yield stream
            # No fsync: the rename protects against a killed build, and forcing gigabytes to
            # disk would triple the build time; like cp and objcopy, durability is the OS's.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh directory to fill; it replaces `target` (a directory or nothing) at the end."""
    _check_parent(target)
    if target.exists() and not target.is_dir():
        raise HlimageError(
            "-o: is a file, but this format writes a directory; name a directory", where=target
        )
    _clean_stale(target)
    temporary = Path(
        tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK)
    )
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())
        if target.exists():
            retired = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK)
            )
            os.rename(target, retired / "old")
            os.rename(temporary, target)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(temporary, target)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
