"""Watching the bytes of a build go by: digests and the progress bar, on the one pass that
writes them.

The writers in formats/ only move chunks from payloads to an output file. What a build wants to
know about those bytes is learnt on the way, never by reading the output back:

- `Tracked` wraps a payload: its sha256 (for the manifest) and the progress bar of its copy;
- `Watched` wraps the output file: the sha256 of the whole output and its Authenticode digest,
  fed in file order (the PE writer writes its headers first for that, once every size is known).

Each digest runs in a thread of its own (hashlib lets go of the GIL on large updates), at most
IN_FLIGHT chunks behind the copy; a chunk may be a view into one of the few buffers the payload
cycles through (formats/payload.RING), which is why none is kept longer.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from hlimage.formats.payload import CHUNK, Chunk, Digest, Payload, Region
from hlimage.plumbing import progress
from hlimage.plumbing.atomic import TEMP_MARK


class Tracked(Payload):
    """A payload watched while it is written: its size, its sha256 when asked for, and a
    progress bar for a long copy."""

    def __init__(
        self,
        payload: Payload,
        *,
        digest: bool = True,
        ranges: Sequence[tuple[int, int]] | None = None,
    ) -> None:
        self.payload = payload
        self.label = payload.label
        self.want_digest = digest
        self.ranges = ranges
        """Byte ranges for a second digest of only those bytes (a PE file's Authenticode)."""
        self.size: int | None = None
        self.sha256: str | None = None
        self.ranged_sha256: str | None = None

    def size_bound(self) -> int:
        return self.payload.size_bound()

    @property
    def exact_size(self) -> int | None:
        return self.payload.exact_size

    def plain(self) -> Payload:
        return self.payload.plain()

    def chunks(self) -> Iterator[bytes]:
        return cast(Iterator[bytes], self._watch(self.payload.chunks()))

    def views(self) -> Iterator[Chunk]:
        return self._watch(self.payload.views())

    def _watch(self, pieces: Iterator[Chunk]) -> Iterator[Chunk]:
        digest = Digest() if self.want_digest else None
        ranged = Digest(self.ranges) if self.want_digest and self.ranges is not None else None
        exact = self.payload.exact_size
        total = exact if exact is not None else self.payload.size_bound()
        size = 0
        try:
            with progress.bar(self.label, total) as bar:
                for piece in pieces:
                    if digest is not None:
                        digest.feed(piece)
                    if ranged is not None:
                        ranged.feed(piece, size)
                    size += len(piece)
                    yield piece
                    if bar is not None:
                        bar.update(size)
            self.size = size
            if digest is not None:
                self.sha256 = digest.hexdigest()
            if ranged is not None and ranged.complete:
                self.ranged_sha256 = ranged.hexdigest()
        finally:
            for started in (digest, ranged):
                if started is not None and self.size is None:
                    started.close()


class Watched(io.RawIOBase):
    """The output file, with digests of everything written to it in order.

    `whole` is the file's sha256; `ranged` digests cover only some byte ranges (the
    Authenticode hash), set once the writer knows its headers. A write anywhere but at the end
    of what was written (a header patched afterwards) leaves them unusable, which `digests`
    says instead of returning a wrong value.
    """

    def __init__(self, out: BinaryIO, *, whole: bool = True) -> None:
        super().__init__()
        self.out = out
        self.whole = Digest() if whole else None
        self.ranged: dict[str, Digest] = {}
        self._written = 0
        self._at = out.tell()
        self.in_order = self._at == 0

    def add_ranged(self, name: str, ranges: Sequence[tuple[int, int]]) -> None:
        if self._written:
            raise AssertionError("a ranged digest must be set up before anything is written")
        self.ranged[name] = Digest(ranges)

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def write(self, data: Chunk) -> int:  # type: ignore[override]
        if self._at != self._written:
            self.in_order = False
        count = self.out.write(data)
        if self.in_order:
            if self.whole is not None:
                self.whole.feed(data)
            for digest in self.ranged.values():
                digest.feed(data, self._written)
            self._written += len(data)
        self._at += len(data)
        return count

    def seek(self, offset: int, whence: int = 0) -> int:
        self._at = self.out.seek(offset, whence)
        return self._at

    def tell(self) -> int:
        return self._at

    def truncate(self, size: int | None = None) -> int:
        result = self.out.truncate(size)
        if result < self._written:
            self.in_order = False
        return result

    def read(self, size: int | None = -1) -> bytes:
        data = self.out.read(-1 if size is None else size)
        self._at += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def flush(self) -> None:
        self.out.flush()

    def fileno(self) -> int:
        return self.out.fileno()

    @property
    def name(self) -> str:
        return str(getattr(self.out, "name", ""))

    def as_binary(self) -> BinaryIO:
        return cast(BinaryIO, self)

    def digests(self) -> dict[str, str]:
        """The digests by name ("sha256" for the whole file); none unless written in order."""
        if not self.in_order:
            self.abandon()
            return {}
        result = {}
        if self.whole is not None:
            result["sha256"] = self.whole.hexdigest()
        for name, digest in self.ranged.items():
            if digest.complete:
                result[name] = digest.hexdigest()
            else:
                digest.close()
        return result

    def abandon(self) -> None:
        for digest in [self.whole, *self.ranged.values()]:
            if digest is not None:
                digest.close()


def copy_stream(
    payload: Payload,
    out: BinaryIO,
    *,
    digest: bool = True,
    ranges: Sequence[tuple[int, int]] | None = None,
) -> Tracked:
    """Write a payload at the output's current position, its digests computed on the way."""
    tracked = Tracked(payload, digest=digest, ranges=ranges)
    for view in tracked.views():
        out.write(view)
    return tracked


def file_sha256(path: Path | str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_file(stream: BinaryIO) -> None:
    stream.flush()
    os.fsync(stream.fileno())


@contextlib.contextmanager
def sized(payloads: Sequence[Payload], beside: Path) -> Iterator[list[Payload]]:
    """The payloads, each with a size known before it is written.

    A writer that puts a size in front of the data (a FAT directory entry, PE headers written
    first for their digests) needs it before the data, so a payload whose size is known only
    once produced (an initrd recompressed to LZ4) is spooled to a file beside the output
    first, never to memory; a killed build's spool is cleaned up like any other temporary of
    that output.
    """
    if all(payload.exact_size is not None for payload in payloads):
        yield list(payloads)
        return
    with tempfile.TemporaryDirectory(
        dir=beside.parent, prefix=f".{beside.name}.", suffix=TEMP_MARK
    ) as scratch:
        result: list[Payload] = []
        for index, payload in enumerate(payloads):
            if payload.exact_size is None:
                spool = Path(scratch) / str(index)
                with spool.open("wb") as out:
                    for view in Tracked(payload, digest=False).views():
                        out.write(view)
                payload = Region(spool, label=payload.label)
            result.append(payload)
        yield result
