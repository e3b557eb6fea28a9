"""Planning a volume around a set of files: its size (with headroom), geometry, and where each
file's clusters go.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hlimage.errors import FormatError
from hlimage.formats import align_up
from hlimage.formats.fat.names import Node, assign_short_names, build_tree, directories, entry_count
from hlimage.formats.fat.sizing import SIZE_STEPS, Geometry, candidates, ceil_div, geometry
from hlimage.formats.fat.structs import (
    DIR_ENTRY_SIZE,
    FAT16_MAX_ROOT_ENTRIES,
    FAT16_ROOT_ENTRIES,
    MAX_DIR_ENTRIES,
    MAX_TOTAL_SECTORS,
    MIB,
    SECTOR,
    SHORT_NAME_CHARS,
    SHORT_SPECIALS,
)
from hlimage.formats.payload import Payload


@dataclass(frozen=True)
class Plan:
    """A volume fully laid out: geometry, names and clusters, ready for `write`."""

    geometry: Geometry
    label: bytes | None
    root: Node
    files: tuple[Node, ...]
    directories: tuple[Node, ...]

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
            f"volume label {label!r}: at most 11 letters, digits, spaces or {SHORT_SPECIALS}"
        )
    if upper.strip() != upper.rstrip() or not upper.strip():
        raise FormatError(f"volume label {label!r} cannot start with a space")
    return upper.ljust(11).encode("ascii")


class _Needs:
    """What a tree needs of a volume, for any cluster size."""

    def __init__(self, root: Node, files: Sequence[Node], label: bytes | None) -> None:
        self.directories = directories(root)
        self.files = files
        self.entries = {id(d): entry_count(d, label) for d in self.directories}
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
        total = sum(ceil_div(node.size, cluster_size) for node in self.files)
        for directory in self.directories:
            if directory.parent is None and not fat32:
                continue
            total += max(1, ceil_div(self.entries[id(directory)] * DIR_ENTRY_SIZE, cluster_size))
        return total

    def geometry_for(self, total_sectors: int, spare: int = 0) -> Geometry | None:
        """A valid geometry of this size that holds the tree and `spare` more bytes."""
        for fat_type, sectors_per_cluster in candidates(total_sectors):
            if fat_type == 16 and not self.fat16_root_fits:
                continue
            layout = geometry(total_sectors, fat_type, sectors_per_cluster, self.root_entries)
            if layout is None:
                continue
            wanted = self.clusters(layout.cluster_size, fat_type == 32)
            wanted += ceil_div(spare, layout.cluster_size)
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
    root, leaves = build_tree(files)
    for directory in directories(root):
        assign_short_names(directory)
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
                    f"it needs at least {least} bytes ({ceil_div(least, MIB)} MiB)"
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
            1, ceil_div(needs.entries[id(directory)] * DIR_ENTRY_SIZE, layout.cluster_size)
        )
        directory.first_cluster = cluster
        cluster += directory.clusters
    for node in needs.files:
        node.clusters = ceil_div(node.size, layout.cluster_size)
        node.first_cluster = cluster if node.clusters else 0
        cluster += node.clusters
