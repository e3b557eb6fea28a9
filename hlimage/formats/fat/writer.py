"""Writing a planned volume front to back, file data streamed from its payload into its
clusters.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import BinaryIO

from hlimage.errors import HlimageError
from hlimage.formats.fat.names import Node, Timestamp, fat_timestamp, short_name_checksum
from hlimage.formats.fat.planner import Plan
from hlimage.formats.fat.sizing import Geometry, ceil_div
from hlimage.formats.fat.structs import (
    ATTR_ARCHIVE,
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_VOLUME_ID,
    BOOT_CODE_STUB,
    FAT32_BACKUP_BOOT_SECTOR,
    FAT32_FSINFO_SECTOR,
    LAST_LONG_ENTRY,
    LFN_CHARS,
    MEDIA_FIXED,
    NO_LABEL,
    NUM_FATS,
    SECTOR,
    BootSector16,
    BootSector32,
    DirEntry,
    FsInfo,
    LfnEntry,
)
from hlimage.formats.payload import CHUNK, Chunk, Payload, copy_to


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
    count = ceil_div(len(units) // 2, LFN_CHARS)
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


def _directory_bytes(directory: Node, label: bytes | None, stamp: Timestamp) -> bytes:
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
