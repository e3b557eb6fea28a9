"""The tree of files a volume holds, with their short (8.3) and long names, and the dates
directory entries carry.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from hlimage.errors import FormatError, HlimageError
from hlimage.formats.fat.sizing import ceil_div
from hlimage.formats.fat.structs import (
    FAT_EPOCH,
    FAT_LAST,
    LFN_CHARS,
    LONG_NAME_FORBIDDEN,
    MAX_FILE_SIZE,
    MAX_LFN_UNITS,
    SHORT_NAME_CHARS,
)
from hlimage.formats.payload import Payload


def short_name_checksum(short_name: bytes) -> int:
    """The checksum each long-name entry carries of the 11-byte short name it belongs to."""
    total = 0
    for byte in short_name:
        total = (((total & 1) << 7) + (total >> 1) + byte) & 0xFF
    return total


@dataclass(frozen=True)
class Timestamp:
    date: int
    time: int
    tenths: int
    """Hundredths of a second past `time` (which counts in 2-second steps): 0 or 100."""


def fat_timestamp(unix_time: int) -> Timestamp:
    """A UTC FAT date and time, clamped to the 1980..2107 range FAT can express."""
    moment = datetime.fromtimestamp(min(max(unix_time, FAT_EPOCH), FAT_LAST), UTC)
    return Timestamp(
        date=((moment.year - 1980) << 9) | (moment.month << 5) | moment.day,
        time=(moment.hour << 11) | (moment.minute << 5) | (moment.second // 2),
        tenths=(moment.second % 2) * 100,
    )


@dataclass(eq=False)
class Node:
    name: str
    payload: Payload | None
    """None for a directory."""
    size: int = 0
    children: list[Node] = field(default_factory=list)
    parent: Node | None = None
    short_name: bytes = b""
    long_name: bool = False
    first_cluster: int = 0
    clusters: int = 0

    @property
    def is_dir(self) -> bool:
        return self.payload is None

    @property
    def path(self) -> str:
        parts = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    def lfn_entries(self) -> int:
        if not self.long_name:
            return 0
        return ceil_div(len(self.name.encode("utf-16-le")) // 2, LFN_CHARS)


def _check_name(name: str, path: str) -> None:
    if name in ("", ".", ".."):
        raise FormatError(f"path {path!r} has an empty, '.' or '..' component")
    bad = sorted({ch for ch in name if ch in LONG_NAME_FORBIDDEN or ord(ch) < 0x20})
    if bad:
        raise FormatError(f"path {path!r}: FAT names cannot contain {''.join(bad)!r}")
    if name[-1] in ". ":
        # Windows and Linux strip these, so the name would not read back as written.
        raise FormatError(f"path {path!r}: a FAT name cannot end in a dot or a space")
    if len(name.encode("utf-16-le")) // 2 > MAX_LFN_UNITS:
        raise FormatError(f"path {path!r}: a FAT name is at most {MAX_LFN_UNITS} characters")


def exact_short_name(name: str) -> bytes | None:
    """The 11-byte short name for a name that is already a valid upper-case 8.3 name."""
    base, dot, extension = name.partition(".")
    if not 1 <= len(base) <= 8 or len(extension) > 3 or (dot and not extension):
        return None
    if any(ch not in SHORT_NAME_CHARS for ch in base + extension):
        return None
    return (base.ljust(8) + extension.ljust(3)).encode("ascii")


def _short_basis(name: str) -> tuple[str, str]:
    """Base and extension a generated short name starts from, after Windows's rules."""
    upper = name.upper().replace(" ", "").lstrip(".")
    base, dot, extension = upper.rpartition(".")
    if not dot:
        base, extension = upper, ""

    def clean(text: str) -> str:
        return "".join(ch if ch in SHORT_NAME_CHARS else "_" for ch in text.replace(".", ""))

    return clean(base)[:8] or "_", clean(extension)[:3]


def assign_short_names(directory: Node) -> None:
    """Give each child a short name unique in the directory.

    A name that is 8.3 but for its case keeps its upper-cased self as the short name (and a
    long name for the case); any other gets NAME~N.EXT. Generated names also avoid every
    child's name read as a short name, so that a lookup by either kind of name finds one entry.
    """
    taken: set[bytes] = set()
    lossy: list[Node] = []
    for child in directory.children:
        exact = exact_short_name(child.name.upper())
        if exact is None:
            lossy.append(child)
            continue
        # Unique: names are checked unique case-insensitively when the tree is built.
        child.short_name, child.long_name = exact, child.name != child.name.upper()
        taken.add(exact)
    next_tail: dict[tuple[str, str], int] = {}
    for child in lossy:
        base, extension = _short_basis(child.name)
        number = next_tail.get((base, extension), 1)
        while True:
            tail = f"~{number}"
            encoded = ((base[: 8 - len(tail)] + tail).ljust(8) + extension.ljust(3)).encode()
            number += 1
            if encoded not in taken:
                break
        next_tail[(base, extension)] = number
        taken.add(encoded)
        child.short_name, child.long_name = encoded, True


def build_tree(files: Sequence[tuple[str, Payload]]) -> tuple[Node, list[Node]]:
    root = Node("", None)
    index: dict[tuple[int, str], Node] = {}
    leaves: list[Node] = []
    for path, payload in files:
        parts = path.strip("/").split("/")
        node = root
        for depth, part in enumerate(parts):
            _check_name(part, path)
            last = depth == len(parts) - 1
            key = (id(node), part.upper())
            existing = index.get(key)
            if existing is not None:
                if last or not existing.is_dir:
                    raise FormatError(f"path {path!r} names a file or directory twice")
                node = existing
                continue
            if last:
                size = payload.exact_size
                if size is None:
                    raise HlimageError(
                        "the size must be known before a FAT volume is written", where=payload.label
                    )
                if size > MAX_FILE_SIZE:
                    raise FormatError(
                        f"{path!r} is {size} bytes: a FAT file is at most 4 GiB - 1",
                        where=payload.label,
                    )
                child = Node(part, payload, size=size, parent=node)
                leaves.append(child)
            else:
                child = Node(part, None, parent=node)
            node.children.append(child)
            index[key] = child
            node = child
    return root, leaves


def directories(root: Node) -> list[Node]:
    """Every directory, breadth first: the order their clusters are allocated in."""
    result = [root]
    for directory in result:
        result.extend(child for child in directory.children if child.is_dir)
    return result


def entry_count(directory: Node, label: bytes | None) -> int:
    count = sum(1 + child.lfn_entries() for child in directory.children)
    if directory.parent is not None:
        count += 2  # "." and ".."
    elif label is not None:
        count += 1
    return count
