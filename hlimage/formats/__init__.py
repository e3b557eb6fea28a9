"""Binary and text formats hlimage builds and parses; none knows about Xen policy."""


def align_up(value: int, alignment: int) -> int:
    """`value` rounded up to a multiple of `alignment` (unchanged for an alignment of 0 or 1)."""
    if alignment <= 1:
        return value
    return -(-value // alignment) * alignment
