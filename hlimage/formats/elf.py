"""ELF headers: how long an ELF file says it is, from its program and section header tables.

Only what the first bytes hold is read (the ELF header and, when they are there, the program
headers); machine and type are pyelftools' business (hlimage.inputs).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from hlimage.errors import TruncatedError

MAGIC = b"\x7fELF"
CLASS_32, CLASS_64 = 1, 2
DATA_LSB, DATA_MSB = 1, 2
# e_phoff .. e_shnum, after e_ident, e_type, e_machine, e_version and e_entry.
_HEADER = {CLASS_32: ("IIIHHHHHH", 28), CLASS_64: ("QQIHHHHHH", 32)}
# p_offset and p_filesz within one program header, and the size of one.
_PROGRAM = {CLASS_32: ("I", 4, 16, 32), CLASS_64: ("Q", 8, 32, 56)}
MAX_PROGRAM_HEADERS = 4096


@dataclass(frozen=True)
class StatedLength:
    needed: int
    """The bytes the headers say the file has, at least."""
    by: str
    """Which header says so."""


def stated_length(head: bytes) -> StatedLength | None:
    """What an ELF file's headers say its length is, at least, read from `head` (its first
    bytes); None when `head` is not an ELF header (or states nothing). Program headers beyond
    `head` are not read, but where their table ends still counts."""
    if len(head) < 52 or head[:4] != MAGIC:
        return None
    order = {DATA_LSB: "<", DATA_MSB: ">"}.get(head[5])
    if head[4] not in _HEADER or order is None:
        return None  # not an ELF header hlimage can read; what it is, is the caller's question
    layout, offset = _HEADER[head[4]]
    if len(head) < offset + struct.calcsize(order + layout):
        return None
    fields = struct.unpack_from(order + layout, head, offset)
    phoff, shoff, _flags, _ehsize, phentsize, phnum, shentsize, shnum, _shstrndx = fields
    candidates = []
    if phnum:
        candidates.append(StatedLength(phoff + phnum * phentsize, "its program header table"))
    # e_shnum 0 with a section table means more than 0xff00 sections, counted elsewhere.
    if shoff and shnum:
        candidates.append(StatedLength(shoff + shnum * shentsize, "its section header table"))
    kind, field_offset, size_offset, entry_size = _PROGRAM[head[4]]
    if phentsize == entry_size and phnum <= MAX_PROGRAM_HEADERS:
        for index in range(phnum):
            at = phoff + index * phentsize
            if at + entry_size > len(head):
                break
            (p_offset,) = struct.unpack_from(order + kind, head, at + field_offset)
            (p_filesz,) = struct.unpack_from(order + kind, head, at + size_offset)
            if p_filesz:
                candidates.append(StatedLength(p_offset + p_filesz, f"its program header {index}"))
    return max(candidates, key=lambda stated: stated.needed, default=None)


def check_length(head: bytes, size: int) -> None:
    """TruncatedError when an ELF file of `size` bytes is shorter than its headers say."""
    stated = stated_length(head)
    if stated is not None and stated.needed > size:
        raise TruncatedError.stated("ELF image", size=size, needed=stated.needed, by=stated.by)
