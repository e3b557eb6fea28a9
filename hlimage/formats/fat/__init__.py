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

The package keeps the structures apart from their users, as pyelftools does: structs (the
on-disk layouts), sizing (geometry), names (the tree, 8.3 and long names), planner, writer and
reader. What the rest of hlimage uses is here.
"""

from hlimage.formats.fat.names import Timestamp, fat_timestamp
from hlimage.formats.fat.planner import Plan, default_headroom, plan
from hlimage.formats.fat.reader import (
    FatEntry,
    VolumeInfo,
    list_files,
    read_entry,
    read_file,
    read_info,
)
from hlimage.formats.fat.sizing import Geometry, candidates, geometry
from hlimage.formats.fat.structs import (
    FAT16_MAX_CLUSTERS,
    FAT16_MIN_CLUSTERS,
    FAT16_ROOT_ENTRIES,
    FAT32_MAX_CLUSTERS,
    FAT32_MIN_CLUSTERS,
    SECTOR,
)
from hlimage.formats.fat.writer import WrittenFile, set_volume_id, write

__all__ = [
    "FAT16_MAX_CLUSTERS",
    "FAT16_MIN_CLUSTERS",
    "FAT16_ROOT_ENTRIES",
    "FAT32_MAX_CLUSTERS",
    "FAT32_MIN_CLUSTERS",
    "SECTOR",
    "FatEntry",
    "Geometry",
    "Plan",
    "Timestamp",
    "VolumeInfo",
    "WrittenFile",
    "candidates",
    "default_headroom",
    "fat_timestamp",
    "geometry",
    "list_files",
    "plan",
    "read_entry",
    "read_file",
    "read_info",
    "set_volume_id",
    "write",
]
