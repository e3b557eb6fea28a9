"""What goes into an output: payloads, produced in bounded chunks and never read whole.

A writer in formats/ takes payloads and writes their chunks; what else watches the bytes go by
(digests, a progress bar) wraps the payload or the output file (plumbing/streams.py), so that no
format has to know about it.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO

from hlimage.errors import HlimageError

CHUNK = 1 << 20
RING = 4
"""How many buffers `Payload.views` cycles through: a view stays valid while the next
RING - 1 are taken, so a consumer may hand a view to another thread as long as that work is
done before it asks for the view after next."""

IN_FLIGHT = RING - 2
"""Chunks a digest may lag behind the copy: with the one being taken, fewer than RING."""

Chunk = bytes | bytearray | memoryview


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

    def views(self) -> Iterator[Chunk]:
        """The same bytes for a copy that writes each piece at once: the pieces may be views of
        a few buffers reused in turn (RING), which saves an allocation and a page-fault storm
        per MiB. Whoever keeps a piece longer than that copies it."""
        return iter(self.chunks())

    def plain(self) -> Payload:
        """The payload under any wrappers that only watch its bytes go by (digests, progress):
        for a second look at the bytes that must not be counted twice."""
        return self


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
        return self._joined(lambda part: part.chunks())  # type: ignore[return-value]

    def views(self) -> Iterator[Chunk]:
        return self._joined(lambda part: part.views())

    def _joined(self, pieces: Callable[[Payload], Iterator[Chunk]]) -> Iterator[Chunk]:
        for index, part in enumerate(self.parts):
            length = 0
            for chunk in pieces(part):
                length += len(chunk)
                yield chunk
            if index < len(self.parts) - 1 and self._padding(length):
                yield b"\0" * self._padding(length)


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

    def views(self) -> Iterator[Chunk]:
        ring = [bytearray(CHUNK) for _ in range(RING)]
        done = 0
        index = 0
        with _open_input(self.path) as stream:
            stream.seek(self.offset)
            while done < self.length:
                buffer = memoryview(ring[index % RING])
                index += 1
                count = stream.readinto(buffer[: min(CHUNK, self.length - done)])  # type: ignore[attr-defined]
                if not count:
                    raise HlimageError("the file shrank while it was being read", where=self.path)
                done += count
                yield buffer[:count]


class StreamRange(Payload):
    """A byte range of a file already open (the sections of an image being rewritten)."""

    def __init__(self, stream: BinaryIO, offset: int, length: int, label: str = "") -> None:
        self.stream = stream
        self.offset = offset
        self.length = length
        self.label = label or str(getattr(stream, "name", ""))

    def size_bound(self) -> int:
        return self.length

    @property
    def exact_size(self) -> int:
        return self.length

    def chunks(self) -> Iterator[bytes]:
        self.stream.seek(self.offset)
        remaining = self.length
        while remaining:
            chunk = self.stream.read(min(CHUNK, remaining))
            if not chunk:
                raise HlimageError("the input file shrank while it was being read")
            remaining -= len(chunk)
            yield chunk


def copy_to(payload: Payload, out: BinaryIO) -> int:
    """Write a payload's bytes at the output's current position; how many there were."""
    size = 0
    for view in payload.views():
        out.write(view)
        size += len(view)
    return size


class Digest:
    """SHA-256 of a stream of chunks, computed in a thread of its own, in order."""

    def __init__(self, ranges: Sequence[tuple[int, int]] | None = None) -> None:
        self._hash = hashlib.sha256()
        self._worker = ThreadPoolExecutor(max_workers=1)
        self._pending: deque[Future[None]] = deque()
        self._ranges = tuple(ranges) if ranges is not None else None
        self._index = 0
        self._result: str | None = None

    def feed(self, data: Chunk, position: int = 0) -> None:
        """`data`, which starts at byte `position` of the stream (used with ranges only)."""
        if self._ranges is None:
            self._pending.append(self._worker.submit(self._hash.update, data))
        else:
            self._pending.append(self._worker.submit(self._update_ranges, data, position))
        while len(self._pending) > IN_FLIGHT:
            self._pending.popleft().result()

    def _update_ranges(self, data: Chunk, position: int) -> None:
        """Only the parts of `data` inside the ranges, which run in stream order."""
        assert self._ranges is not None
        view = memoryview(data)
        end = position + len(view)
        while self._index < len(self._ranges):
            start, length = self._ranges[self._index]
            if start >= end:
                return
            low, high = max(start, position), min(start + length, end)
            if high > low:
                self._hash.update(view[low - position : high - position])
            if start + length > end:
                return
            self._index += 1

    @property
    def complete(self) -> bool:
        """Whether every range was fed (always, for a digest of everything)."""
        self._drain()
        return self._ranges is None or self._index == len(self._ranges)

    def _drain(self) -> None:
        while self._pending:
            self._pending.popleft().result()

    def hexdigest(self) -> str:
        if self._result is None:
            self._drain()
            self._worker.shutdown()
            self._result = self._hash.hexdigest()
        return self._result

    def close(self) -> None:
        """Stop the thread without a result (the build failed)."""
        for pending in self._pending:
            pending.cancel()
        self._worker.shutdown(wait=True)
