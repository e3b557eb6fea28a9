"""GUID partition tables: lay out a disk, write its protective MBR and both GPTs, parse one.

Partition contents are someone else's business: `write_headers` writes only the MBR, the two
headers and the two entry arrays, and sizes the file, so partitions can be written before or
after it. GUIDs come from the caller, derived from content (`guid_from`), so that the same
inputs give the same disk.
"""

from __future__ import annotations

import hashlib
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import BinaryIO

import construct as c

from hlimage.errors import FormatError
from hlimage.formats import align_up

MIB = 1 << 20
SECTOR = 512
SIGNATURE = b"EFI PART"
REVISION = 0x00010000
HEADER_SIZE = 92
ENTRY_COUNT = 128
ENTRY_SIZE = 128
ENTRY_ARRAY_BYTES = ENTRY_COUNT * ENTRY_SIZE
NAME_UNITS = 36
MBR_PROTECTIVE = 0xEE
MBR_MAX_SECTORS = 0xFFFFFFFF

ESP_TYPE = uuid.UUID("C12A7328-F81F-11D2-BA4B-00A0C93EC93B")
LINUX_DATA_TYPE = uuid.UUID("0FC63DAF-8483-4772-8E79-3D69D8477DE4")

# A parser must not let a header make it allocate: real tables are 16 KiB.
MAX_ENTRY_ARRAY_BYTES = 1 << 20

Guid = c.ExprAdapter(
    c.Bytes(16),
    # GPT stores the first three fields little-endian ("mixed-endian"): uuid's bytes_le.
    lambda raw, ctx: uuid.UUID(bytes_le=bytes(raw)),
    lambda value, ctx: value.bytes_le,
)

MbrPartition = c.Struct(
    "status" / c.Int8ul,
    "chs_first" / c.Bytes(3),
    "type" / c.Int8ul,
    "chs_last" / c.Bytes(3),
    "lba_first" / c.Int32ul,
    "sectors" / c.Int32ul,
)

ProtectiveMbr = c.Struct(
    "boot_code" / c.Bytes(440),
    "disk_signature" / c.Int32ul,
    "reserved" / c.Int16ul,
    "partitions" / c.Array(4, MbrPartition),
    "signature" / c.Const(b"\x55\xaa"),
)

GptHeader = c.Struct(
    "signature" / c.Bytes(8),
    "revision" / c.Int32ul,
    "header_size" / c.Int32ul,
    "header_crc32" / c.Int32ul,
    "reserved" / c.Int32ul,
    "my_lba" / c.Int64ul,
    "alternate_lba" / c.Int64ul,
    "first_usable_lba" / c.Int64ul,
    "last_usable_lba" / c.Int64ul,
    "disk_guid" / Guid,
    "partition_entry_lba" / c.Int64ul,
    "number_of_partition_entries" / c.Int32ul,
    "size_of_partition_entry" / c.Int32ul,
    "partition_entry_array_crc32" / c.Int32ul,
)

PartitionEntry = c.Struct(
    "type_guid" / Guid,
    "unique_guid" / Guid,
    "first_lba" / c.Int64ul,
    "last_lba" / c.Int64ul,
    "attributes" / c.Int64ul,
    # Bytes, not a string: a parser must not trip over unpaired surrogates in junk.
    "name" / c.Bytes(NAME_UNITS * 2),
)

assert ProtectiveMbr.sizeof() == 512
assert GptHeader.sizeof() == HEADER_SIZE
assert PartitionEntry.sizeof() == ENTRY_SIZE


def guid_from(*parts: bytes) -> uuid.UUID:
    """A GUID that is a function of `parts`: a sha256, shaped as an RFC 4122 version 4 UUID.

    Each part is length-prefixed, so that ("ab", "c") and ("a", "bc") differ.
    """
    digest = hashlib.sha256()
    for part in parts:
        digest.update(len(part).to_bytes(8, "little"))
        digest.update(part)
    return uuid.UUID(bytes=digest.digest()[:16], version=4)


