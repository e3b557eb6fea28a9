"""The newc (SVR4, no CRC) cpio format Linux's initramfs unpacker reads."""

from __future__ import annotations

import re
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import BinaryIO

from hlimage.errors import FormatError, TruncatedError
from hlimage.formats import leading_zeros

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


class ArchiveCheck:
    """Checks, as bytes arrive, that they are whole newc archives: each member's header and
    name complete, its data within the input, each archive closed by its TRAILER!!! entry.
    Zero bytes may sit between members and after archives (Linux's unpacker skips them).

    Member data need not be looked at: while `skippable` is non-zero the caller may `skip`
    that many bytes (seek over them) instead of feeding them, so that a check of a large
    archive on disk reads its headers only. `finish` at the end of the input raises
    TruncatedError when it ended inside an archive.
    """

    def __init__(self, start: int = 0, *, stop_at_other: bool = False) -> None:
        self.offset = start
        """Where the next byte fed is, in the input."""
        self.members = 0
        self.archives = 0
        self.other_at: int | None = None
        """Where data that is not cpio starts after a closed archive (with stop_at_other)."""
        self._stop_at_other = stop_at_other
        self._closed = False
        self._state = "between"
        self._buffer = bytearray()
        self._want = 0
        self._header_at = 0
        self._namesize = 0
        self._filesize = 0
        self._name = ""
        self._data_end = 0
        self._skip = 0

    @property
    def skippable(self) -> int:
        return self._skip if self._state == "data" else 0

    @property
    def at_padding(self) -> bool:
        """Between members or archives, where zero padding may be (and `skip_padding` may
        pass over a run the caller knows is zeros, a hole in a sparse file)."""
        return self._state == "between"

    def skip_padding(self, count: int) -> None:
        assert self.at_padding and count >= 0
        self.offset += count

    def skip(self, count: int) -> None:
        assert 0 <= count <= self.skippable
        self.offset += count
        self._skip -= count
        if not self._skip:
            self._state = "between"

    def feed(self, data: bytes | bytearray | memoryview) -> int:
        """Takes `data`, the next bytes of the input; returns how many it took: all of them,
        unless data that is not cpio starts in them (see `other_at`)."""
        view = memoryview(data).cast("B")
        used = 0
        while used < len(view) and self.other_at is None:
            if self._state == "data":
                take = min(self._skip, len(view) - used)
                used += take
                self.skip(take)
            elif self._state == "between":
                used += self._between(view[used:])
            else:
                take = min(self._want - len(self._buffer), len(view) - used)
                self._buffer += view[used : used + take]
                used += take
                self.offset += take
                if len(self._buffer) == self._want and self._state == "header":
                    self._header()
                elif len(self._buffer) == self._want:
                    self._named()
        return used

    def _between(self, view: memoryview) -> int:
        if view[0] == 0:
            zeros = leading_zeros(view)
            self.offset += zeros
            return zeros
        if view[0] == ord("0"):
            if self.offset % 4:
                raise FormatError(
                    f"cpio header at offset {self.offset} is not at a multiple of 4 bytes"
                )
            self._state, self._want, self._header_at = "header", HEADER_SIZE, self.offset
            self._buffer.clear()
            return 0
        if self._closed and self._stop_at_other:
            self.other_at = self.offset
            return 0
        if self._closed:
            raise FormatError(f"data after the cpio archive at offset {self.offset} is not cpio")
        raise FormatError(
            f"the data at offset {self.offset}, after cpio member {self._name}, is not a cpio "
            "header"
        )

    def _header(self) -> None:
        header = bytes(self._buffer)
        if header[:6] not in (NEWC_MAGIC, CRC_MAGIC):
            raise FormatError(f"not a newc cpio header at offset {self._header_at} (bad magic)")
        if not _HEX_FIELDS.fullmatch(header[6:]):
            raise FormatError("cpio header has a field that is not hexadecimal")
        self._filesize = int(header[54:62], 16)
        self._namesize = int(header[94:102], 16)
        if self._namesize == 0 or self._namesize > MAX_NAME:
            raise FormatError(f"cpio header has a bad name size ({self._namesize})")
        self._state = "name"
        self._want = self._namesize + (-(HEADER_SIZE + self._namesize) % 4)
        self._buffer.clear()

    def _named(self) -> None:
        name = bytes(self._buffer[: self._namesize]).rstrip(b"\0")
        self._name = name.decode("utf-8", "replace")
        self._closed = self._name == TRAILER
        if self._closed:
            self.archives += 1
        else:
            self.members += 1
        self._data_end = self._header_at + HEADER_SIZE + self._want + self._filesize
        self._skip = self._filesize + (-self._filesize % 4)
        self._state = "data" if self._skip else "between"

    def finish(self) -> None:
        """The input ended here: TruncatedError unless that is after a whole archive."""
        if self._state == "name" and len(self._buffer) >= self._namesize:
            self._named()  # only the name's padding is missing: judged by what the name says
        if self._state in ("header", "name"):
            needed = self._header_at + HEADER_SIZE
            if self._state == "name":
                needed += self._namesize
            raise TruncatedError.stated(
                "cpio archive",
                size=self.offset,
                needed=needed,
                by=f"the member header at offset {self._header_at}",
            )
        if self._state == "data" and self.offset < self._data_end:
            raise TruncatedError.stated(
                "cpio archive",
                size=self.offset,
                needed=self._data_end,
                by=f"the header of member {self._name}",
            )
        if not self._closed:
            last = f"after member {self._name} " if self.members else ""
            raise TruncatedError(
                f"truncated cpio archive: it ends at {self.offset} bytes {last}with no "
                f"{TRAILER} entry, which closes every archive",
                size=self.offset,
            )
