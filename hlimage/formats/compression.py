"""Compressed streams: recognising them by magic, and streaming decompression with bounded output.

LZ4 here is the *legacy* frame format (magic 0x184C2102, blocks of at most 8 MiB), the only LZ4
form Linux's initramfs unpacker and Xen's kernel loader read.
"""

from __future__ import annotations

import lzma
import struct
import zlib
from collections.abc import Iterable, Iterator
from typing import Any

import lz4.block
import zstandard

from hlimage.errors import FormatError

GZIP = "gzip"
XZ = "xz"
ZSTD = "zstd"
LZ4_LEGACY = "lz4-legacy"
LZ4_FRAME = "lz4-frame"
BZIP2 = "bzip2"
LZMA = "lzma"
LZO = "lzo"

MAGICS: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", GZIP),
    (b"\xfd7zXZ\x00", XZ),
    (b"\x28\xb5\x2f\xfd", ZSTD),
    (b"\x02\x21\x4c\x18", LZ4_LEGACY),
    (b"\x04\x22\x4d\x18", LZ4_FRAME),
    (b"BZh", BZIP2),
    (b"\x89LZO", LZO),
    (b"\x5d\x00\x00", LZMA),
)

LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20
OUTPUT_CHUNK = 1 << 20


def detect(head: bytes) -> str | None:
    for magic, name in MAGICS:
        if head.startswith(magic):
            return name
    return None


def lz4_block_bound(length: int) -> int:
    return length + length // 255 + 16


def lz4_legacy_bound(length: int) -> int:
    """The largest LZ4 legacy stream `length` input bytes can become."""
    blocks = max(1, -(-length // LZ4_LEGACY_BLOCK))
    return 4 + blocks * 4 + lz4_block_bound(length) + blocks * 16


def lz4_legacy_compress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Compress a stream into LZ4 legacy frames, one 8 MiB block at a time."""
    yield struct.pack("<I", LZ4_LEGACY_MAGIC)
    pending = bytearray()
    for chunk in chunks:
        pending += chunk
        while len(pending) >= LZ4_LEGACY_BLOCK:
            block = lz4.block.compress(bytes(pending[:LZ4_LEGACY_BLOCK]), store_size=False)
            del pending[:LZ4_LEGACY_BLOCK]
            yield struct.pack("<I", len(block)) + block
    if pending:
        block = lz4.block.compress(bytes(pending), store_size=False)
        yield struct.pack("<I", len(block)) + block


class _Reader:
    """Pulls exact byte counts out of a chunk iterator."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._chunks = iter(chunks)
        self._buffer = bytearray()

    def read(self, count: int) -> bytes:
        while len(self._buffer) < count:
            try:
                self._buffer += next(self._chunks)
            except StopIteration:
                break
        data = bytes(self._buffer[:count])
        del self._buffer[:count]
        return data


def lz4_legacy_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    reader = _Reader(chunks)
    if reader.read(4) != struct.pack("<I", LZ4_LEGACY_MAGIC):
        raise FormatError("not an LZ4 legacy stream")
    while True:
        size_field = reader.read(4)
        if not size_field:
            return
        if len(size_field) < 4:
            raise FormatError("truncated LZ4 legacy stream")
        (size,) = struct.unpack("<I", size_field)
        if size == LZ4_LEGACY_MAGIC:
            continue
        if size == 0:
            return  # zero padding after the last block
        if size > lz4_block_bound(LZ4_LEGACY_BLOCK):
            raise FormatError(f"LZ4 legacy block of {size} bytes is larger than any 8 MiB block")
        block = reader.read(size)
        if len(block) < size:
            raise FormatError("truncated LZ4 legacy block")
        try:
            yield lz4.block.decompress(block, uncompressed_size=LZ4_LEGACY_BLOCK)
        except lz4.block.LZ4BlockError:
            raise FormatError("corrupt LZ4 legacy block") from None


def gzip_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Concatenated gzip members, as `gzip -d` reads them; zero padding after them is allowed."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    fed = False
    for chunk in chunks:
        data = chunk
        while True:
            if decompressor.eof:
                if not data.strip(b"\0"):
                    break
                decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
            try:
                out = decompressor.decompress(data, OUTPUT_CHUNK)
            except zlib.error as error:
                raise FormatError(f"corrupt gzip data ({error})") from None
            fed = True
            if out:
                yield out
            data = decompressor.unused_data if decompressor.eof else decompressor.unconsumed_tail
            # A full output buffer may leave output pending inside zlib: ask again.
            if not data and (decompressor.eof or len(out) < OUTPUT_CHUNK):
                break
    if not fed or not decompressor.eof:
        raise FormatError("truncated gzip data")


def xz_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Concatenated xz streams; zero padding after them is allowed."""
    decompressor = lzma.LZMADecompressor()
    for chunk in chunks:
        data = chunk
        while data or not (decompressor.needs_input or decompressor.eof):
            if decompressor.eof:
                data = decompressor.unused_data + data
                if not data.strip(b"\0"):
                    break
                decompressor = lzma.LZMADecompressor()
            try:
                out = decompressor.decompress(data, OUTPUT_CHUNK)
            except lzma.LZMAError as error:
                raise FormatError(f"corrupt xz data ({error})") from None
            if out:
                yield out
            data = b""
    if not decompressor.eof:
        raise FormatError("truncated xz data")


def zstd_decompress(chunks: Iterable[bytes]) -> Iterator[bytes]:
    decompressor = zstandard.ZstdDecompressor()
    source: Any = _IterStream(chunks)
    reader = decompressor.stream_reader(source, read_across_frames=True)
    try:
        while True:
            out = reader.read(OUTPUT_CHUNK)
            if not out:
                return
            yield out
    except zstandard.ZstdError as error:
        raise FormatError(f"corrupt zstd data ({error})") from None


class _IterStream:
    """A minimal file object over an iterator of chunks, for zstandard's stream_reader."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self._reader = _Reader(chunks)

    def read(self, count: int = -1) -> bytes:
        return self._reader.read(count if count >= 0 else OUTPUT_CHUNK)


DECOMPRESSORS = {
    GZIP: gzip_decompress,
    XZ: xz_decompress,
    ZSTD: zstd_decompress,
    LZ4_LEGACY: lz4_legacy_decompress,
}


def decompress(kind: str | None, chunks: Iterable[bytes]) -> Iterator[bytes]:
    """Decompress a stream of a known kind; None passes it through."""
    if kind is None:
        yield from chunks
        return
    try:
        function = DECOMPRESSORS[kind]
    except KeyError:
        raise FormatError(f"{kind} data cannot be decompressed by hlimage") from None
    yield from function(chunks)
