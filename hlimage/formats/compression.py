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

from hlimage.errors import FormatError, TruncatedError
from hlimage.formats import ReadAt

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

ZSTD_MAGIC = 0xFD2FB528
ZSTD_SKIPPABLE = 0x184D2A50
"""Skippable frames' magic is this with any low nibble (RFC 8878 3.1.2)."""
ZSTD_BLOCK_MAX = 128 << 10
XZ_FOOTER = 12
XZ_FOOTER_MAGIC = b"YZ"
# Zero padding after a compressed stream that an end check looks through for the stream's end.
PADDING_LOOKBACK = 64 << 10
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
            raise TruncatedError("truncated LZ4 legacy stream")
        (size,) = struct.unpack("<I", size_field)
        if size == LZ4_LEGACY_MAGIC:
            continue
        if size == 0:
            return  # zero padding after the last block
        if size > lz4_block_bound(LZ4_LEGACY_BLOCK):
            raise FormatError(f"LZ4 legacy block of {size} bytes is larger than any 8 MiB block")
        block = reader.read(size)
        if len(block) < size:
            raise TruncatedError("truncated LZ4 legacy block")
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
        raise TruncatedError("truncated gzip data")


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
        raise TruncatedError("truncated xz data")


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


# --- Where a stream ends, from the lengths its own headers state, without decompressing it ----


def stream_end(kind: str | None, read: ReadAt, start: int, length: int) -> int | None:
    """Where the `kind` stream at `start` of an input of `length` bytes ends, found from its
    framing alone (block headers, a footer), so that checking costs a few reads however large
    it is; TruncatedError when that framing runs past `length`. None for the kinds whose end
    only decompressing all of them finds (gzip, bzip2, lzma, lzo: their streams state no
    length, only an end marker inside the compressed bits)."""
    if kind == LZ4_LEGACY:
        return lz4_legacy_end(read, start, length)
    if kind == ZSTD:
        return zstd_end(read, start, length)
    if kind == XZ:
        return xz_end(read, start, length)
    return None


def lz4_legacy_end(read: ReadAt, start: int, length: int) -> int:
    """Walk an LZ4 legacy stream's block headers (each states its block's compressed length).
    The stream has no end marker: it ends at the end of the input, or at a zero length field
    (zero padding after it), as lz4_legacy_decompress reads it."""
    if read(start, 4) != struct.pack("<I", LZ4_LEGACY_MAGIC):
        raise FormatError("not an LZ4 legacy stream")
    position = start + 4
    while position < length:
        field = read(position, 4)
        if len(field) < 4:
            raise TruncatedError.stated(
                "LZ4 legacy stream",
                size=length,
                needed=position + 4,
                by=f"a block header begun at offset {position}",
            )
        (size,) = struct.unpack("<I", field)
        if size == LZ4_LEGACY_MAGIC:
            position += 4
            continue
        if size == 0:
            return position
        if size > lz4_block_bound(LZ4_LEGACY_BLOCK):
            raise FormatError(f"LZ4 legacy block of {size} bytes is larger than any 8 MiB block")
        if position + 4 + size > length:
            raise TruncatedError.stated(
                "LZ4 legacy stream",
                size=length,
                needed=position + 4 + size,
                by=f"the block header at offset {position}",
            )
        position += 4 + size
    return position


def zstd_end(read: ReadAt, start: int, length: int) -> int:
    """Walk zstd frames (and skippable frames) by their block headers, each of which states
    its block's length (RFC 8878 3.1.1); returns where the last frame ends."""
    position = start
    frames = 0
    while position + 4 <= length:
        (magic,) = struct.unpack("<I", read(position, 4))
        if magic & 0xFFFFFFF0 == ZSTD_SKIPPABLE:
            field = read(position + 4, 4)
            if len(field) < 4:
                raise TruncatedError.stated(
                    "zstd stream", size=length, needed=position + 8, by="a skippable frame"
                )
            position = _within(position + 8 + struct.unpack("<I", field)[0], length, position)
        elif magic == ZSTD_MAGIC:
            position = _zstd_frame_end(read, position, length)
        elif frames:
            return position  # something else follows the stream (padding, another archive)
        else:
            raise FormatError("not a zstd stream")
        frames += 1
    if not frames:
        raise FormatError("not a zstd stream")
    return position


def _within(end: int, length: int, frame: int) -> int:
    if end > length:
        raise TruncatedError.stated(
            "zstd stream", size=length, needed=end, by=f"the frame at offset {frame}"
        )
    return end


def _zstd_frame_end(read: ReadAt, start: int, length: int) -> int:
    descriptor_byte = read(start + 4, 1)
    if not descriptor_byte:
        raise TruncatedError.stated(
            "zstd stream", size=length, needed=start + 5, by=f"the frame at offset {start}"
        )
    descriptor = descriptor_byte[0]
    if descriptor & 0x08:
        raise FormatError("corrupt zstd data (a reserved frame header bit is set)")
    single_segment = bool(descriptor & 0x20)
    content_size_bytes = (1 if single_segment else 0, 2, 4, 8)[descriptor >> 6]
    header = 5 + (0 if single_segment else 1) + (0, 1, 2, 4)[descriptor & 3] + content_size_bytes
    position = start + header
    while True:
        field = read(position, 3)
        if len(field) < 3:
            raise TruncatedError.stated(
                "zstd stream",
                size=length,
                needed=position + 3,
                by=f"the frame at offset {start} (its next block header)",
            )
        value = int.from_bytes(field, "little")
        block_type, block_size = (value >> 1) & 3, value >> 3
        if block_type == 3 or block_size > ZSTD_BLOCK_MAX:
            raise FormatError("corrupt zstd data (a block header no encoder writes)")
        # An RLE block holds one byte, repeated block_size times when decompressed.
        end = position + 3 + (1 if block_type == 1 else block_size)
        if end > length:
            raise TruncatedError.stated(
                "zstd stream", size=length, needed=end, by=f"the block header at offset {position}"
            )
        position = end
        if value & 1:  # the frame's last block
            break
    if descriptor & 0x04:  # a content checksum follows
        position = _within(position + 4, length, start)
    return position


def xz_end(read: ReadAt, start: int, length: int) -> int | None:
    """An xz file ends with a stream footer ("YZ", and a CRC32 of the fields before it); a
    cut-short one does not. Its blocks need not state their lengths, so the footer is looked
    for at the end of the input, after any zero padding. None when the input ends in a cpio
    archive instead: something follows the xz stream, whose end then only decompressing finds."""
    header = read(start, 12)
    if len(header) < 12 or header[:6] != b"\xfd7zXZ\x00":
        raise FormatError("not an xz stream")
    window_start = max(start, length - PADDING_LOOKBACK)
    tail = read(window_start, length - window_start).rstrip(b"\0")
    if not tail:
        return None  # all zeros at the end (a preallocated file?): nothing to tell by
    if (
        len(tail) >= XZ_FOOTER
        and tail.endswith(XZ_FOOTER_MAGIC)
        and window_start + len(tail) >= start + 24
    ):
        footer = tail[-XZ_FOOTER:]
        (crc,) = struct.unpack("<I", footer[:4])
        if crc != zlib.crc32(footer[4:10]) or footer[8:10] != header[6:8]:
            raise FormatError("corrupt xz data (its stream footer does not match its header)")
        return length
    if tail.endswith(b"TRAILER!!!"):
        return None
    raise TruncatedError(
        f"truncated xz stream: it has {length} bytes and no xz stream footer at its end",
        size=length,
    )
