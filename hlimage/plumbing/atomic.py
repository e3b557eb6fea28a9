"""Outputs appear whole or not at all: written beside the target, then renamed into place.

A killed build leaves the previous output (or nothing) at the target, and at worst a hidden
temporary file beside it, which the next build into the same place removes.

Durable too, as dpkg and git make what they write: before the rename, every file of the output
and every directory in it is flushed to disk (fsync), and so is the directory that holds the
target, with the temporary's name in it; after the rename that directory is flushed again. A
power cut (or a kernel crash) then leaves the old output or the new one at the target, never a
renamed file whose data never reached the disk (zero-length or half-written on ext4 and xfs).
"""

from __future__ import annotations

import contextlib
import errno
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


def _absolute(target: Path) -> Path:
    """Without '.' and '..': `-o .` is the current directory, renamed from its parent."""
    return Path(os.path.abspath(target))


def _check_parent(target: Path) -> None:
    parent = _absolute(target).parent
    if not parent.is_dir():
        shown = target.parent if target.name not in ("", ".", "..") else parent
        raise HlimageError(
            f"-o: the directory {shown} does not exist; create it first", where=target
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


def _fsync(descriptor: int, shown: str | os.PathLike[str], *, directory: bool = False) -> None:
    try:
        os.fsync(descriptor)
    except OSError as error:
        # Some file systems (network ones, FUSE) cannot sync a directory: what they can, is.
        if directory and error.errno in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            return
        # An I/O error here is the disk's: the build fails and the old output stays.
        raise OSError(
            error.errno, f"cannot flush to disk: {error.strerror}", os.fspath(shown)
        ) from None


def _sync(path: str | os.PathLike[str], *, directory: bool = False) -> None:
    """Flush a file's data and metadata, or a directory's entries, to disk."""
    descriptor = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        _fsync(descriptor, path, directory=directory)
    finally:
        os.close(descriptor)


def _sync_tree(root: Path) -> None:
    """Every file and directory under `root`, and `root`, on disk: each directory after what
    it holds, so that no directory names a file whose data is not there yet."""
    for directory, _, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(directory, name)
            if not os.path.islink(path):  # a link is the directory's entry, synced with it
                _sync(path)
        _sync(directory, directory=True)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[BinaryIO]:
    _check_parent(target)
    shown = target
    target = _absolute(target)
    if target.is_dir():
        raise HlimageError(
            "-o: is a directory, but this format writes one file; name a file", where=shown
        )
    _clean_stale(target)
    descriptor, temporary = tempfile.mkstemp(
        dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK
    )
    os.close(descriptor)
    try:
        # Opened by name so that stream.name is the temporary's path; not truncated ("r+b",
        # it is empty): on ext4 a truncated file's close starts writeback of all of it.
        with open(temporary, "r+b") as stream:
            yield stream
            os.fchmod(stream.fileno(), 0o666 & ~_umask())
            stream.flush()
            _fsync(stream.fileno(), shown)
        _sync(target.parent, directory=True)
        os.replace(temporary, target)
        _sync(target.parent, directory=True)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def _exchange(first: Path, second: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 with RENAME_EXCHANGE), so that a directory
    output is replaced with no moment where nothing is there. False where unsupported."""
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    # Non-zero (EINVAL, ENOSYS): the file system or kernel cannot; the caller renames twice.
    status: int = renameat2(
        at_fdcwd, os.fsencode(first), at_fdcwd, os.fsencode(second), rename_exchange
    )
    return status == 0


@contextlib.contextmanager
def scratch_directory(target: Path) -> Iterator[Path]:
    """A directory for intermediate files beside `target`, removed afterwards; a killed
    build's is cleaned up like any other temporary of that target."""
    _check_parent(target)
    target = _absolute(target)
    with tempfile.TemporaryDirectory(
        dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK
    ) as scratch:
        yield Path(scratch)


# What hlimage's directory outputs hold (esp, grub, pxe, uboot); a directory with none of them,
# nor a manifest beside it, is someone's data that replacing would delete.
OUTPUT_MARKS = ("EFI", "grub.cfg", "README.txt", "boot.scr")


def _replaceable(target: Path) -> bool:
    if any((target / mark).exists() for mark in OUTPUT_MARKS):
        return True
    if target.with_name(target.name + ".manifest.json").exists():
        return True
    return not any(target.iterdir())


@contextlib.contextmanager
def atomic_directory(target: Path) -> Iterator[Path]:
    """A fresh directory to fill; it replaces `target` (a directory or nothing) at the end."""
    _check_parent(target)
    shown = target
    target = _absolute(target)
    if target.exists() and not target.is_dir():
        raise HlimageError(
            "-o: is a file, but this format writes a directory; name a directory", where=shown
        )
    if target.is_dir() and not _replaceable(target):
        raise HlimageError(
            "-o: is a directory that holds files but no hlimage output (no EFI, grub.cfg, "
            "README.txt or boot.scr in it); replacing it would delete them: name a new or "
            "empty directory",
            where=shown,
        )
    _clean_stale(target)
    temporary = Path(
        tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK)
    )
    try:
        yield temporary
        os.chmod(temporary, 0o777 & ~_umask())
        _sync_tree(temporary)
        _sync(target.parent, directory=True)
        if target.exists() and _exchange(temporary, target):
            _sync(target.parent, directory=True)
            shutil.rmtree(temporary, ignore_errors=True)  # it holds the previous output now
        elif target.exists():
            # Without an exchange, a build killed between the two renames leaves nothing at
            # the target (and the previous output in a hidden temporary beside it).
            retired = Path(
                tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=TEMP_MARK)
            )
            os.rename(target, retired / "old")
            os.rename(temporary, target)
            _sync(target.parent, directory=True)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.rename(temporary, target)
            _sync(target.parent, directory=True)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