def entry_array_sectors(sector: int) -> int:
    return -(-ENTRY_ARRAY_BYTES // sector)


@dataclass(frozen=True)
class Extent:
    """Where `layout` put a partition, in sectors (first and last inclusive)."""

    first_lba: int
    last_lba: int
    sector: int = SECTOR

    @property
    def offset(self) -> int:
        return self.first_lba * self.sector

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.sector


@dataclass(frozen=True)
class Layout:
    disk_size: int
    sector: int
    extents: tuple[Extent, ...]


def _check_sector(sector: int) -> None:
    if sector < 512 or sector & (sector - 1):
        raise FormatError(f"a sector of {sector} bytes: GPT needs a power of two, 512 or more")


def layout(partition_sizes: Sequence[int], *, align: int = MIB, sector: int = SECTOR) -> Layout:
    """Place partitions one after another, each starting on an `align` boundary (the first
    at `align`, 1 MiB by default, where every partitioning tool puts it).

    Each partition is its size rounded up to whole sectors; the disk ends on an `align`
    boundary with room for the backup entries and header.
    """
    _check_sector(sector)
    if align < sector or align % sector:
        raise FormatError(f"partition alignment {align} is not a multiple of {sector}")
    array = entry_array_sectors(sector)
    position = align_up((2 + array) * sector, align)
    extents = []
    for size in partition_sizes:
        if size <= 0:
            raise FormatError(f"a partition of {size} bytes")
        start = align_up(position, align)
        length = align_up(size, sector)
        extents.append(Extent(start // sector, (start + length) // sector - 1, sector))
        position = start + length
    disk_size = align_up(position + (array + 1) * sector, align)
    return Layout(disk_size, sector, tuple(extents))


@dataclass(frozen=True)
class Partition:
    first_lba: int
    last_lba: int
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    name: str = ""
    attributes: int = 0
    sector: int = SECTOR

    @classmethod
    def at(
        cls,
        extent: Extent,
        type_guid: uuid.UUID,
        unique_guid: uuid.UUID,
        name: str = "",
        attributes: int = 0,
    ) -> Partition:
        return cls(
            extent.first_lba,
            extent.last_lba,
            type_guid,
            unique_guid,
            name,
            attributes,
            extent.sector,
        )

    @property
    def offset(self) -> int:
        return self.first_lba * self.sector

    @property
    def size(self) -> int:
        return (self.last_lba - self.first_lba + 1) * self.sector


def _encode_name(name: str) -> bytes:
    encoded = name.encode("utf-16-le")
    if len(encoded) > NAME_UNITS * 2:
        raise FormatError(f"partition name {name!r} is longer than {NAME_UNITS} UTF-16 units")
    return encoded.ljust(NAME_UNITS * 2, b"\0")


def _decode_name(raw: bytes) -> str:
    units = [raw[i : i + 2] for i in range(0, len(raw), 2)]
    if b"\0\0" in units:
        units = units[: units.index(b"\0\0")]
    return b"".join(units).decode("utf-16-le", "replace")


def _header(
    *,
    my_lba: int,
    alternate_lba: int,
    first_usable: int,
    last_usable: int,
    disk_guid: uuid.UUID,
    entry_lba: int,
    entries_crc: int,
    sector: int,
) -> bytes:
    fields = {
        "signature": SIGNATURE,
        "revision": REVISION,
        "header_size": HEADER_SIZE,
        "header_crc32": 0,
        "reserved": 0,
        "my_lba": my_lba,
        "alternate_lba": alternate_lba,
        "first_usable_lba": first_usable,
        "last_usable_lba": last_usable,
        "disk_guid": disk_guid,
        "partition_entry_lba": entry_lba,
        "number_of_partition_entries": ENTRY_COUNT,
        "size_of_partition_entry": ENTRY_SIZE,
        "partition_entry_array_crc32": entries_crc,
    }
    fields["header_crc32"] = zlib.crc32(GptHeader.build(fields))
    built: bytes = GptHeader.build(fields)
    return built.ljust(sector, b"\0")


def _protective_mbr(total_lbas: int) -> bytes:
    unused = {
        "status": 0,
        "chs_first": bytes(3),
        "type": 0,
        "chs_last": bytes(3),
        "lba_first": 0,
        "sectors": 0,
    }
    protective = {
        "status": 0,
        # CHS 0/0/2, LBA 1; the end is past what CHS can say, so all ones (UEFI 5.2.3).
        "chs_first": b"\x00\x02\x00",
        "type": MBR_PROTECTIVE,
        "chs_last": b"\xff\xff\xff",
        "lba_first": 1,
        "sectors": min(total_lbas - 1, MBR_MAX_SECTORS),
    }
    built: bytes = ProtectiveMbr.build(
        {
            "boot_code": bytes(440),
            "disk_signature": 0,
            "reserved": 0,
            "partitions": [protective, unused, unused, unused],
        }
    )
    return built


def _check_partitions(
    partitions: Sequence[Partition], first_usable: int, last_usable: int, sector: int
) -> None:
    if len(partitions) > ENTRY_COUNT:
        raise FormatError(f"{len(partitions)} partitions: a GPT holds {ENTRY_COUNT}")
    placed = sorted(partitions, key=lambda p: p.first_lba)
    for partition in placed:
        if partition.sector != sector:
            raise FormatError(f"partition {partition.name!r} uses {partition.sector}-byte sectors")
        if partition.type_guid.int == 0:
            raise FormatError(f"partition {partition.name!r} has the nil type GUID (unused)")
        if not first_usable <= partition.first_lba <= partition.last_lba <= last_usable:
            raise FormatError(
                f"partition {partition.name!r} (LBA {partition.first_lba}..{partition.last_lba})"
                f" is not inside the usable LBAs {first_usable}..{last_usable}"
            )
    for before, after in pairwise(placed):
        if after.first_lba <= before.last_lba:
            raise FormatError(f"partitions {before.name!r} and {after.name!r} overlap")


def write_headers(
    out: BinaryIO,
    disk_size: int,
    partitions: Sequence[Partition],
    disk_guid: uuid.UUID,
    *,
    sector: int = SECTOR,
) -> None:
    """Size `out` to `disk_size` and write the protective MBR, the primary header and entries
    (LBA 0..33 with 512-byte sectors) and the backup entries and header (the last 33 LBAs).

    Nothing else is touched: partition contents and the gaps keep what `out` has there.
    """
    _check_sector(sector)
    array = entry_array_sectors(sector)
    if disk_size % sector:
        raise FormatError(f"a disk of {disk_size} bytes is not whole {sector}-byte sectors")
    total_lbas = disk_size // sector
    first_usable = 2 + array
    last_usable = total_lbas - 2 - array
    if last_usable < first_usable:
        raise FormatError(f"a disk of {disk_size} bytes has no room for a GPT")
    _check_partitions(partitions, first_usable, last_usable, sector)

    entries = bytearray()
    for partition in partitions:
        entries += PartitionEntry.build(
            {
                "type_guid": partition.type_guid,
                "unique_guid": partition.unique_guid,
                "first_lba": partition.first_lba,
                "last_lba": partition.last_lba,
                "attributes": partition.attributes,
                "name": _encode_name(partition.name),
            }
        )
    entries = entries.ljust(array * sector, b"\0")
    entries_crc = zlib.crc32(entries[:ENTRY_ARRAY_BYTES])
    backup_lba = total_lbas - 1
    backup_entries_lba = backup_lba - array

    def header(my_lba: int, alternate_lba: int, entry_lba: int) -> bytes:
        return _header(
            my_lba=my_lba,
            alternate_lba=alternate_lba,
            first_usable=first_usable,
            last_usable=last_usable,
            disk_guid=disk_guid,
            entry_lba=entry_lba,
            entries_crc=entries_crc,
            sector=sector,
        )

    out.truncate(disk_size)
    out.seek(0)
    out.write(_protective_mbr(total_lbas).ljust(sector, b"\0"))
    out.write(header(1, backup_lba, 2))
    out.write(entries)
    out.seek(backup_entries_lba * sector)
    out.write(entries)
    out.write(header(backup_lba, 1, backup_entries_lba))


@dataclass(frozen=True)
class _ParsedHeader:
    fields: c.Container
    entries: bytes


def _read_exact(stream: BinaryIO, position: int, length: int, what: str) -> bytes:
    # Checked first: an LBA from a broken header can be too large for seek() itself.
    if position + length > stream.seek(0, 2):
        raise FormatError(f"GPT: the {what} is past the end of the disk image")
    stream.seek(position)
    data = stream.read(length)
    if len(data) != length:
        raise FormatError(f"GPT: the {what} is past the end of the disk image")
    return data


def _parse_header(stream: BinaryIO, lba: int, sector: int, what: str) -> _ParsedHeader:
    raw = _read_exact(stream, lba * sector, sector, what)
    if raw[:8] != SIGNATURE:
        raise FormatError(f"GPT: no {what} at LBA {lba} (no 'EFI PART' signature)")
    fields = GptHeader.parse(raw)
    size = int(fields.header_size)
    if not HEADER_SIZE <= size <= sector:
        raise FormatError(f"GPT: the {what} claims a size of {size} bytes")
    zeroed = raw[:16] + b"\0\0\0\0" + raw[20:size]
    if zlib.crc32(zeroed) != int(fields.header_crc32):
        raise FormatError(f"GPT: the {what}'s CRC32 does not match")
    if int(fields.my_lba) != lba:
        raise FormatError(f"GPT: the {what} at LBA {lba} says it is at LBA {fields.my_lba}")
    count = int(fields.number_of_partition_entries)
    entry_size = int(fields.size_of_partition_entry)
    if entry_size < ENTRY_SIZE or entry_size % 8:
        raise FormatError(f"GPT: partition entries of {entry_size} bytes")
    if count * entry_size > MAX_ENTRY_ARRAY_BYTES:
        raise FormatError(f"GPT: {count} partition entries of {entry_size} bytes is too many")
    entries = _read_exact(
        stream, int(fields.partition_entry_lba) * sector, count * entry_size, "partition entries"
    )
    if zlib.crc32(entries) != int(fields.partition_entry_array_crc32):
        raise FormatError(f"GPT: the {what}'s partition entries' CRC32 does not match")
    return _ParsedHeader(fields, entries)


def _detect_sector(stream: BinaryIO) -> int:
    for sector in (512, 4096):
        stream.seek(sector)
        if stream.read(8) == SIGNATURE:
            return sector
    raise FormatError("no GPT: no 'EFI PART' signature at LBA 1 (512 or 4096-byte sectors)")


def parse(stream: BinaryIO, *, sector: int | None = None) -> tuple[uuid.UUID, list[Partition]]:
    """The disk GUID and the used partition entries, after checking both headers' signatures
    and CRCs and that the backup mirrors the primary.

    The sector size is found from where the primary header is unless given.
    """
    if sector is None:
        sector = _detect_sector(stream)
    else:
        _check_sector(sector)
    primary = _parse_header(stream, 1, sector, "primary header")
    fields = primary.fields
    alternate = int(fields.alternate_lba)
    if alternate <= 1:
        raise FormatError(f"GPT: the backup header's LBA ({alternate}) is not past the primary")
    backup = _parse_header(stream, alternate, sector, "backup header")
    if int(backup.fields.alternate_lba) != 1 or backup.entries != primary.entries:
        raise FormatError("GPT: the backup header or entries differ from the primary ones")
    for key in ("disk_guid", "first_usable_lba", "last_usable_lba"):
        if backup.fields[key] != fields[key]:
            raise FormatError(f"GPT: the backup header's {key} differs from the primary's")
    first_usable = int(fields.first_usable_lba)
    last_usable = int(fields.last_usable_lba)
    entry_size = int(fields.size_of_partition_entry)
    partitions = []
    for index in range(int(fields.number_of_partition_entries)):
        entry = PartitionEntry.parse(primary.entries[index * entry_size :])
        if entry.type_guid.int == 0:
            continue
        partition = Partition(
            first_lba=int(entry.first_lba),
            last_lba=int(entry.last_lba),
            type_guid=entry.type_guid,
            unique_guid=entry.unique_guid,
            name=_decode_name(bytes(entry.name)),
            attributes=int(entry.attributes),
            sector=sector,
        )
        if not first_usable <= partition.first_lba <= partition.last_lba <= last_usable:
            raise FormatError(
                f"GPT: partition {index + 1} (LBA {partition.first_lba}..{partition.last_lba}) "
                f"is not inside the usable LBAs {first_usable}..{last_usable}"
            )
        partitions.append(partition)
    disk_guid: uuid.UUID = fields.disk_guid
    return disk_guid, partitions
