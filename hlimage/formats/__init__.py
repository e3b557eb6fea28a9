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
