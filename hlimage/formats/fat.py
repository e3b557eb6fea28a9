"""FAT16 and FAT32 volumes: plan one around a set of files, write it in place, read one back.

The writer never needs a loop device or root: every structure is computed up front (the tree,
the short names, where each file's clusters go), so the volume is written front to back in one
pass, file data streamed straight from its payload into its clusters. Each file and directory
gets one contiguous run of clusters, which keeps the FAT a list of runs rather than an array.
Only the FAT is held in memory, and only a slice of it at a time.

Geometry follows Microsoft's FAT specification (fatgen103): the FAT type is a function of the
cluster count alone, so the count is kept inside the type's range and the sectors-per-cluster
tables are fatgen's. FAT32 is used wherever the volume is large enough for it; FAT16 only below
that (a few tens of MiB), where a FAT32 volume would have too few clusters to be one.

The reader is for `hlimage inspect`: it trusts nothing in the volume, bounds every loop by the
cluster count and raises FormatError on anything it cannot follow.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import BinaryIO, NamedTuple

import construct as c

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import align_up
from hlimage.formats.payload import CHUNK, Chunk, Payload, copy_to

SECTOR = 512
MIB = 1 << 20
NUM_FATS = 2
MEDIA_FIXED = 0xF8
DIR_ENTRY_SIZE = 32

# fatgen103: fewer than 4085 clusters is FAT12, fewer than 65525 FAT16, anything more FAT32.
FAT16_MIN_CLUSTERS = 4085
FAT32_MIN_CLUSTERS = 65525
FAT16_MAX_CLUSTERS = FAT32_MIN_CLUSTERS - 1
# Cluster numbers from 0x0FFFFFF7 up are the bad and end-of-chain markers.
FAT32_MAX_CLUSTERS = 0x0FFFFFF5
MAX_TOTAL_SECTORS = 0xFFFFFFFF
MAX_FILE_SIZE = 0xFFFFFFFF
# 65536 entries (2 MiB) is the most any FAT driver reads of one directory.
MAX_DIR_ENTRIES = 65536
FAT16_ROOT_ENTRIES = 512
FAT16_MAX_ROOT_ENTRIES = 0xFFF0
FAT32_RESERVED_SECTORS = 32
FAT32_FSINFO_SECTOR = 1
FAT32_BACKUP_BOOT_SECTOR = 6

# fatgen103's DskTableFAT16 and DskTableFAT32: (volumes up to this many sectors, sectors per
# cluster); 0 means the type cannot have a valid cluster count at that size.
FAT16_CLUSTER_TABLE = (
    (8400, 0),
    (32680, 2),
    (262144, 4),
    (524288, 8),
    (1048576, 16),
    (2097152, 32),
    (4194304, 64),
    (MAX_TOTAL_SECTORS, 0),
)
FAT32_CLUSTER_TABLE = (
    (66600, 0),
    (532480, 1),
    (16777216, 8),
    (33554432, 16),
    (67108864, 32),
    (MAX_TOTAL_SECTORS, 64),
)

ATTR_READ_ONLY = 0x01
ATTR_HIDDEN = 0x02
ATTR_SYSTEM = 0x04
ATTR_VOLUME_ID = 0x08
ATTR_DIRECTORY = 0x10
ATTR_ARCHIVE = 0x20
ATTR_LONG_NAME = ATTR_READ_ONLY | ATTR_HIDDEN | ATTR_SYSTEM | ATTR_VOLUME_ID
ATTR_LONG_NAME_MASK = ATTR_LONG_NAME | ATTR_DIRECTORY | ATTR_ARCHIVE
LAST_LONG_ENTRY = 0x40
LFN_CHARS = 13
MAX_LFN_UNITS = 255
# Windows's lower-case flags in DIR_NTRes: a short name shown in lower case needs no long name.
NTRES_LOWER_BASE = 0x08
NTRES_LOWER_EXT = 0x10

FAT_EPOCH = int(datetime(1980, 1, 1, tzinfo=UTC).timestamp())
FAT_LAST = int(datetime(2107, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp())

_SHORT_SPECIALS = "!#$%&'()-@^_`{}~"
SHORT_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + _SHORT_SPECIALS)
LONG_NAME_FORBIDDEN = frozenset('"*/:<>?\\|')
NO_LABEL = b"NO NAME    "

# int 18h: a BIOS that somehow boots this volume moves on to its next boot device.
BOOT_CODE_STUB = b"\xcd\x18\xeb\xfe"

_BPB = (
    "jump" / c.Bytes(3),
    "oem_name" / c.Bytes(8),
    "bytes_per_sector" / c.Int16ul,
    "sectors_per_cluster" / c.Int8ul,
    "reserved_sectors" / c.Int16ul,
    "num_fats" / c.Int8ul,
    "root_entries" / c.Int16ul,
    "total_sectors_16" / c.Int16ul,
    "media" / c.Int8ul,
    "fat_size_16" / c.Int16ul,
    "sectors_per_track" / c.Int16ul,
    "num_heads" / c.Int16ul,
    "hidden_sectors" / c.Int32ul,
    "total_sectors_32" / c.Int32ul,
)
_EXTENDED_BPB = (
    "drive_number" / c.Int8ul,
    "reserved1" / c.Int8ul,
    "boot_signature" / c.Int8ul,
    "volume_id" / c.Int32ul,
    "volume_label" / c.Bytes(11),
    "fs_type" / c.Bytes(8),
)

Bpb = c.Struct(*_BPB)
"""The fields every FAT boot sector shares: what a reader parses before it knows the type."""

ExtendedBpb = c.Struct(*_EXTENDED_BPB)

Fat32Bpb = c.Struct(
    "fat_size_32" / c.Int32ul,
    "ext_flags" / c.Int16ul,
    "fs_version" / c.Int16ul,
    "root_cluster" / c.Int32ul,
    "fsinfo_sector" / c.Int16ul,
    "backup_boot_sector" / c.Int16ul,
    "reserved" / c.Bytes(12),
    *_EXTENDED_BPB,
)

BootSector16 = c.Struct(
    *_BPB,
    *_EXTENDED_BPB,
    "boot_code" / c.Bytes(448),
    "signature" / c.Const(b"\x55\xaa"),
)

BootSector32 = c.Struct(
    *_BPB,
    "fat32" / Fat32Bpb,
    "boot_code" / c.Bytes(420),
    "signature" / c.Const(b"\x55\xaa"),
)

FsInfo = c.Struct(
    "lead_signature" / c.Const(0x41615252, c.Int32ul),
    c.Padding(480),
    "struct_signature" / c.Const(0x61417272, c.Int32ul),
    "free_count" / c.Int32ul,
    "next_free" / c.Int32ul,
    c.Padding(12),
    "trail_signature" / c.Const(0xAA550000, c.Int32ul),
)

DirEntry = c.Struct(
    "name" / c.Bytes(11),
    "attributes" / c.Int8ul,
    "nt_reserved" / c.Int8ul,
    "create_time_tenth" / c.Int8ul,
    "create_time" / c.Int16ul,
    "create_date" / c.Int16ul,
    "access_date" / c.Int16ul,
    "cluster_high" / c.Int16ul,
    "write_time" / c.Int16ul,
    "write_date" / c.Int16ul,
    "cluster_low" / c.Int16ul,
    "size" / c.Int32ul,
)

LfnEntry = c.Struct(
    "order" / c.Int8ul,
    "name1" / c.Bytes(10),
    "attributes" / c.Int8ul,
    "type" / c.Int8ul,
    "checksum" / c.Int8ul,
    "name2" / c.Bytes(12),
    "cluster_low" / c.Int16ul,
    "name3" / c.Bytes(4),
)

assert BootSector16.sizeof() == SECTOR
assert BootSector32.sizeof() == SECTOR
assert FsInfo.sizeof() == SECTOR
assert DirEntry.sizeof() == LfnEntry.sizeof() == DIR_ENTRY_SIZE


def _ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


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


@dataclass(frozen=True)
class Geometry:
    """Where everything in a volume is, in sectors of 512 bytes."""

    fat_type: int
    """16 or 32."""
    total_sectors: int
    sectors_per_cluster: int
    reserved_sectors: int
    fat_sectors: int
    """Of one FAT; there are NUM_FATS."""
    root_entries: int
    """The fixed FAT16 root directory's entries; 0 on FAT32, where the root is a cluster chain."""
    cluster_count: int

    @property
    def size(self) -> int:
        return self.total_sectors * SECTOR

    @property
    def cluster_size(self) -> int:
        return self.sectors_per_cluster * SECTOR

    @property
    def fat_entry_size(self) -> int:
        return 4 if self.fat_type == 32 else 2

    @property
    def root_sectors(self) -> int:
        return _ceil_div(self.root_entries * DIR_ENTRY_SIZE, SECTOR)

    def fat_offset(self, index: int) -> int:
        return (self.reserved_sectors + index * self.fat_sectors) * SECTOR

    @property
    def root_offset(self) -> int:
        return self.fat_offset(NUM_FATS)

    @property
    def data_offset(self) -> int:
        return self.root_offset + self.root_sectors * SECTOR

    def cluster_offset(self, cluster: int) -> int:
        return self.data_offset + (cluster - 2) * self.cluster_size


