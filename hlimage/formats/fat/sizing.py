"""Where everything in a FAT volume goes: the type, cluster size and region sizes of a volume
of some size, by fatgen103's rules.
"""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.formats import align_up
from hlimage.formats.fat.structs import (
    DIR_ENTRY_SIZE,
    FAT16_CLUSTER_TABLE,
    FAT16_MAX_CLUSTERS,
    FAT16_MIN_CLUSTERS,
    FAT32_CLUSTER_TABLE,
    FAT32_MAX_CLUSTERS,
    FAT32_MIN_CLUSTERS,
    FAT32_RESERVED_SECTORS,
    MAX_TOTAL_SECTORS,
    NUM_FATS,
    SECTOR,
)


def ceil_div(value: int, divisor: int) -> int:
    return -(-value // divisor)


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
        return ceil_div(self.root_entries * DIR_ENTRY_SIZE, SECTOR)

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
    root_sectors = 0 if fat32 else ceil_div(root_entries * DIR_ENTRY_SIZE, SECTOR)
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
        needed = ceil_div((clusters_for(fat_sectors) + 2) * entry_size, SECTOR)
        return needed <= fat_sectors

    # More FAT leaves fewer clusters to cover, so `covers` flips once from False to True.
    low, high = 1, ceil_div((total_sectors // sectors_per_cluster + 2) * entry_size, SECTOR)
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


def candidates(total_sectors: int) -> list[tuple[int, int]]:
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
