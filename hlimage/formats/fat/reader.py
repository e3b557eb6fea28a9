"""Reading a FAT volume back, for `hlimage inspect`: it trusts nothing in the volume, bounds
every loop by the cluster count and raises FormatError on anything it cannot follow.
"""

from __future__ import annotations

from bisect import bisect_right
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, NamedTuple

import construct as c

from hlimage.errors import FormatError, HlimageError
from hlimage.formats.fat.names import short_name_checksum
from hlimage.formats.fat.sizing import ceil_div
from hlimage.formats.fat.structs import (
    ATTR_DIRECTORY,
    ATTR_LONG_NAME,
    ATTR_LONG_NAME_MASK,
    ATTR_VOLUME_ID,
    DIR_ENTRY_SIZE,
    FAT16_MIN_CLUSTERS,
    FAT32_MAX_CLUSTERS,
    FAT32_MIN_CLUSTERS,
    LAST_LONG_ENTRY,
    MAX_DIR_ENTRIES,
    NO_LABEL,
    NTRES_LOWER_BASE,
    NTRES_LOWER_EXT,
    SECTOR,
    Bpb,
    DirEntry,
    ExtendedBpb,
    Fat32Bpb,
    LfnEntry,
)
from hlimage.formats.payload import CHUNK


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
        root_sectors = ceil_div(root_entries * DIR_ENTRY_SIZE, sector)
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
        limit = ceil_div(MAX_DIR_ENTRIES * DIR_ENTRY_SIZE, self.cluster_size)
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
        clusters = ceil_div(entry.size, self.cluster_size)
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
