"""Payloads and the one streaming copy every output uses.

A payload is never read whole: it is copied in chunks, and its sha256 (in a second thread, since
hashlib drops the GIL) and the PE checksum are computed on the same pass.
"""

from __future__ import annotations

import hashlib
import io
import os
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from hlimage import progress
from hlimage.errors import HlimageError

CHUNK = 1 << 20


class ChecksumAccumulator:
    """The PE image checksum (16-bit one's complement sum plus the file length), fed in pieces.

    Only the sum modulo 0xFFFF matters: a byte at an even file offset adds its value, at an odd
    one 256 times its value (since 0x10000 = 1 modulo 0xFFFF, so does every 16-bit word, and
    every 32-bit word is its two halves). Summing 32-bit words with numpy keeps this cheap.
    """

    def __init__(self) -> None:
        self.residue = 0
        self.nonzero = False

    @staticmethod
    def _weight(offset: int, data: bytes | bytearray | memoryview) -> int:
        # Imported here: numpy takes ~40 ms to import, which inspect and check need not pay.
        import numpy as np

        view = memoryview(data).cast("B")
        length = len(view)
        whole = length & ~3
        total = int(np.frombuffer(view, dtype="<u4", count=whole // 4).sum(dtype=np.uint64))
        for index in range(whole, length):
            total += view[index] << (8 * (index & 1))
        return total * 256 if offset & 1 else total

    def update(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        weight = self._weight(offset, data)
        if weight:
            self.nonzero = True
            self.residue = (self.residue + weight) % 0xFFFF

    def replace(self, offset: int, old: bytes, new: bytes) -> None:
        """Bytes already summed at `offset` were overwritten with `new`."""
        self.residue = (
            self.residue + self._weight(offset, new) - self._weight(offset, old)
        ) % 0xFFFF
        self.nonzero = self.nonzero or any(new)

    def finish(self, file_length: int) -> int:
        # Folding with end-around carry never gives 0 once anything was non-zero.
        folded = self.residue or (0xFFFF if self.nonzero else 0)
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


def _open_input(path: Path) -> io.BufferedReader:
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
    sha256 runs in a second thread (hashlib releases the GIL), one chunk behind the copy.
    """
    if isinstance(payload, Region):
        return _copy_region(payload, out, checksum, position)
    digest = hashlib.sha256()
    size = 0
    pending: Future[None] | None = None
    exact = payload.exact_size
    total = exact if exact is not None else payload.size_bound()
    with progress.bar(payload.label, total) as bar, ThreadPoolExecutor(max_workers=1) as hasher:
        for chunk in payload.chunks():
            if pending is not None:
                pending.result()
            pending = hasher.submit(digest.update, chunk)
            out.write(chunk)
            if checksum is not None and position is not None:
                checksum.update(position + size, chunk)
            size += len(chunk)
            if bar is not None:
                bar.update(size)
        if pending is not None:
            pending.result()
    return StreamResult(size, digest.hexdigest())


RING = 3


def _copy_region(
    region: Region,
    out: BinaryIO,
    checksum: ChecksumAccumulator | None,
    position: int | None,
) -> StreamResult:
    """The copy for file data: a ring of reused buffers (no allocation per chunk), each one
    written and checksummed here while the hasher thread digests it."""
    digest = hashlib.sha256()
    ring = [bytearray(CHUNK) for _ in range(RING)]
    in_flight: deque[Future[None]] = deque()
    done = 0
    index = 0
    with (
        _open_input(region.path) as source,
        progress.bar(region.label, region.length) as bar,
        ThreadPoolExecutor(max_workers=1) as hasher,
    ):
        source.seek(region.offset)
        while done < region.length:
            if len(in_flight) == RING:
                in_flight.popleft().result()  # the buffer about to be refilled is hashed
            buffer = memoryview(ring[index % RING])
            index += 1
            wanted = min(CHUNK, region.length - done)
            count = source.readinto(buffer[:wanted])
            if not count:
                raise HlimageError("the file shrank while it was being read", where=region.path)
            view = buffer[:count]
            in_flight.append(hasher.submit(digest.update, view))
            out.write(view)
            if checksum is not None and position is not None:
                checksum.update(position + done, view)
            done += count
            if bar is not None:
                bar.update(done)
        while in_flight:
            in_flight.popleft().result()
    return StreamResult(done, digest.hexdigest())


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
    with progress.bar(str(getattr(source, "name", "")), length) as bar:
        while done < length:
            chunk = source.read(min(CHUNK, length - done))
            if not chunk:
                raise HlimageError("input file shrank while it was being read")
            out.write(chunk)
            if checksum is not None and position is not None:
                checksum.update(position + done, chunk)
            done += len(chunk)
            if bar is not None:
                bar.update(done)


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
