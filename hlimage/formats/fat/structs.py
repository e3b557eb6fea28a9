"""The on-disk structures of FAT16 and FAT32 (fatgen103): boot sector, FSInfo, directory
entries, and the constants they use.
"""

from __future__ import annotations

from datetime import UTC, datetime

import construct as c

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

SHORT_SPECIALS = "!#$%&'()-@^_`{}~"
SHORT_NAME_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789" + SHORT_SPECIALS)
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