def geometry(
    total_sectors: int, fat_type: int, sectors_per_cluster: int, root_entries: int = 0
) -> Geometry | None:
    """The layout of a volume of this size, type and cluster size; None where it is invalid.

    The FAT is the smallest that covers every cluster (fatgen's formula only approximates it).
    On FAT32 the reserved area is grown so that clusters start cluster-aligned.
    """
    if not 0 < total_sectors <= MAX_TOTAL_SECTORS or sectors_per_cluster < 1:
        return None
    fat32 = fat_type == 32
    entry_size = 4 if fat32 else 2
    root_sectors = 0 if fat32 else _ceil_div(root_entries * DIR_ENTRY_SIZE, SECTOR)
    base_reserved = FAT32_RESERVED_SECTORS if fat32 else 1

    def reserved_for(fat_sectors: int) -> int:
        if not fat32:
            return base_reserved
        metadata = align_up(base_reserved + NUM_FATS * fat_sectors, sectors_per_cluster)
        return metadata - NUM_FATS * fat_sectors

    def clusters_for(fat_sectors: int) -> int:
        metadata = reserved_for(fat_sectors) + NUM_FATS * fat_sectors + root_sectors
        return max(total_sectors - metadata, 0) // sectors_per_cluster

    def covers(fat_sectors: int) -> bool:
        needed = _ceil_div((clusters_for(fat_sectors) + 2) * entry_size, SECTOR)
        return needed <= fat_sectors

    # More FAT leaves fewer clusters to cover, so `covers` flips once from False to True.
    low, high = 1, _ceil_div((total_sectors // sectors_per_cluster + 2) * entry_size, SECTOR)
    while low < high:
        middle = (low + high) // 2
        if covers(middle):
            high = middle
        else:
            low = middle + 1
    count = clusters_for(low)
    if fat32 and not FAT32_MIN_CLUSTERS <= count <= FAT32_MAX_CLUSTERS:
        return None
    if not fat32 and not FAT16_MIN_CLUSTERS <= count <= FAT16_MAX_CLUSTERS:
        return None
    return Geometry(
        fat_type=fat_type,
        total_sectors=total_sectors,
        sectors_per_cluster=sectors_per_cluster,
        reserved_sectors=reserved_for(low),
        fat_sectors=low,
        root_entries=0 if fat32 else root_entries,
        cluster_count=count,
    )


# Where fatgen's tables change the type or cluster size: the ranges `_Needs.smallest` searches.
SIZE_STEPS = tuple(
    sorted({limit for table in (FAT16_CLUSTER_TABLE, FAT32_CLUSTER_TABLE) for limit, _ in table})
)


def _table_lookup(table: tuple[tuple[int, int], ...], total_sectors: int) -> int:
    for limit, sectors_per_cluster in table:
        if total_sectors <= limit:
            return sectors_per_cluster
    return 0


def _candidates(total_sectors: int) -> list[tuple[int, int]]:
    """(FAT type, sectors per cluster) to try for a size: fatgen's choice, then smaller clusters.

    FAT32 where its table allows, FAT16 only below. Smaller clusters are a fallback for a size
    given by the caller, where fatgen's cluster size might waste too much on small files.
    """
    fat32 = _table_lookup(FAT32_CLUSTER_TABLE, total_sectors)
    if fat32:
        chosen = (32, fat32)
    else:
        fat16 = _table_lookup(FAT16_CLUSTER_TABLE, total_sectors)
        if not fat16:
            return []
        chosen = (16, fat16)
    fat_type, sectors_per_cluster = chosen
    result = []
    while sectors_per_cluster >= 1:
        result.append((fat_type, sectors_per_cluster))
        sectors_per_cluster //= 2
    return result


# The tree -----------------------------------------------------------------------------------


@dataclass(eq=False)
class _Node:
    name: str
    payload: Payload | None
    """None for a directory."""
    size: int = 0
    children: list[_Node] = field(default_factory=list)
    parent: _Node | None = None
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
        node: _Node | None = self
        while node is not None and node.parent is not None:
            parts.append(node.name)
            node = node.parent
        return "/".join(reversed(parts))

    def lfn_entries(self) -> int:
        if not self.long_name:
            return 0
        return _ceil_div(len(self.name.encode("utf-16-le")) // 2, LFN_CHARS)


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


def _assign_short_names(directory: _Node) -> None:
    """Give each child a short name unique in the directory.

    A name that is 8.3 but for its case keeps its upper-cased self as the short name (and a
    long name for the case); any other gets NAME~N.EXT. Generated names also avoid every
    child's name read as a short name, so that a lookup by either kind of name finds one entry.
    """
    taken: set[bytes] = set()
    lossy: list[_Node] = []
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


def _build_tree(files: Sequence[tuple[str, Payload]]) -> tuple[_Node, list[_Node]]:
    root = _Node("", None)
    index: dict[tuple[int, str], _Node] = {}
    leaves: list[_Node] = []
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
                child = _Node(part, payload, size=size, parent=node)
                leaves.append(child)
            else:
                child = _Node(part, None, parent=node)
            node.children.append(child)
            index[key] = child
            node = child
    return root, leaves


def _directories(root: _Node) -> list[_Node]:
    """Every directory, breadth first: the order their clusters are allocated in."""
    result = [root]
    for directory in result:
        result.extend(child for child in directory.children if child.is_dir)
    return result


def _entry_count(directory: _Node, label: bytes | None) -> int:
    count = sum(1 + child.lfn_entries() for child in directory.children)
    if directory.parent is not None:
        count += 2  # "." and ".."
    elif label is not None:
        count += 1
    return count


# Planning ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    """A volume fully laid out: geometry, names and clusters, ready for `write`."""

    geometry: Geometry
    label: bytes | None
    root: _Node
    files: tuple[_Node, ...]
    directories: tuple[_Node, ...]

    @property
    def size(self) -> int:
        return self.geometry.size

    @property
    def fat_type(self) -> int:
        return self.geometry.fat_type

    @property
    def cluster_size(self) -> int:
        return self.geometry.cluster_size

    @property
    def used_clusters(self) -> int:
        return sum(node.clusters for node in (*self.directories, *self.files))

    @property
    def payloads(self) -> tuple[tuple[str, Payload], ...]:
        """(path, payload) of every file, in the order they are written."""
        return tuple((node.path, node.payload) for node in self.files if node.payload is not None)


def _check_label(label: str) -> bytes | None:
    if not label:
        return None
    upper = label.upper()
    if len(upper) > 11 or any(ch not in SHORT_NAME_CHARS and ch != " " for ch in upper):
        raise FormatError(
            f"volume label {label!r}: at most 11 letters, digits, spaces or {_SHORT_SPECIALS}"
        )
    if upper.strip() != upper.rstrip() or not upper.strip():
        raise FormatError(f"volume label {label!r} cannot start with a space")
    return upper.ljust(11).encode("ascii")


class _Needs:
    """What a tree needs of a volume, for any cluster size."""

    def __init__(self, root: _Node, files: Sequence[_Node], label: bytes | None) -> None:
        self.directories = _directories(root)
        self.files = files
        self.entries = {id(d): _entry_count(d, label) for d in self.directories}
        for directory in self.directories:
            if self.entries[id(directory)] > MAX_DIR_ENTRIES:
                raise FormatError(
                    f"directory {directory.path or '/'!r} would need more than "
                    f"{MAX_DIR_ENTRIES} entries"
                )
        self.root_entries = max(FAT16_ROOT_ENTRIES, align_up(self.entries[id(root)], 16))
        # FAT16's root directory has a fixed size, counted in 16 bits.
        self.fat16_root_fits = self.root_entries <= FAT16_MAX_ROOT_ENTRIES
        self.content = sum(node.size for node in files)

    def clusters(self, cluster_size: int, fat32: bool) -> int:
        total = sum(_ceil_div(node.size, cluster_size) for node in self.files)
        for directory in self.directories:
            if directory.parent is None and not fat32:
                continue
            total += max(1, _ceil_div(self.entries[id(directory)] * DIR_ENTRY_SIZE, cluster_size))
        return total

    def geometry_for(self, total_sectors: int, spare: int = 0) -> Geometry | None:
        """A valid geometry of this size that holds the tree and `spare` more bytes."""
        for fat_type, sectors_per_cluster in _candidates(total_sectors):
            if fat_type == 16 and not self.fat16_root_fits:
                continue
            layout = geometry(total_sectors, fat_type, sectors_per_cluster, self.root_entries)
            if layout is None:
                continue
            wanted = self.clusters(layout.cluster_size, fat_type == 32)
            wanted += _ceil_div(spare, layout.cluster_size)
            if wanted <= layout.cluster_count:
                return layout
        return None

    def smallest(self, spare: int = 0) -> Geometry:
        """The smallest volume that holds the tree and `spare` more bytes.

        Between two consecutive sizes in fatgen's tables the type and cluster size are fixed,
        and there more sectors never hold less: a binary search in each such range, smallest
        sizes first, finds the least size.
        """
        low = 1
        for limit in SIZE_STEPS:
            if self.geometry_for(limit, spare) is not None:
                high = limit
                while low < high:
                    middle = (low + high) // 2
                    if self.geometry_for(middle, spare) is not None:
                        high = middle
                    else:
                        low = middle + 1
                found = self.geometry_for(low, spare)
                if found is not None:
                    return found
            low = limit + 1
        raise FormatError(
            f"{self.content} bytes of files do not fit in any FAT volume (at most 2 TiB)"
        )


def default_headroom(content: int) -> int:
    """Free space an automatically sized volume gets: 8 MiB and a sixteenth of the content."""
    return 8 * MIB + content // 16


def plan(
    files: Sequence[tuple[str, Payload]],
    *,
    size: int | None = None,
    label: str = "",
    headroom: int | None = None,
) -> Plan:
    """Lay out a volume holding `files` ((path in the volume, payload) pairs, in this order).

    Without `size` the volume is as small as the files, directories and FATs allow, plus
    `headroom` bytes (default_headroom), rounded up to a MiB. With `size` (bytes, a multiple
    of 512) it is that size, or a FormatError says the least size that would do.
    """
    label_bytes = _check_label(label)
    root, leaves = _build_tree(files)
    for directory in _directories(root):
        _assign_short_names(directory)
    needs = _Needs(root, leaves, label_bytes)
    if size is not None:
        if size <= 0 or size % SECTOR:
            raise FormatError(f"a FAT volume's size must be a positive multiple of {SECTOR}")
        if size > MAX_TOTAL_SECTORS * SECTOR:
            raise FormatError(f"a FAT volume of {size} bytes: FAT volumes end at 2 TiB")
        found = needs.geometry_for(size // SECTOR)
        if found is None:
            least = needs.smallest().size
            if least > size:
                raise FormatError(
                    f"a FAT volume of {size} bytes is too small for these files: "
                    f"it needs at least {least} bytes ({_ceil_div(least, MIB)} MiB)"
                )
            raise FormatError(
                f"no valid FAT volume of exactly {size} bytes holds these files "
                f"(fatgen's cluster size for that size wastes too much on small files); "
                f"{least} bytes would do"
            )
        layout = found
    else:
        spare = default_headroom(needs.content) if headroom is None else headroom
        smallest = needs.smallest(spare)
        rounded = align_up(smallest.total_sectors, MIB // SECTOR)
        # Rounding up can cross into fatgen's next cluster size; keep the exact size then.
        layout = needs.geometry_for(rounded, spare) or smallest
    _allocate(layout, needs)
    return Plan(
        geometry=layout,
        label=label_bytes,
        root=root,
        files=tuple(leaves),
        directories=tuple(
            d for d in needs.directories if d.parent is not None or layout.fat_type == 32
        ),
    )


def _allocate(layout: Geometry, needs: _Needs) -> None:
    """Directories first (so they sit together at the front), then files, in order."""
    cluster = 2
    fat32 = layout.fat_type == 32
    for directory in needs.directories:
        if directory.parent is None and not fat32:
            directory.first_cluster, directory.clusters = 0, 0
            continue
        directory.clusters = max(
            1, _ceil_div(needs.entries[id(directory)] * DIR_ENTRY_SIZE, layout.cluster_size)
        )
        directory.first_cluster = cluster
        cluster += directory.clusters
    for node in needs.files:
        node.clusters = _ceil_div(node.size, layout.cluster_size)
        node.first_cluster = cluster if node.clusters else 0
        cluster += node.clusters


# Writing -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class WrittenFile:
    path: str
    size: int
    first_cluster: int


class _Checked(Payload):
    """A payload held to its announced size: a longer one would overwrite the next file."""

    def __init__(self, payload: Payload, size: int) -> None:
        self.payload = payload
        self.size = size
        self.label = payload.label

    def size_bound(self) -> int:
        return self.size

    def chunks(self) -> Iterator[bytes]:
        return iter(bytes(view) for view in self.views())

    def views(self) -> Iterator[Chunk]:
        done = 0
        for chunk in self.payload.views():
            done += len(chunk)
            if done > self.size:
                raise HlimageError(
                    f"grew past the {self.size} bytes announced while it was written",
                    where=self.label,
                )
            yield chunk
        if done != self.size:
            raise HlimageError(
                f"gave {done} bytes where {self.size} were announced", where=self.label
            )


def _boot_sector(layout: Geometry, volume_id: int, label: bytes | None, hidden: int) -> bytes:
    fat32 = layout.fat_type == 32
    small = not fat32 and layout.total_sectors < 0x10000
    common = {
        "jump": b"\xeb\x58\x90" if fat32 else b"\xeb\x3c\x90",
        # fatgen: "MSWIN4.1" is the name the fewest drivers second-guess.
        "oem_name": b"MSWIN4.1",
        "bytes_per_sector": SECTOR,
        "sectors_per_cluster": layout.sectors_per_cluster,
        "reserved_sectors": layout.reserved_sectors,
        "num_fats": NUM_FATS,
        "root_entries": layout.root_entries,
        "total_sectors_16": layout.total_sectors if small else 0,
        "media": MEDIA_FIXED,
        "fat_size_16": 0 if fat32 else layout.fat_sectors,
        # USB sticks' usual fake geometry; with 1 MiB-multiple sizes mtools finds whole tracks.
        "sectors_per_track": 32,
        "num_heads": 64,
        "hidden_sectors": hidden,
        "total_sectors_32": 0 if small else layout.total_sectors,
    }
    extended = {
        "drive_number": 0x80,
        "reserved1": 0,
        "boot_signature": 0x29,
        "volume_id": volume_id,
        "volume_label": label or NO_LABEL,
        "fs_type": b"FAT32   " if fat32 else b"FAT16   ",
    }
    if fat32:
        built: bytes = BootSector32.build(
            {
                **common,
                "fat32": {
                    "fat_size_32": layout.fat_sectors,
                    "ext_flags": 0,
                    "fs_version": 0,
                    "root_cluster": 2,
                    "fsinfo_sector": FAT32_FSINFO_SECTOR,
                    "backup_boot_sector": FAT32_BACKUP_BOOT_SECTOR,
                    "reserved": bytes(12),
                    **extended,
                },
                "boot_code": BOOT_CODE_STUB.ljust(420, b"\0"),
            }
        )
    else:
        built = BootSector16.build(
            {**common, **extended, "boot_code": BOOT_CODE_STUB.ljust(448, b"\0")}
        )
    return built


def _fat_chunks(layout: Geometry, runs: Sequence[tuple[int, int]]) -> Iterator[bytes]:
    """One FAT, a slice at a time: each (first cluster, count) run chained and terminated."""
    # Imported here: numpy takes ~40 ms to import, which reading a volume need not pay.
    import numpy as np

    fat32 = layout.fat_type == 32
    dtype = np.dtype("<u4" if fat32 else "<u2")
    end_of_chain = 0x0FFFFFFF if fat32 else 0xFFFF
    entries = layout.fat_sectors * SECTOR // layout.fat_entry_size
    step = CHUNK // layout.fat_entry_size
    for base in range(0, entries, step):
        limit = min(base + step, entries)
        table = np.zeros(limit - base, dtype=dtype)
        if base == 0:
            table[0] = (0x0FFFFF00 if fat32 else 0xFF00) | MEDIA_FIXED
            # Entry 1 all ones: end of chain, and the "clean, no errors" flags set.
            table[1] = end_of_chain
        for first, count in runs:
            start, stop = max(first, base), min(first + count, limit)
            if start >= stop:
                continue
            table[start - base : stop - base] = np.arange(start + 1, stop + 1, dtype=dtype)
            if first + count == stop:
                table[stop - 1 - base] = end_of_chain
        yield table.tobytes()


def _dir_entry(
    name: bytes, attributes: int, cluster: int, size: int, stamp: Timestamp, nt: int = 0
) -> bytes:
    built: bytes = DirEntry.build(
        {
            "name": name,
            "attributes": attributes,
            "nt_reserved": nt,
            "create_time_tenth": stamp.tenths,
            "create_time": stamp.time,
            "create_date": stamp.date,
            "access_date": stamp.date,
            "cluster_high": cluster >> 16,
            "write_time": stamp.time,
            "write_date": stamp.date,
            "cluster_low": cluster & 0xFFFF,
            "size": size,
        }
    )
    return built


def _lfn_entries(name: str, short_name: bytes) -> bytes:
    units = name.encode("utf-16-le")
    count = _ceil_div(len(units) // 2, LFN_CHARS)
    # Terminated by one 0x0000 unless it fills the last entry exactly, then padded with 0xFFFF.
    padded = units + (b"\0\0" if len(units) // 2 % LFN_CHARS else b"")
    padded = padded.ljust(count * LFN_CHARS * 2, b"\xff")
    checksum = short_name_checksum(short_name)
    out = bytearray()
    # Stored last piece first; the first physical entry carries the "last" flag.
    for order in range(count, 0, -1):
        piece = padded[(order - 1) * 26 : order * 26]
        out += LfnEntry.build(
            {
                "order": order | (LAST_LONG_ENTRY if order == count else 0),
                "name1": piece[0:10],
                "attributes": ATTR_LONG_NAME,
                "type": 0,
                "checksum": checksum,
                "name2": piece[10:22],
                "cluster_low": 0,
                "name3": piece[22:26],
            }
        )
    return bytes(out)


def _directory_bytes(directory: _Node, label: bytes | None, stamp: Timestamp) -> bytes:
    out = bytearray()
    if directory.parent is None:
        if label is not None:
            out += _dir_entry(label, ATTR_VOLUME_ID, 0, 0, stamp)
    else:
        out += _dir_entry(b".          ", ATTR_DIRECTORY, directory.first_cluster, 0, stamp)
        # ".." names the root as cluster 0, even on FAT32 where the root has a cluster.
        parent = directory.parent
        parent_cluster = 0 if parent.parent is None else parent.first_cluster
        out += _dir_entry(b"..         ", ATTR_DIRECTORY, parent_cluster, 0, stamp)
    for child in directory.children:
        if child.long_name:
            out += _lfn_entries(child.name, child.short_name)
        attributes = ATTR_DIRECTORY if child.is_dir else ATTR_ARCHIVE
        out += _dir_entry(child.short_name, attributes, child.first_cluster, child.size, stamp)
    return bytes(out)


def _write_padded(out: BinaryIO, data: bytes, length: int) -> None:
    out.write(data)
    if length > len(data):
        out.write(bytes(length - len(data)))


def write(
    out: BinaryIO, offset: int, volume: Plan, *, timestamp: int = 0, volume_id: int = 0
) -> tuple[WrittenFile, ...]:
    """Write the planned volume at `offset` in `out`; return where each file went.

    Everything but free clusters is written, front to back: free space keeps what `out` had
    there, which is zeros in a new (or sparse) file. `timestamp` (unix time, UTC) dates every
    entry; `volume_id` is the serial number operating systems show.
    """
    layout = volume.geometry
    fat32 = layout.fat_type == 32
    stamp = fat_timestamp(timestamp)
    boot = _boot_sector(layout, volume_id & 0xFFFFFFFF, volume.label, offset // SECTOR)

    reserved = bytearray(layout.reserved_sectors * SECTOR)
    reserved[:SECTOR] = boot
    if fat32:
        used = volume.used_clusters
        free = layout.cluster_count - used
        fsinfo = FsInfo.build({"free_count": free, "next_free": used + 2 if free else 0xFFFFFFFF})
        reserved[FAT32_FSINFO_SECTOR * SECTOR : (FAT32_FSINFO_SECTOR + 1) * SECTOR] = fsinfo
        backup = FAT32_BACKUP_BOOT_SECTOR * SECTOR
        reserved[backup : backup + 2 * SECTOR] = reserved[: 2 * SECTOR]
    out.seek(offset)
    out.write(reserved)

    runs = [
        (node.first_cluster, node.clusters)
        for node in (*volume.directories, *volume.files)
        if node.clusters
    ]
    for _ in range(NUM_FATS):
        for chunk in _fat_chunks(layout, runs):
            out.write(chunk)

    if not fat32:
        root = _directory_bytes(volume.root, volume.label, stamp)
        _write_padded(out, root, layout.root_sectors * SECTOR)
    for directory in volume.directories:
        out.seek(offset + layout.cluster_offset(directory.first_cluster))
        data = _directory_bytes(directory, volume.label, stamp)
        _write_padded(out, data, directory.clusters * layout.cluster_size)

    written = []
    for node in volume.files:
        assert node.payload is not None
        if node.clusters:
            out.seek(offset + layout.cluster_offset(node.first_cluster))
        # Held to the size its directory entry announced: a longer one would overwrite the
        # next file.
        size = copy_to(_Checked(node.payload, node.size), out)
        _write_padded(out, b"", node.clusters * layout.cluster_size - size)
        written.append(WrittenFile(node.path, size, node.first_cluster))

    end = offset + layout.size
    if out.seek(0, 2) < end:
        out.seek(end - 1)
        out.write(b"\0")
    return tuple(written)


def set_volume_id(out: BinaryIO, offset: int, volume: Plan, volume_id: int) -> None:
    """Put the volume id into the boot sector of the volume written at `offset` (and FAT32's
    backup copy, which must match): for an id derived from what was written."""
    structure = BootSector32 if volume.fat_type == 32 else BootSector16
    sectors = (0, FAT32_BACKUP_BOOT_SECTOR) if volume.fat_type == 32 else (0,)
    for sector in sectors:
        position = offset + sector * SECTOR
        out.seek(position)
        boot = structure.parse(out.read(SECTOR))
        if volume.fat_type == 32:
            boot.fat32.volume_id = volume_id & 0xFFFFFFFF
        else:
            boot.volume_id = volume_id & 0xFFFFFFFF
        out.seek(position)
        out.write(structure.build(boot))


# Reading -------------------------------------------------------------------------------------


class FatEntry(NamedTuple):
    path: str
    size: int
    first_cluster: int


@dataclass(frozen=True)
class VolumeInfo:
    fat_type: int
    """12, 16 or 32, from the cluster count as fatgen defines it."""
    bytes_per_sector: int
    cluster_size: int
    cluster_count: int
    total_sectors: int
    volume_id: int
    label: str

    @property
    def size(self) -> int:
        return self.total_sectors * self.bytes_per_sector


# The reader caches this many bytes of FAT at a time, and at most this many such blocks.
FAT_BLOCK = 1 << 16
FAT_CACHE_BLOCKS = 64


class _Runs:
    """A set of integers kept as sorted, disjoint [start, end) runs."""

    def __init__(self) -> None:
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, value: int) -> bool:
        """Add `value`; False if it was already there."""
        index = bisect_right(self.starts, value) - 1
        if index >= 0 and value < self.ends[index]:
            return False
        if index >= 0 and self.ends[index] == value:
            self.ends[index] = value + 1
            following = index + 1
            if following < len(self.starts) and self.starts[following] == value + 1:
                self.ends[index] = self.ends.pop(following)
                del self.starts[following]
        elif index + 1 < len(self.starts) and self.starts[index + 1] == value + 1:
            self.starts[index + 1] = value
        else:
            self.starts.insert(index + 1, value)
            self.ends.insert(index + 1, value + 1)
        return True


class _Reader:
    """A FAT volume in a stream, read on demand; every structure checked before it is used."""

    def __init__(self, stream: BinaryIO, offset: int) -> None:
        self.stream = stream
        self.offset = offset
        self.end = stream.seek(0, 2)
        boot = self._read(0, SECTOR, "boot sector")
        if boot[510:512] != b"\x55\xaa":
            raise FormatError("no FAT boot sector: the 0x55AA signature is missing")
        bpb = Bpb.parse(boot)
        sector = int(bpb.bytes_per_sector)
        if sector not in (512, 1024, 2048, 4096):
            raise FormatError(f"FAT boot sector: {sector} bytes per sector is not valid")
        per_cluster = int(bpb.sectors_per_cluster)
        if per_cluster == 0 or per_cluster & (per_cluster - 1):
            raise FormatError(f"FAT boot sector: {per_cluster} sectors per cluster is not valid")
        reserved = int(bpb.reserved_sectors)
        fats = int(bpb.num_fats)
        if reserved < 1 or fats < 1:
            raise FormatError("FAT boot sector: no reserved sectors or no FAT")
        fat32_fields = Fat32Bpb.parse(boot[Bpb.sizeof() :])
        fat_sectors = int(bpb.fat_size_16) or int(fat32_fields.fat_size_32)
        total = int(bpb.total_sectors_16) or int(bpb.total_sectors_32)
        root_entries = int(bpb.root_entries)
        root_sectors = _ceil_div(root_entries * DIR_ENTRY_SIZE, sector)
        metadata = reserved + fats * fat_sectors + root_sectors
        if fat_sectors == 0 or total <= metadata:
            raise FormatError("FAT boot sector: the FATs and root directory fill the volume")
        count = (total - metadata) // per_cluster
        if count < FAT16_MIN_CLUSTERS:
            fat_type, extended = 12, Bpb.sizeof()
        elif count < FAT32_MIN_CLUSTERS:
            fat_type, extended = 16, Bpb.sizeof()
        else:
            fat_type, extended = 32, Bpb.sizeof() + 28
            if int(bpb.fat_size_16) or root_entries:
                raise FormatError(
                    f"FAT boot sector: {count} clusters make FAT32, but the BPB is FAT12/16's"
                )
            count = min(count, FAT32_MAX_CLUSTERS)
        if fat_type != 32 and not root_entries:
            raise FormatError("FAT boot sector: a FAT12/16 volume without a root directory")
        if fat_sectors * sector * 8 // fat_type < count + 2:
            raise FormatError(
                f"FAT boot sector: {fat_sectors} FAT sectors cannot map {count} clusters"
            )
        ext = ExtendedBpb.parse(boot[extended:])
        self.fat_type = fat_type
        self.sector = sector
        self.cluster_size = per_cluster * sector
        self.cluster_count = count
        self.total_sectors = total
        self.fat_offset = reserved * sector
        self.fat_bytes = fat_sectors * sector
        self.root_offset = (reserved + fats * fat_sectors) * sector
        self.root_entries = root_entries
        self.data_offset = metadata * sector
        self.root_cluster = int(fat32_fields.root_cluster) if fat_type == 32 else 0
        self.end_of_chain = {12: 0xFF8, 16: 0xFFF8, 32: 0x0FFFFFF8}[fat_type]
        has_ext = int(ext.boot_signature) == 0x29
        self.volume_id = int(ext.volume_id) if has_ext else 0
        label = bytes(ext.volume_label)
        # "NO NAME" is how the boot sector says there is no label.
        self.label = label.decode("cp437").rstrip() if has_ext and label != NO_LABEL else ""
        self._cache: dict[int, bytes] = {}

    def _read(self, position: int, length: int, what: str) -> bytes:
        if length < 0 or self.offset + position + length > self.end:
            raise FormatError(f"FAT volume truncated: the {what} is past the end of the image")
        self.stream.seek(self.offset + position)
        data = self.stream.read(length)
        if len(data) != length:
            raise FormatError(f"FAT volume truncated: the {what} is past the end of the image")
        return data

    def info(self) -> VolumeInfo:
        return VolumeInfo(
            fat_type=self.fat_type,
            bytes_per_sector=self.sector,
            cluster_size=self.cluster_size,
            cluster_count=self.cluster_count,
            total_sectors=self.total_sectors,
            volume_id=self.volume_id,
            label=self.label,
        )

    def _fat_bytes(self, position: int, length: int) -> bytes:
        if position + length > self.fat_bytes:
            raise FormatError("FAT volume: a cluster number points past the FAT")
        out = b""
        while length:
            block, within = divmod(position, FAT_BLOCK)
            data = self._cache.get(block)
            if data is None:
                if len(self._cache) >= FAT_CACHE_BLOCKS:
                    self._cache.clear()
                start = block * FAT_BLOCK
                size = min(FAT_BLOCK, self.fat_bytes - start)
                data = self._read(self.fat_offset + start, size, "FAT")
                self._cache[block] = data
            piece = data[within : within + length]
            if not piece:
                raise FormatError("FAT volume: a cluster number points past the FAT")
            out += piece
            position += len(piece)
            length -= len(piece)
        return out

    def _next(self, cluster: int) -> int:
        if self.fat_type == 12:
            value = int.from_bytes(self._fat_bytes(cluster + cluster // 2, 2), "little")
            return value >> 4 if cluster & 1 else value & 0xFFF
        if self.fat_type == 16:
            return int.from_bytes(self._fat_bytes(cluster * 2, 2), "little")
        return int.from_bytes(self._fat_bytes(cluster * 4, 4), "little") & 0x0FFFFFFF

    def _check_cluster(self, cluster: int, what: str) -> None:
        if not 2 <= cluster < self.cluster_count + 2:
            raise FormatError(f"FAT volume: {what} points to cluster {cluster}, not a valid one")

    def chain(self, first: int, what: str, limit: int | None = None) -> Iterator[int]:
        """The clusters from `first` on: to the end of the chain or `limit` clusters.

        A cluster met twice means the chain loops. What was met is kept as runs of consecutive
        clusters, so a contiguous file of any length costs one run.
        """
        visited = _Runs()
        cluster = first
        for steps in range(1, self.cluster_count + 2):
            self._check_cluster(cluster, what)
            if not visited.add(cluster):
                raise FormatError(f"FAT volume: {what}'s cluster chain loops")
            yield cluster
            if limit is not None and steps >= limit:
                return
            following = self._next(cluster)
            if following >= self.end_of_chain:
                if limit is not None:
                    raise FormatError(f"FAT volume: {what}'s cluster chain is too short")
                return
            cluster = following
        raise FormatError(f"FAT volume: {what}'s cluster chain loops")

    def _cluster(self, cluster: int, what: str) -> bytes:
        return self._read(
            self.data_offset + (cluster - 2) * self.cluster_size, self.cluster_size, what
        )

    def _directory_blocks(self, first: int, what: str, seen: set[int]) -> Iterator[bytes]:
        if first == 0:
            if self.fat_type != 32:
                yield self._read(self.root_offset, self.root_entries * DIR_ENTRY_SIZE, what)
                return
            first = self.root_cluster
        limit = _ceil_div(MAX_DIR_ENTRIES * DIR_ENTRY_SIZE, self.cluster_size)
        for index, cluster in enumerate(self.chain(first, what)):
            if cluster in seen:
                raise FormatError(f"FAT volume: {what} shares clusters with another directory")
            if index >= limit:
                raise FormatError(f"FAT volume: {what} is longer than any directory can be")
            seen.add(cluster)
            yield self._cluster(cluster, what)

    def _entries(self, first: int, what: str, seen: set[int]) -> Iterator[tuple[str, c.Container]]:
        """A directory's live entries other than "." and "..", with their long names."""
        pieces: dict[int, bytes] = {}
        expected = 0
        checksum = -1
        for block in self._directory_blocks(first, what, seen):
            for start in range(0, len(block) - DIR_ENTRY_SIZE + 1, DIR_ENTRY_SIZE):
                raw = block[start : start + DIR_ENTRY_SIZE]
                if raw[0] == 0:
                    return
                if raw[0] == 0xE5:
                    pieces, expected = {}, 0
                    continue
                entry = DirEntry.parse(raw)
                if entry.attributes & ATTR_LONG_NAME_MASK == ATTR_LONG_NAME:
                    lfn = LfnEntry.parse(raw)
                    order = lfn.order & 0x1F
                    if lfn.order & LAST_LONG_ENTRY and 1 <= order <= 20:
                        pieces, expected, checksum = {}, order, lfn.checksum
                    if order != expected or lfn.checksum != checksum or not expected:
                        pieces, expected = {}, 0
                        continue
                    pieces[order] = bytes(lfn.name1 + lfn.name2 + lfn.name3)
                    expected -= 1
                    continue
                long_name = None
                name = bytes(entry.name)
                if pieces and expected == 0 and short_name_checksum(name) == checksum:
                    long_name = _decode_long(b"".join(pieces[i] for i in sorted(pieces)))
                pieces, expected = {}, 0
                if entry.attributes & ATTR_VOLUME_ID or name in (b".          ", b"..         "):
                    continue
                yield long_name or _decode_short(name, int(entry.nt_reserved)), entry

    def walk(self) -> list[FatEntry]:
        files: list[FatEntry] = []
        seen: set[int] = set()
        pending: deque[tuple[str, int]] = deque([("", 0)])
        while pending:
            prefix, first = pending.popleft()
            what = f"directory {prefix or '/'!r}"
            for name, entry in self._entries(first, what, seen):
                path = f"{prefix}/{name}" if prefix else name
                cluster = int(entry.cluster_low)
                if self.fat_type == 32:
                    cluster |= int(entry.cluster_high) << 16
                if entry.attributes & ATTR_DIRECTORY:
                    self._check_cluster(cluster, f"directory {path!r}")
                    pending.append((path, cluster))
                else:
                    files.append(FatEntry(path, int(entry.size), cluster))
        return files

    def contents(self, entry: FatEntry) -> Iterator[bytes]:
        what = f"file {entry.path!r}"
        if entry.size == 0:
            return
        clusters = _ceil_div(entry.size, self.cluster_size)
        remaining = entry.size
        run_start = run_length = 0
        for cluster in self.chain(entry.first_cluster, what, limit=clusters):
            if (
                run_length
                and cluster == run_start + run_length
                and ((run_length + 1) * self.cluster_size <= CHUNK)
            ):
                run_length += 1
                continue
            if run_length:
                data = self._run(run_start, run_length, remaining, what)
                remaining -= len(data)
                yield data
            run_start, run_length = cluster, 1
        yield self._run(run_start, run_length, remaining, what)

    def _run(self, first: int, count: int, remaining: int, what: str) -> bytes:
        length = min(count * self.cluster_size, remaining)
        return self._read(self.data_offset + (first - 2) * self.cluster_size, length, what)


def _decode_long(raw: bytes) -> str:
    units = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if b"\0\0" in units:
        units = units[: units.index(b"\0\0")]
    return b"".join(units).decode("utf-16-le", "replace")


def _decode_short(name: bytes, nt_flags: int) -> str:
    if name[0] == 0x05:
        # 0xE5 marks a free entry, so a name that starts with that byte is stored as 0x05.
        name = b"\xe5" + name[1:]
    base = name[:8].decode("cp437").rstrip(" ")
    extension = name[8:].decode("cp437").rstrip(" ")
    if nt_flags & NTRES_LOWER_BASE:
        base = base.lower()
    if nt_flags & NTRES_LOWER_EXT:
        extension = extension.lower()
    return f"{base}.{extension}" if extension else base


def read_info(stream: BinaryIO, offset: int = 0) -> VolumeInfo:
    """The boot sector of the FAT volume at `offset`, checked."""
    return _Reader(stream, offset).info()


def list_files(stream: BinaryIO, offset: int = 0) -> list[FatEntry]:
    """Every file in the FAT volume at `offset`, directories walked breadth first."""
    return _Reader(stream, offset).walk()


def read_entry(stream: BinaryIO, offset: int, entry: FatEntry) -> Iterator[bytes]:
    """The bytes of a file `list_files` listed, in pieces of at most 1 MiB."""
    return _Reader(stream, offset).contents(entry)


def read_file(stream: BinaryIO, offset: int, path: str) -> Iterator[bytes]:
    """The bytes of one file, in pieces of at most 1 MiB.

    The path is matched exactly first, then case-insensitively as FAT drivers do. The lookup
    happens at once (a missing file raises here); the data is read as it is iterated.
    """
    reader = _Reader(stream, offset)
    entries = reader.walk()
    wanted = path.strip("/")
    match = next((e for e in entries if e.path in (path, wanted)), None)
    if match is None:
        folded = wanted.casefold()
        match = next((e for e in entries if e.path.casefold() == folded), None)
    if match is None:
        raise HlimageError(f"no file {path!r} in the FAT volume")
    return reader.contents(match)
