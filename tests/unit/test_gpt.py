"""GPT disks: checked by sfdisk and sgdisk, with a FAT ESP read back by mtools, fuzzed."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import shutil
import struct
import subprocess
import uuid
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hlimage.errors import FormatError
from hlimage.formats import fat, gpt
from hlimage.formats.payload import CHUNK, BytesPayload, Payload
from tests.conftest import require
from tests.unit.test_fat import CounterPayload, check_with_mtools, fsck_clean, sample_files

MIB = 1 << 20


def tools() -> None:
    for tool in ("sfdisk", "sgdisk", "fdisk", "fsck.fat", "mcopy"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")


def build_disk(
    path: Path, files: Sequence[tuple[str, Payload]], *, fat_size: int | None = None
) -> tuple[gpt.Partition, fat.Plan, uuid.UUID]:
    """What the disk output does: plan the ESP, lay out the disk, write headers, then the ESP."""
    volume = fat.plan(files, size=fat_size, label="HLIMAGE")
    layout = gpt.layout([volume.size])
    disk_guid = gpt.guid_from(b"disk", str(volume.size).encode())
    partition = gpt.Partition.at(
        layout.extents[0], gpt.ESP_TYPE, gpt.guid_from(b"esp"), "EFI System Partition"
    )
    with path.open("wb") as out:
        gpt.write_headers(out, layout.disk_size, [partition], disk_guid)
        fat.write(out, partition.offset, volume, timestamp=1_700_000_000, volume_id=0x1234ABCD)
    return partition, volume, disk_guid


def verify_with_partitioners(image: Path) -> dict[str, Any]:
    """sfdisk --verify and sgdisk -v find nothing; sfdisk's own parse of the table."""
    result = subprocess.run(
        ["sfdisk", "--verify", str(image)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected." in result.stdout, result.stdout
    assert not result.stderr.strip(), result.stderr
    result = subprocess.run(
        ["sgdisk", "-v", str(image)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No problems found." in result.stdout, result.stdout
    assert "Warning" not in result.stdout + result.stderr, result.stdout
    dump = subprocess.run(
        ["sfdisk", "--json", str(image)], capture_output=True, text=True, check=True
    )
    table: dict[str, Any] = json.loads(dump.stdout)["partitiontable"]
    return table


def extract(image: Path, partition: gpt.Partition, target: Path) -> None:
    with image.open("rb") as source, target.open("wb") as out:
        source.seek(partition.offset)
        remaining = partition.size
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            assert chunk
            out.write(chunk)
            remaining -= len(chunk)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@pytest.mark.parametrize(("fat_size", "fat_type"), [(None, 16), (40 * MIB, 32), (300 * MIB, 32)])
def test_disk_image_checks_clean_everywhere(
    tmp_path: Path, fat_size: int | None, fat_type: int
) -> None:
    tools()
    files = sample_files()
    image = tmp_path / "disk.img"
    partition, volume, disk_guid = build_disk(image, files, fat_size=fat_size)
    assert volume.fat_type == fat_type
    assert partition.first_lba == 2048
    assert image.stat().st_size % MIB == 0

    table = verify_with_partitioners(image)
    assert table["label"] == "gpt"
    assert str(table["id"]).lower() == str(disk_guid)
    (entry,) = table["partitions"]
    assert entry["start"] == 2048
    assert entry["size"] * 512 == volume.size
    assert entry["type"].lower() == str(gpt.ESP_TYPE)
    assert entry["uuid"].lower() == str(partition.unique_guid)
    assert entry["name"] == "EFI System Partition"

    esp = tmp_path / "esp.img"
    extract(image, partition, esp)
    fsck_clean(esp)
    check_with_mtools(f"{image}@@1M", files)

    with image.open("rb") as stream:
        parsed_guid, partitions = gpt.parse(stream)
        assert (parsed_guid, partitions) == (disk_guid, [partition])
        listed = {e.path for e in fat.list_files(stream, partitions[0].offset)}
        assert listed == {path for path, _ in files}

    again = tmp_path / "again.img"
    build_disk(again, sample_files(), fat_size=fat_size)
    assert sha256_of(again) == sha256_of(image)


def test_layout_aligns_every_partition() -> None:
    layout = gpt.layout([10 * MIB, 1, 3 * MIB + 512, 5 * MIB])
    assert [e.first_lba for e in layout.extents] == [2048, 22528, 24576, 32768]
    assert [e.size for e in layout.extents] == [10 * MIB, 512, 3 * MIB + 512, 5 * MIB]
    assert layout.extents[0].offset == MIB
    assert layout.disk_size % MIB == 0
    last = layout.extents[-1]
    # Room for the backup entries (32 sectors) and header after the last partition.
    assert layout.disk_size // 512 - 1 - 32 > last.last_lba
    big = gpt.layout([MIB], sector=4096)
    assert big.extents[0].first_lba == 256
    assert gpt.entry_array_sectors(4096) == 4
    with pytest.raises(FormatError):
        gpt.layout([0])
    with pytest.raises(FormatError):
        gpt.layout([MIB], align=1000)


def test_several_partitions_and_4k_sectors_verify(tmp_path: Path) -> None:
    tools()
    layout = gpt.layout([2 * MIB, 3 * MIB, 4 * MIB])
    partitions = [
        gpt.Partition.at(
            extent,
            gpt.ESP_TYPE if index == 0 else gpt.LINUX_DATA_TYPE,
            gpt.guid_from(b"part", bytes([index])),
            f"part {index} ünicode",
            attributes=1 << 63 if index == 2 else 0,
        )
        for index, extent in enumerate(layout.extents)
    ]
    image = tmp_path / "three.img"
    with image.open("wb") as out:
        gpt.write_headers(out, layout.disk_size, partitions, gpt.guid_from(b"three"))
    table = verify_with_partitioners(image)
    assert [p["name"] for p in table["partitions"]] == [p.name for p in partitions]
    with image.open("rb") as stream:
        assert gpt.parse(stream) == (gpt.guid_from(b"three"), partitions)

    layout4k = gpt.layout([4 * MIB], sector=4096)
    partition = gpt.Partition.at(layout4k.extents[0], gpt.ESP_TYPE, gpt.guid_from(b"4k"))
    image4k = tmp_path / "4k.img"
    with image4k.open("wb") as out:
        gpt.write_headers(out, layout4k.disk_size, [partition], gpt.guid_from(b"4k"), sector=4096)
    with image4k.open("rb") as stream:
        assert gpt.parse(stream) == (gpt.guid_from(b"4k"), [partition])
    # This sfdisk cannot be told the sector size; fdisk can, and verifies with its "v".
    result = subprocess.run(
        ["fdisk", "-b", "4096", str(image4k)],
        input="v\nq\n",
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "No errors detected." in result.stdout, result.stdout


def test_protective_mbr_is_capped_for_huge_disks(tmp_path: Path) -> None:
    tools()
    layout = gpt.layout([3 << 40])  # 3 TiB: more sectors than the MBR's 32 bits can count
    partition = gpt.Partition.at(layout.extents[0], gpt.LINUX_DATA_TYPE, gpt.guid_from(b"big"))
    image = tmp_path / "huge.img"
    with image.open("wb") as out:
        gpt.write_headers(out, layout.disk_size, [partition], gpt.guid_from(b"huge"))
    assert image.stat().st_size == layout.disk_size
    with image.open("rb") as stream:
        mbr = stream.read(512)
    assert mbr[510:512] == b"\x55\xaa"
    status, chs_first, kind, chs_last, first, sectors = struct.unpack_from("<B3sB3sII", mbr, 446)
    assert (status, chs_first, kind, chs_last) == (0, b"\0\2\0", 0xEE, b"\xff\xff\xff")
    assert (first, sectors) == (1, 0xFFFFFFFF)
    assert mbr[446 + 16 : 510] == bytes(48)
    verify_with_partitioners(image)


def test_small_disk_mbr_covers_the_disk_less_lba_0() -> None:
    layout = gpt.layout([MIB])
    out = io.BytesIO()
    gpt.write_headers(out, layout.disk_size, [], gpt.guid_from(b"empty"))
    data = out.getvalue()
    assert len(data) == layout.disk_size
    assert struct.unpack_from("<II", data, 446 + 8) == (1, layout.disk_size // 512 - 1)
    header = gpt.GptHeader.parse(data[512:])
    assert header.signature == b"EFI PART"
    assert (header.revision, header.header_size) == (0x00010000, 92)
    assert (header.my_lba, header.alternate_lba) == (1, layout.disk_size // 512 - 1)
    assert (header.first_usable_lba, header.last_usable_lba) == (34, layout.disk_size // 512 - 34)
    assert (header.number_of_partition_entries, header.size_of_partition_entry) == (128, 128)
    assert header.partition_entry_array_crc32 == zlib.crc32(bytes(128 * 128))
    assert gpt.parse(io.BytesIO(data)) == (gpt.guid_from(b"empty"), [])


def test_guids_encode_mixed_endian() -> None:
    layout = gpt.layout([MIB])
    guid = uuid.UUID("00112233-4455-6677-8899-aabbccddeeff")
    partition = gpt.Partition.at(layout.extents[0], gpt.ESP_TYPE, guid, "ESP")
    out = io.BytesIO()
    gpt.write_headers(out, layout.disk_size, [partition], guid)
    entry = out.getvalue()[1024 : 1024 + 128]
    assert entry[:16] == bytes.fromhex("28732ac11ff8d211ba4b00a0c93ec93b")
    assert entry[16:32] == bytes.fromhex("33221100554477668899aabbccddeeff")
    assert struct.unpack_from("<QQQ", entry, 32) == (2048, 4095, 0)
    assert entry[56:128] == "ESP".encode("utf-16-le").ljust(72, b"\0")


def test_guid_from_is_deterministic_and_version_4() -> None:
    first = gpt.guid_from(b"a", b"bc")
    assert first == gpt.guid_from(b"a", b"bc")
    assert first != gpt.guid_from(b"ab", b"c")
    assert first != gpt.guid_from(b"abc")
    assert (first.version, first.variant) == (4, uuid.RFC_4122)


@pytest.mark.parametrize(
    ("partitions", "message"),
    [
        ([(2048, 4095), (4000, 5000)], "overlap"),
        ([(33, 4095)], "usable"),
        ([(2048, 1 << 40)], "usable"),
        ([(4095, 2048)], "usable"),
        ([(2048 + i, 2048 + i) for i in range(129)], "128"),
    ],
)
def test_bad_tables_are_refused(partitions: list[tuple[int, int]], message: str) -> None:
    entries = [
        gpt.Partition(first, last, gpt.LINUX_DATA_TYPE, gpt.guid_from(bytes([i % 256])))
        for i, (first, last) in enumerate(partitions)
    ]
    with pytest.raises(FormatError, match=message):
        gpt.write_headers(io.BytesIO(), 16 * MIB, entries, gpt.guid_from(b"d"))
    with pytest.raises(FormatError, match="longer than 36"):
        gpt.write_headers(
            io.BytesIO(),
            16 * MIB,
            [gpt.Partition(2048, 4095, gpt.ESP_TYPE, gpt.guid_from(b"x"), "x" * 37)],
            gpt.guid_from(b"d"),
        )


# The parser ----------------------------------------------------------------------------------


def small_disk() -> bytes:
    layout = gpt.layout([MIB, 2 * MIB])
    partitions = [
        gpt.Partition.at(extent, gpt.ESP_TYPE, gpt.guid_from(bytes([i])), f"p{i}")
        for i, extent in enumerate(layout.extents)
    ]
    out = io.BytesIO()
    gpt.write_headers(out, layout.disk_size, partitions, gpt.guid_from(b"small"))
    return out.getvalue()


SMALL_DISK = small_disk()
BACKUP_HEADER = len(SMALL_DISK) - 512


def fix_crcs(image: bytearray, header_at: int, entries_at: int) -> None:
    """Recompute a header's CRCs, so that a mutation gets past them to the checks behind."""
    count, size = struct.unpack_from("<II", image, header_at + 80)
    if count * size <= 1 << 20 and entries_at + count * size <= len(image):
        crc = zlib.crc32(image[entries_at : entries_at + count * size])
        struct.pack_into("<I", image, header_at + 88, crc)
    header_size = struct.unpack_from("<I", image, header_at + 12)[0]
    if 92 <= header_size <= 512:
        struct.pack_into("<I", image, header_at + 16, 0)
        crc = zlib.crc32(image[header_at : header_at + header_size])
        struct.pack_into("<I", image, header_at + 16, crc)


def test_parser_checks_crcs_and_backup() -> None:
    guid, partitions = gpt.parse(io.BytesIO(SMALL_DISK))
    assert guid == gpt.guid_from(b"small")
    assert [p.name for p in partitions] == ["p0", "p1"]

    broken = bytearray(SMALL_DISK)
    broken[512 + 60] ^= 1  # in the disk GUID
    with pytest.raises(FormatError, match="primary header's CRC32"):
        gpt.parse(io.BytesIO(broken))

    broken = bytearray(SMALL_DISK)
    broken[1024 + 56] ^= 1  # the first partition's name
    with pytest.raises(FormatError, match="entries' CRC32"):
        gpt.parse(io.BytesIO(broken))

    broken = bytearray(SMALL_DISK)
    broken[BACKUP_HEADER + 60] ^= 1
    with pytest.raises(FormatError, match="backup header's CRC32"):
        gpt.parse(io.BytesIO(broken))

    with pytest.raises(FormatError, match="past the end"):
        gpt.parse(io.BytesIO(SMALL_DISK[: -MIB // 2]))
    with pytest.raises(FormatError, match="no GPT"):
        gpt.parse(io.BytesIO(bytes(4096)))

    # A partition outside the usable range, behind valid CRCs.
    broken = bytearray(SMALL_DISK)
    struct.pack_into("<Q", broken, 1024 + 40, 1 << 40)
    struct.pack_into("<Q", broken, BACKUP_HEADER - 32 * 512 + 40, 1 << 40)
    fix_crcs(broken, 512, 1024)
    fix_crcs(broken, BACKUP_HEADER, BACKUP_HEADER - 32 * 512)
    with pytest.raises(FormatError, match="usable"):
        gpt.parse(io.BytesIO(broken))


PRIMARY_ENTRIES = 1024
BACKUP_ENTRIES = BACKUP_HEADER - 32 * 512
# Header fields a mirrored mutation leaves alone in the backup: its own and the entries' LBAs.
HEADER_LOCATIONS = set(range(24, 40)) | set(range(72, 80))


@settings(max_examples=200, deadline=None)
@given(
    mutations=st.lists(
        st.tuples(
            st.sampled_from(["mbr", "header", "entries"]),
            st.integers(0, 511),
            st.integers(0, 255),
        ),
        min_size=1,
        max_size=16,
    ),
    mirror=st.booleans(),
    fix=st.booleans(),
    cut=st.sampled_from([0, 0, 1, 33, 2048]),
)
def test_mutated_tables_raise_only_format_errors(
    mutations: list[tuple[str, int, int]], mirror: bool, fix: bool, cut: int
) -> None:
    """Mutations, optionally made to both copies and behind recomputed CRCs, so that they get
    past the signature, CRC and backup checks to the fields behind them."""
    image = bytearray(SMALL_DISK)
    for region, offset, value in mutations:
        if region == "mbr":
            image[offset] = value
        elif region == "header":
            image[512 + offset % 96] = value
            if mirror and offset % 96 not in HEADER_LOCATIONS:
                image[BACKUP_HEADER + offset % 96] = value
        else:
            image[PRIMARY_ENTRIES + offset] = value
            if mirror:
                image[BACKUP_ENTRIES + offset] = value
    if fix:
        fix_crcs(image, 512, PRIMARY_ENTRIES)
        fix_crcs(image, BACKUP_HEADER, BACKUP_ENTRIES)
    if cut:
        del image[-cut * 512 :]
    try:
        guid, partitions = gpt.parse(io.BytesIO(bytes(image)))
    except FormatError:
        return
    assert isinstance(guid, uuid.UUID)
    for partition in partitions:
        assert partition.first_lba <= partition.last_lba
        assert isinstance(partition.name, str)


@settings(max_examples=200, deadline=None)
@given(st.binary(min_size=0, max_size=8192), st.sampled_from([None, 512, 4096]))
def test_junk_raises_only_format_errors(junk: bytes, sector: int | None) -> None:
    data = bytearray(junk)
    if len(data) >= 520 and data[0] & 1:
        data[512:520] = b"EFI PART"
    with contextlib.suppress(FormatError):
        gpt.parse(io.BytesIO(bytes(data)), sector=sector)


def test_large_fat32_esp_in_a_disk(tmp_path: Path) -> None:
    """Content past 300 MiB picks FAT32 on its own; the disk around it verifies."""
    tools()
    files: list[tuple[str, Payload]] = [
        ("EFI/BOOT/BOOTX64.EFI", BytesPayload(b"MZ" * 100, "efi")),
        ("initrd.img", CounterPayload(320 * MIB, seed=11)),
    ]
    image = tmp_path / "large.img"
    partition, volume, _ = build_disk(image, files)
    assert volume.fat_type == 32
    verify_with_partitioners(image)
    check_with_mtools(f"{image}@@1M", files)
    with image.open("rb") as stream:
        (_, (parsed,)) = gpt.parse(stream)
        info = fat.read_info(stream, parsed.offset)
        assert (info.fat_type, info.size) == (32, volume.size)
    assert partition.size >= volume.size
    # 1 MiB before the ESP, and after it the backup GPT rounded up to a MiB.
    assert image.stat().st_size == volume.size + 2 * MIB
