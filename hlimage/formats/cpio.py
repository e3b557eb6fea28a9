"""The newc (SVR4, no CRC) cpio format Linux's initramfs unpacker reads."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from hlimage.errors import FormatError

NEWC_MAGIC = b"070701"
CRC_MAGIC = b"070702"
TRAILER = "TRAILER!!!"
HEADER_SIZE = 110
# A reader must not trust a header to allocate: names are short, file data is skipped.
MAX_NAME = 4096
_HEX_FIELDS = re.compile(rb"[0-9A-Fa-f]{104}")


@dataclass(frozen=True)
class Entry:
    name: str
    mode: int
    data: bytes = b""
    uid: int = 0
    gid: int = 0
    mtime: int = 0
    rdevmajor: int = 0
    rdevminor: int = 0
    nlink: int = 1


def directory(name: str, mode: int = 0o755, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFDIR | mode, mtime=mtime, nlink=2)


def regular(name: str, data: bytes, mode: int = 0o644, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFREG | mode, data, mtime=mtime)


def symlink(name: str, target: str, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFLNK | 0o777, target.encode(), mtime=mtime)


def char_device(name: str, major: int, minor: int, mode: int = 0o600, mtime: int = 0) -> Entry:
    return Entry(name, stat.S_IFCHR | mode, mtime=mtime, rdevmajor=major, rdevminor=minor)


def _pad4(length: int) -> bytes:
    return b"\0" * (-length % 4)


def _header(entry: Entry, ino: int, name: bytes, filesize: int) -> bytes:
    fields = (
        ino,
        entry.mode,
        entry.uid,
        entry.gid,
        entry.nlink,
        entry.mtime,
        filesize,
        0,
        0,
        entry.rdevmajor,
        entry.rdevminor,
        len(name) + 1,
        0,
    )
    return NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)


def build(entries: Iterable[Entry]) -> bytes:
    """A complete archive with the trailer. Inode numbers are assigned in order."""
    out = bytearray()
    for ino, entry in enumerate([*entries, Entry(TRAILER, 0, nlink=1)], start=1):
        name = entry.name.encode()
        is_trailer = entry.name == TRAILER
        out += _header(entry, 0 if is_trailer else ino, name, len(entry.data))
        out += name + b"\0"
        out += _pad4(HEADER_SIZE + len(name) + 1)
        out += entry.data
        out += _pad4(len(entry.data))
    return bytes(out)


@dataclass(frozen=True)
class Member:
    name: str
    mode: int
    size: int


def members(stream: BinaryIO, limit: int | None = None) -> Iterator[Member]:
    """Walk the headers of a newc archive without reading file data into memory."""
    seen = 0
    while True:
        header = stream.read(HEADER_SIZE)
        if not header:
            return
        if len(header) < HEADER_SIZE:
            raise FormatError("truncated cpio header")
        if header[:6] not in (NEWC_MAGIC, CRC_MAGIC):
            if not header.strip(b"\0"):
                return  # zero padding between or after archives
            raise FormatError("not a newc cpio archive (bad magic)")
        # int() would also take a sign, spaces or '_': a negative size must not reach seek().
        if not _HEX_FIELDS.fullmatch(header[6:]):
            raise FormatError("cpio header has a field that is not hexadecimal")
        fields = [int(header[6 + 8 * i : 14 + 8 * i], 16) for i in range(13)]
        mode, filesize, namesize = fields[1], fields[6], fields[11]
        if namesize == 0 or namesize > MAX_NAME:
            raise FormatError(f"cpio header has a bad name size ({namesize})")
        raw_name = stream.read(namesize)
        if len(raw_name) < namesize:
            raise FormatError("truncated cpio name")
        stream.read(-(HEADER_SIZE + namesize) % 4)
        name = raw_name.rstrip(b"\0").decode("utf-8", "replace")
        if name == TRAILER:
            return
        yield Member(name, mode, filesize)
        skip = filesize + (-filesize % 4)
        # Seeking keeps a reader of huge archives in bounded memory.
        current = stream.tell()
        stream.seek(current + skip)
        seen += 1
        if limit is not None and seen >= limit:
            return


def is_newc(head: bytes) -> bool:
    return head[:6] in (NEWC_MAGIC, CRC_MAGIC)
