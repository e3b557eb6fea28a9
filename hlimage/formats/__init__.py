"""Binary and text formats hlimage builds and parses; none knows about Xen policy."""

from collections.abc import Callable


def align_up(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment` (unchanged for an alignment of 0 or 1)."""
    if alignment <= 1:
        return value
    return -(-value // alignment) * alignment


ReadAt = Callable[[int, int], bytes]
"""read(offset, count): up to `count` bytes at `offset` of some input, fewer only at its end.
The parsers that take one ask for offsets in increasing order, so it may be a stream."""


_ZEROS = bytes(4096)


def leading_zeros(data: bytes | bytearray | memoryview) -> int:
    """How many zero bytes `data` starts with. Compared 4 KiB at a time as bytes (memcmp):
    bytes.lstrip goes a byte at a time and memoryview comparison an item at a time, which made
    skipping the zero padding after an archive take seconds a gigabyte."""
    raw = bytes(data)
    block = len(_ZEROS)
    position = 0
    while raw.startswith(_ZEROS, position) and position + block <= len(raw):
        position += block
    rest = raw[position : position + block]
    return position + len(rest) - len(rest.lstrip(b"\0"))
