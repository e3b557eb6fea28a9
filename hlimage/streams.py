"""Payloads and the one streaming copy every output uses.

A payload is never read whole: it is copied in chunks, and its sha256 (in a second thread, since
hashlib drops the GIL) and the PE checksum are computed on the same pass.
"""

from __future__ import annotations

import hashlib
import os
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from hlimage.errors import HlimageError

CHUNK = 1 << 20


class ChecksumAccumulator:
    """The PE image checksum (16-bit one's complement sum plus the file length), fed in pieces.

    A byte at an even file offset adds its value, at an odd one 256 times its value; summing
    exactly and folding once at the end gives the same result as the word-by-word algorithm.
    """

    def __init__(self) -> None:
        self.total = 0

    @staticmethod
    def _weight(offset: int, data: bytes | memoryview) -> int:
        view = memoryview(data).cast("B")
        length = len(view)
        even = length & ~1
        total = int(np.frombuffer(view, dtype="<u2", count=even // 2).sum(dtype=np.uint64))
        if length & 1:
            total += view[length - 1]
        return total * 256 if offset & 1 else total

    def update(self, offset: int, data: bytes | memoryview) -> None:
        if len(data):
            self.total += self._weight(offset, data)

    def replace(self, offset: int, old: bytes, new: bytes) -> None:
        self.total += self._weight(offset, new) - self._weight(offset, old)

    def finish(self, file_length: int) -> int:
        folded = 0 if self.total == 0 else (self.total - 1) % 0xFFFF + 1
        return (folded + file_length) & 0xFFFFFFFF


@dataclass(frozen=True)
class StreamResult:
    size: int
    sha256: str


class Payload(ABC):
    """Bytes that go into an output, produced in chunks."""

    label: str
    """What to call it in messages: a path, usually."""

    @abstractmethod
    def size_bound(self) -> int:
        """The size, or an estimate where it is only known once written (for early warnings)."""

    @property
    def exact_size(self) -> int | None:
        return None

    @abstractmethod
    def chunks(self) -> Iterator[bytes]:
        """The bytes, in order, in pieces of a bounded size."""


def _open_input(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as error:
        raise HlimageError(f"cannot read: {error.strerror}", where=path) from None


class BytesPayload(Payload):
    """Small generated content: a config file, a device tree."""

    def __init__(self, data: bytes, label: str) -> None:
        self.data = data
        self.label = label

    def size_bound(self) -> int:
        return len(self.data)

    @property
    def exact_size(self) -> int:
        return len(self.data)

    def chunks(self) -> Iterator[bytes]:
        for start in range(0, len(self.data), CHUNK):
            yield self.data[start : start + CHUNK]


class ConcatPayload(Payload):
    """Parts one after another, each but the last padded with zeros to a multiple of `align`.

    Linux looks for a following initramfs archive only at a 4-byte boundary.
    """

    def __init__(self, parts: Sequence[Payload], align: int = 4) -> None:
        self.parts = tuple(parts)
        self.align = align
        self.label = " + ".join(part.label for part in parts)

    def _padding(self, length: int) -> int:
        return -length % self.align

    def size_bound(self) -> int:
        total = 0
        for index, part in enumerate(self.parts):
            bound = part.size_bound()
            total += bound
            if index < len(self.parts) - 1:
                total += self.align - 1 if part.exact_size is None else self._padding(bound)
        return total

    @property
    def exact_size(self) -> int | None:
        sizes = [part.exact_size for part in self.parts]
        if any(size is None for size in sizes):
            return None
        return self.size_bound()

    def chunks(self) -> Iterator[bytes]:
        for index, part in enumerate(self.parts):
            length = 0
            for chunk in part.chunks():
                length += len(chunk)
                yield chunk
            if index < len(self.parts) - 1 and self._padding(length):
                yield b"\0" * self._padding(length)


def copy_stream(
    payload: Payload,
    out: BinaryIO,
    checksum: ChecksumAccumulator | None = None,
    position: int | None = None,
) -> StreamResult:
    """Write a payload at the output's current position; return its size and sha256.

    `position` is the output offset where the payload starts (for the checksum's byte parity).
    """
    digest = hashlib.sha256()
    size = 0
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1) as hasher:
        for chunk in payload.chunks():
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)
            out.write(chunk)
            if checksum is not None and position is not None:
                checksum.update(position + size, chunk)
            size += len(chunk)
        if pending is not None:
            pending.result()
    return StreamResult(size, digest.hexdigest())


def copy_range(
    source: BinaryIO,
    offset: int,
    length: int,
    out: BinaryIO,
    checksum: ChecksumAccumulator | None = None,
    position: int | None = None,
) -> None:
    """Copy `length` bytes from `offset` of `source` to the output's current position."""
    source.seek(offset)
    done = 0
    while done < length:
        chunk = source.read(min(CHUNK, length - done))
        if not chunk:
            raise HlimageError("input file shrank while it was being read")
        out.write(chunk)
        if checksum is not None and position is not None:
            checksum.update(position + done, chunk)
        done += len(chunk)


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(stream: BinaryIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())


class Region(Payload):
    """A byte range of a file (a whole file by default): an input to probe or copy."""

    def __init__(
        self, path: Path, offset: int = 0, length: int | None = None, label: str = ""
    ) -> None:
        self.path = path
        self.offset = offset
        if length is None:
            try:
                length = path.stat().st_size - offset
            except OSError as error:
                raise HlimageError(f"cannot read: {error.strerror}", where=path) from None
        self.length = length
        self.label = label or str(path)

    def size_bound(self) -> int:
        return self.length

    @property
    def exact_size(self) -> int:
        return self.length

    def read(self, start: int, count: int) -> bytes:
        count = max(0, min(count, self.length - start))
        if count == 0:
            return b""
        with _open_input(self.path) as stream:
            stream.seek(self.offset + start)
            return stream.read(count)

    def head(self, count: int) -> bytes:
        return self.read(0, count)

    def tail(self, count: int) -> bytes:
        return self.read(max(0, self.length - count), count)

    def chunks(self) -> Iterator[bytes]:
        remaining = self.length
        with _open_input(self.path) as stream:
            stream.seek(self.offset)
            while remaining > 0:
                chunk = stream.read(min(CHUNK, remaining))
                if not chunk:
                    raise HlimageError("the file shrank while it was being read", where=self.path)
                remaining -= len(chunk)
                yield chunk
