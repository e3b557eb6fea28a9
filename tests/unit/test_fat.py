"""FAT volumes: checked by dosfstools and mtools, read back by our reader, fuzzed."""

from __future__ import annotations

import functools
import hashlib
import io
import json
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fat
from hlimage.formats.payload import CHUNK, BytesPayload, Payload
from tests.conftest import require

MIB = 1 << 20
REPO = Path(__file__).resolve().parents[2]


class CounterPayload(Payload):
    """Pseudo-random bytes made a MiB at a time: every 8-byte word differs from its neighbours
    and from the same word of every other MiB, so a misplaced cluster shows in the hash."""

    def __init__(self, size: int, seed: int = 1, label: str = "generated") -> None:
        self.size = size
        self.seed = seed
        self.label = label

    def size_bound(self) -> int:
        return self.size

    @property
    def exact_size(self) -> int:
        return self.size

    def chunks(self) -> Iterator[bytes]:
        words = np.random.default_rng(self.seed).integers(
            0, 1 << 63, size=CHUNK // 8, dtype=np.uint64
        )
        done = 0
        index = 0
        while done < self.size:
            chunk = (words + np.uint64(index)).tobytes()[: self.size - done]
            done += len(chunk)
            index += 1
            yield chunk

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for chunk in self.chunks():
            digest.update(chunk)
        return digest.hexdigest()


class UnsizedPayload(Payload):
    label = "unsized"

    def size_bound(self) -> int:
        return 1

    def chunks(self) -> Iterator[bytes]:
        yield b"x"


class LyingPayload(BytesPayload):
    """Announces fewer bytes than it gives."""

    @property
    def exact_size(self) -> int:
        return len(self.data) - 1


def sample_files() -> list[tuple[str, Payload]]:
    """What an ESP holds, and every naming and sizing case the writer has."""
    files: list[tuple[str, Payload]] = [
        ("EFI/BOOT/BOOTX64.EFI", CounterPayload(70_001, seed=2, label="xen.efi")),
        ("EFI/BOOT/BOOTX64.cfg", BytesPayload(b"[global]\ndefault=xen\n", "cfg")),
        ("vmlinuz", CounterPayload(300_000, seed=3)),
        ("initrd.img", CounterPayload(123_457, seed=4)),
        ("empty", BytesPayload(b"", "empty")),
        # A multiple of every cluster size up to 32 KiB.
        ("exact.bin", CounterPayload(3 * 32768, seed=5)),
        ("A long name with spaces.txt", BytesPayload(b"spaces\n", "l")),
        ("Ünïcödé naïve café.txt", BytesPayload("é".encode(), "u")),
        ("nested/deeper/Still Deeper/leaf.data", BytesPayload(b"leaf", "n")),
        ("nested/sibling", BytesPayload(b"sib", "s")),
        ("README", BytesPayload(b"upper-case 8.3: no long name", "r")),
        ("x" * 200 + ".tar.gz", BytesPayload(b"long", "x")),
    ]
    files += [(f"many/longfilename{i}.txt", BytesPayload(b"%d" % i, "m")) for i in range(12)]
    return files


def payload_bytes(payload: Payload) -> bytes:
    return b"".join(payload.chunks())


def build(
    path: Path,
    files: Sequence[tuple[str, Payload]],
    *,
    size: int | None = None,
    offset: int = 0,
    label: str = "HLIMAGE",
) -> tuple[fat.Plan, tuple[fat.WrittenFile, ...]]:
    volume = fat.plan(files, size=size, label=label)
    with path.open("wb") as out:
        written = fat.write(out, offset, volume, timestamp=1_700_000_000, volume_id=0x1234ABCD)
    return volume, written


def tools() -> None:
    for tool in ("fsck.fat", "mcopy", "mdir"):
        require(shutil.which(tool) is not None, f"{tool} is not installed")


def fsck_clean(image: Path) -> str:
    """fsck.fat -n: exit 0 and nothing said but the version and the summary."""
    result = subprocess.run(
        ["fsck.fat", "-n", str(image)], capture_output=True, text=True, check=False
    )
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(lines) == 2, result.stdout
    assert re.search(r": \d+ files, \d+/\d+ clusters$", lines[1]), result.stdout
    return lines[1]


def mcopy_sha256(image: str, path: str) -> str:
    """A file's sha256 as mtools reads it, streamed (files can be hundreds of MiB)."""
    digest = hashlib.sha256()
    # mtools reads wildcards (*, ?, [...]) in names; a backslash makes them literal.
    literal = re.sub(r"([][*?\\])", r"\\\1", path)
    with subprocess.Popen(
        ["mcopy", "-n", "-i", image, f"::{literal}", "-"], stdout=subprocess.PIPE
    ) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(CHUNK):
            digest.update(chunk)
    assert p.returncode == 0, path
    return digest.hexdigest()


def check_with_mtools(image: str, files: Sequence[tuple[str, Payload]]) -> None:
    listing = subprocess.run(
        ["mdir", "-/", "-a", "-i", image, "::"], capture_output=True, text=True, check=True
    ).stdout
    assert "Volume Serial Number is 1234-ABCD" in listing
    for path, payload in files:
        expected = hashlib.sha256(payload_bytes(payload)).hexdigest()
        assert mcopy_sha256(image, path) == expected, path


def file_sha256(path: Path, limit: int) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while limit > 0 and (chunk := stream.read(min(CHUNK, limit))):
            digest.update(chunk)
            limit -= len(chunk)
    return digest.hexdigest()


# Whole volumes checked by other tools -------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "fat_type", "cluster_size"),
    [
        (None, 16, 1024),  # a few hundred KiB of files plus headroom
        (40 * MIB, 32, 512),  # just over FAT32's least size
        (300 * MIB, 32, 4096),  # past fatgen's 260 MB step
        (9 << 30, 32, 8192),  # past its 8 GB step: sparse, only metadata is written
    ],
)
def test_volume_checks_clean_and_reads_back(
    tmp_path: Path, size: int | None, fat_type: int, cluster_size: int
) -> None:
    tools()
    files = sample_files()
    image = tmp_path / "fat.img"
    volume, written = build(image, files, size=size)
    assert (volume.fat_type, volume.cluster_size) == (fat_type, cluster_size)
    assert image.stat().st_size == volume.size
    if size is not None:
        assert volume.size == size

    summary = fsck_clean(image)
    assert f"/{volume.geometry.cluster_count} clusters" in summary
    check_with_mtools(str(image), files)

    for (path, payload), result in zip(files, written, strict=True):
        data = payload_bytes(payload)
        assert (result.path, result.size) == (path, len(data))

    # The same inputs give the same bytes (all but the sparse tail of the largest volume).
    again = tmp_path / "again.img"
    build(again, sample_files(), size=size)
    limit = min(volume.size, 320 * MIB)
    assert file_sha256(again, limit) == file_sha256(image, limit)


def test_volume_at_an_offset_is_the_standalone_volume(tmp_path: Path) -> None:
    files = sample_files()
    standalone, shifted = tmp_path / "a.img", tmp_path / "b.img"
    build(standalone, files)
    build(shifted, files, offset=3 * MIB)
    moved = shifted.read_bytes()
    assert moved[: 3 * MIB] == bytes(3 * MIB)
    expected = bytearray(standalone.read_bytes())
    expected[0x1C:0x20] = struct.pack("<I", 3 * MIB // 512)  # BPB_HiddSec
    assert moved[3 * MIB :] == bytes(expected)
    assert [e.path for e in fat.list_files(io.BytesIO(moved), 3 * MIB)] == [
        e.path for e in fat.list_files(io.BytesIO(standalone.read_bytes()))
    ]


def test_short_names_and_long_names(tmp_path: Path) -> None:
    tools()
    files: list[tuple[str, Payload]] = [
        ("README", BytesPayload(b"1", "a")),
        ("vmlinuz", BytesPayload(b"2", "b")),
        ("Long File Name.text", BytesPayload(b"3", "c")),
        ("LONGFI~1.TEX", BytesPayload(b"4", "d")),  # taken before a ~1 is generated
        ("longfi~2.tex", BytesPayload(b"5", "e")),  # upper-cased, taken too
        ("a+b=c[1].txt", BytesPayload(b"6", "f")),
        (".hidden", BytesPayload(b"7", "g")),
    ]
    files += [(f"Long File Name {i}.text", BytesPayload(b"%d" % i, "h")) for i in range(10)]
    volume = fat.plan(files, label="")
    names = {node.path: node.short_name.decode() for node in volume.files}
    assert names["README"] == "README     "
    assert names["vmlinuz"] == "VMLINUZ    "
    assert names["LONGFI~1.TEX"] == "LONGFI~1TEX"
    assert names["longfi~2.tex"] == "LONGFI~2TEX"
    assert names["Long File Name.text"] == "LONGFI~3TEX"
    assert names["a+b=c[1].txt"] == "A_B_C_1_TXT"[:6] + "~1TXT"
    assert names[".hidden"] == "HIDDEN~1   "
    assert names["Long File Name 9.text"] == "LONGF~13TEX"
    assert len(set(names.values())) == len(names)
    assert [node.long_name for node in volume.files][:2] == [False, True]

    image = tmp_path / "names.img"
    with image.open("wb") as out:
        fat.write(out, 0, volume, volume_id=0x1234ABCD)
    fsck_clean(image)
    check_with_mtools(str(image), files)
    with image.open("rb") as stream:
        assert fat.read_info(stream).label == ""  # the boot sector's "NO NAME"
    listing = subprocess.run(
        ["mdir", "-i", str(image), "::"], capture_output=True, text=True, check=True
    ).stdout
    assert re.search(r"^LONGFI~3 TEX +1 .* Long File Name\.text$", listing, re.M), listing
    assert re.search(r"^README +1 ", listing, re.M), listing


def test_large_file_streams_in_bounded_memory(tmp_path: Path) -> None:
    """512 MiB through the writer in a fresh process: peak RSS grows by well under 64 MiB."""
    tools()
    image = tmp_path / "big.img"
    script = f"""
import json, resource, sys
from hlimage.formats import fat
from hlimage.formats.payload import BytesPayload
from tests.unit.test_fat import CounterPayload
files = [("EFI/BOOT/BOOTX64.EFI", BytesPayload(b"MZ" * 1000, "efi")),
         ("initrd.img", CounterPayload({512 * MIB}, seed=9))]
volume = fat.plan(files, label="BIG")
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
with open(sys.argv[1], "wb") as out:
    written = fat.write(out, 0, volume, volume_id=0x1234ABCD)
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({{"growth_kib": after - before, "fat_type": volume.fat_type,
                  "size": written[1].size}}))
"""
    result = subprocess.run(
        [sys.executable, "-c", script, str(image)],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    )
    report = json.loads(result.stdout)
    assert report["growth_kib"] < 64 * 1024, report
    assert report["fat_type"] == 32
    expected = CounterPayload(512 * MIB, seed=9).sha256()
    assert report["size"] == 512 * MIB
    fsck_clean(image)
    assert mcopy_sha256(str(image), "initrd.img") == expected
    with image.open("rb") as stream:
        digest = hashlib.sha256()
        for chunk in fat.read_file(stream, 0, "INITRD.IMG"):
            assert len(chunk) <= CHUNK
            digest.update(chunk)
    assert digest.hexdigest() == expected


# Planning ------------------------------------------------------------------------------------


def test_automatic_size_picks_fat16_small_and_fat32_large() -> None:
    small = fat.plan([("a", BytesPayload(b"a", "a"))])
    assert small.fat_type == 16
    assert small.size % MIB == 0
    large = fat.plan([("initrd.img", CounterPayload(300 * MIB))])
    assert large.fat_type == 32
    free = (large.geometry.cluster_count - large.used_clusters) * large.cluster_size
    assert free >= fat.default_headroom(300 * MIB)
    assert large.size < 300 * MIB + 64 * MIB


def test_given_size_too_small_says_the_minimum() -> None:
    files = [("initrd.img", CounterPayload(10 * MIB))]
    with pytest.raises(FormatError, match=r"at least (\d+) bytes") as raised:
        fat.plan(files, size=8 * MIB)
    match = re.search(r"at least (\d+) bytes", str(raised.value))
    assert match is not None
    least = int(match.group(1))
    assert fat.plan(files, size=least).size == least
    with pytest.raises(FormatError, match="at least"):
        fat.plan(files, size=least - 512)
    with pytest.raises(FormatError, match="at least 4301312 bytes"):
        fat.plan([("a", BytesPayload(b"a", "a"))], size=MIB)


# Sizes at and around fatgen's table steps, and far apart.
BOUNDARY_SECTORS = [8401, 8402, 32680, 32681, 66600, 66601, 262144, 262145, 532480, 532481]
BOUNDARY_SECTORS += [16777216, 16777217, 33554432, 33554433, 67108864, 67108865, 0xFFFFFFFF]


def check_geometry(total_sectors: int) -> fat.Geometry:
    candidates = fat.candidates(total_sectors)
    assert candidates, total_sectors
    fat_type, per_cluster = candidates[0]
    layout = fat.geometry(total_sectors, fat_type, per_cluster, fat.FAT16_ROOT_ENTRIES)
    assert layout is not None, total_sectors
    count = layout.cluster_count
    if fat_type == 32:
        assert fat.FAT32_MIN_CLUSTERS <= count <= fat.FAT32_MAX_CLUSTERS
        assert total_sectors > 66600
    else:
        assert fat.FAT16_MIN_CLUSTERS <= count <= fat.FAT16_MAX_CLUSTERS
    # The FAT maps every cluster; the clusters fill the volume (less than one left over).
    assert layout.fat_sectors * 512 // layout.fat_entry_size >= count + 2
    data_sectors = total_sectors - layout.data_offset // 512
    assert 0 <= data_sectors - count * per_cluster < per_cluster
    # The same count fatgen's (and fsck.fat's) formula derives from the BPB.
    root_sectors = (layout.root_entries * 32 + 511) // 512
    metadata = layout.reserved_sectors + 2 * layout.fat_sectors + root_sectors
    assert (total_sectors - metadata) // per_cluster == count
    if fat_type == 32:
        assert layout.data_offset % layout.cluster_size == 0
    return layout


@pytest.mark.parametrize("total_sectors", BOUNDARY_SECTORS)
def test_fatgen_geometry_at_table_steps(total_sectors: int) -> None:
    check_geometry(total_sectors)


@settings(max_examples=200, deadline=None)
@given(st.integers(min_value=8401, max_value=0xFFFFFFFF))
def test_fatgen_geometry_is_always_valid(total_sectors: int) -> None:
    check_geometry(total_sectors)


def test_no_volume_below_fat16s_least_size() -> None:
    # fatgen's table stops short of the exact limit; below the limit FAT16 has too few clusters.
    assert fat.candidates(8400) == []
    assert fat.geometry(8200, 16, 2, 512) is None
    assert fat.geometry(8200, 32, 1) is None


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ([("a/../b", BytesPayload(b"", "x"))], "'..'"),
        ([("a//b", BytesPayload(b"", "x"))], "empty"),
        ([("a:b", BytesPayload(b"", "x"))], "cannot contain"),
        ([("trailing.", BytesPayload(b"", "x"))], "end in a dot"),
        ([("x" * 256, BytesPayload(b"", "x"))], "at most 255"),
        ([("Same", BytesPayload(b"", "x")), ("SAME", BytesPayload(b"", "y"))], "twice"),
        ([("d/f", BytesPayload(b"", "x")), ("d", BytesPayload(b"", "y"))], "twice"),
        ([("f", BytesPayload(b"", "x")), ("f/g", BytesPayload(b"", "y"))], "twice"),
    ],
)
def test_bad_paths_are_refused(files: list[tuple[str, Payload]], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        fat.plan(files)


def test_bad_labels_and_sizes_are_refused() -> None:
    files = [("a", BytesPayload(b"a", "a"))]
    for label in ("TWELVE CHARS", "a.b", " LEADING"):
        with pytest.raises(FormatError, match="label"):
            fat.plan(files, label=label)
    with pytest.raises(FormatError, match="multiple of 512"):
        fat.plan(files, size=10 * MIB + 1)
    with pytest.raises(FormatError, match="4 GiB"):
        fat.plan([("huge", CounterPayload(1 << 32))])
    with pytest.raises(HlimageError, match="size must be known"):
        fat.plan([("unsized", UnsizedPayload())])


def test_a_payload_that_grows_is_stopped_before_it_overwrites() -> None:
    volume = fat.plan([("liar", LyingPayload(b"abc", "liar")), ("next", BytesPayload(b"n", "n"))])
    with pytest.raises(HlimageError, match="grew past"):
        fat.write(io.BytesIO(), 0, volume)


def test_timestamps_clamp_to_fats_range() -> None:
    assert fat.fat_timestamp(0) == fat.Timestamp(date=(0 << 9) | (1 << 5) | 1, time=0, tenths=0)
    # 2023-11-14 22:13:20 UTC
    stamp = fat.fat_timestamp(1_700_000_000)
    assert stamp.date == (43 << 9) | (11 << 5) | 14
    assert stamp.time == (22 << 11) | (13 << 5) | 10
    assert stamp.tenths == 0
    assert fat.fat_timestamp(1_700_000_001).tenths == 100
    last = fat.fat_timestamp(1 << 40)
    assert last.date == (127 << 9) | (12 << 5) | 31
    assert last.time == (23 << 11) | (59 << 5) | 29


# The reader ----------------------------------------------------------------------------------


def built_volume(files: Sequence[tuple[str, Payload]], size: int | None = None) -> bytes:
    volume = fat.plan(files, label="HLIMAGE", size=size)
    out = io.BytesIO()
    fat.write(out, 0, volume, timestamp=1_700_000_000, volume_id=0x1234ABCD)
    return out.getvalue()


@pytest.mark.parametrize("size", [None, 40 * MIB])
def test_reader_lists_and_reads_what_the_writer_wrote(size: int | None) -> None:
    files = sample_files()
    volume = fat.plan(files, size=size, label="HLIMAGE")
    out = io.BytesIO()
    written = fat.write(out, 0, volume, volume_id=7)
    listed = {entry.path: entry for entry in fat.list_files(out)}
    assert set(listed) == {path for path, _ in files}
    for result in written:
        entry = listed[result.path]
        assert (entry.size, entry.first_cluster) == (result.size, result.first_cluster)
        data = b"".join(fat.read_file(out, 0, result.path))
        assert len(data) == result.size
    assert b"".join(fat.read_file(out, 0, "/efi/boot/bootx64.CFG")) == b"[global]\ndefault=xen\n"
    info = fat.read_info(out)
    assert (info.fat_type, info.volume_id, info.label) == (volume.fat_type, 7, "HLIMAGE")
    assert (info.cluster_count, info.size) == (volume.geometry.cluster_count, volume.size)
    with pytest.raises(HlimageError, match="no file") as raised:
        fat.read_file(out, 0, "EFI/BOOT/missing")
    assert not isinstance(raised.value, FormatError)


def test_reader_reads_mkfs_fat_volumes(tmp_path: Path) -> None:
    """A volume we did not write, FAT12 included, with mcopy'd files."""
    require(shutil.which("mkfs.fat") is not None, "mkfs.fat is not installed")
    for megabytes, bits in ((1, 12), (64, 32)):
        image = tmp_path / f"mkfs{bits}.img"
        subprocess.run(
            ["mkfs.fat", "-C", "-F", str(bits), "-n", "OTHER", str(image), str(megabytes * 1024)],
            check=True,
            capture_output=True,
        )
        source = tmp_path / "source.bin"
        source.write_bytes(bytes(range(256)) * 40)
        subprocess.run(["mmd", "-i", str(image), "::Sub Dir"], check=True)
        subprocess.run(
            ["mcopy", "-i", str(image), str(source), "::Sub Dir/Some File.bin"], check=True
        )
        with image.open("rb") as stream:
            assert fat.read_info(stream).fat_type == bits
            assert [(e.path, e.size) for e in fat.list_files(stream)] == [
                ("Sub Dir/Some File.bin", 10240)
            ]
            assert b"".join(fat.read_file(stream, 0, "sub dir/some file.bin")) == (
                source.read_bytes()
            )


def fat_entry_offset(image: bytes | bytearray, cluster: int) -> int:
    info = fat.read_info(io.BytesIO(image))
    reserved = int(struct.unpack_from("<H", image, 14)[0])
    return reserved * 512 + cluster * (4 if info.fat_type == 32 else 2)


def test_a_looping_chain_raises_instead_of_hanging() -> None:
    files = [("data.bin", CounterPayload(10 * 512, seed=6))]
    image = bytearray(built_volume(files, size=40 * MIB))
    (entry,) = fat.list_files(io.BytesIO(image))
    # The file's third cluster points back at its first.
    struct.pack_into(
        "<I", image, fat_entry_offset(image, entry.first_cluster + 2), entry.first_cluster
    )
    with pytest.raises(FormatError, match="loops"):
        b"".join(fat.read_file(io.BytesIO(image), 0, "data.bin"))


def test_a_looping_directory_chain_raises_instead_of_hanging() -> None:
    # 31 entries and the label fill two 512-byte clusters: no end marker stops the reader.
    files: list[tuple[str, Payload]] = [(f"F{i}", BytesPayload(b"f", "f")) for i in range(31)]
    image = bytearray(built_volume(files, size=40 * MIB))
    assert len(fat.list_files(io.BytesIO(image))) == 31
    struct.pack_into("<I", image, fat_entry_offset(image, 3), 2)
    with pytest.raises(FormatError, match="loops"):
        fat.list_files(io.BytesIO(image))


def test_a_directory_pointing_at_its_ancestor_raises() -> None:
    image = bytearray(built_volume([("a/b/c", BytesPayload(b"c", "c"))]))
    volume = fat.plan([("a/b/c", BytesPayload(b"c", "c"))], label="HLIMAGE")
    b_dir = next(d for d in volume.directories if d.name == "b")
    a_dir = next(d for d in volume.directories if d.name == "a")
    # In a's cluster: ".", "..", b's long-name entry, then b's entry: point it at a itself.
    position = volume.geometry.cluster_offset(a_dir.first_cluster) + 3 * 32 + 26
    assert struct.unpack_from("<H", image, position)[0] == b_dir.first_cluster
    struct.pack_into("<H", image, position, a_dir.first_cluster)
    with pytest.raises(FormatError, match="shares"):
        fat.list_files(io.BytesIO(image))


def consume(image: bytes) -> None:
    """Everything the reader offers, on possibly broken input: FormatError is the only failure."""
    stream = io.BytesIO(image)
    try:
        fat.read_info(stream)
        for entry in fat.list_files(stream):
            for _ in fat.read_entry(stream, 0, entry):
                pass
    except FormatError:
        pass


FUZZ_FILES: list[tuple[str, Payload]] = [
    ("EFI/BOOT/BOOTX64.EFI", CounterPayload(5000, seed=7)),
    ("A long name.txt", BytesPayload(b"x" * 3000, "l")),
    ("dir/sub/file", BytesPayload(b"f" * 700, "f")),
    ("empty", BytesPayload(b"", "e")),
]


@functools.cache
def fuzz_image(which: str) -> bytes:
    if which == "fat16":
        return built_volume(FUZZ_FILES)
    # The first 2 MiB of a FAT32 volume: its metadata and files, and truncated for the reader.
    return built_volume(FUZZ_FILES, size=40 * MIB)[: 2 * MIB]


def hot_offsets(image: bytes) -> list[int]:
    """Where a mutation reaches a structure: boot sector, FATs, root and first clusters."""
    info = fat.read_info(io.BytesIO(image))
    reserved = struct.unpack_from("<H", image, 14)[0]
    fat_size = struct.unpack_from("<H", image, 22)[0] or struct.unpack_from("<I", image, 36)[0]
    fat_start = reserved * 512
    data = fat_start + 2 * fat_size * 512 + (info.fat_type == 16) * 512 * 32
    return [0, 512 * 6, fat_start, fat_start + fat_size * 512, data - 512 * 32, data]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    which=st.sampled_from(["fat16", "fat32"]),
    mutations=st.lists(
        st.tuples(st.integers(0, 5), st.integers(0, 4095), st.integers(0, 255)),
        min_size=1,
        max_size=24,
    ),
)
def test_mutated_volumes_raise_only_format_errors(
    which: str, mutations: list[tuple[int, int, int]]
) -> None:
    original = fuzz_image(which)
    hot = hot_offsets(original)
    image = bytearray(original)
    for region, offset, value in mutations:
        image[hot[region] + offset] = value
    consume(bytes(image))


@settings(max_examples=200, deadline=None)
@given(
    sector=st.sampled_from([0, 511, 512, 1024, 4096]),
    per_cluster=st.sampled_from([0, 1, 2, 3, 8, 64, 128]),
    reserved=st.integers(0, 40),
    fats=st.integers(0, 3),
    root_entries=st.sampled_from([0, 16, 512, 0xFFFF]),
    total16=st.integers(0, 0xFFFF),
    total32=st.sampled_from([0, 100, 70000, 1 << 20, 0xFFFFFFFF]),
    fat16=st.integers(0, 300),
    fat32=st.sampled_from([0, 1, 600, 0xFFFFFFFF]),
    root_cluster=st.sampled_from([0, 1, 2, 3, 0x0FFFFFFF]),
    rest=st.binary(min_size=0, max_size=8192),
)
def test_junk_boot_sectors_raise_only_format_errors(
    sector: int,
    per_cluster: int,
    reserved: int,
    fats: int,
    root_entries: int,
    total16: int,
    total32: int,
    fat16: int,
    fat32: int,
    root_cluster: int,
    rest: bytes,
) -> None:
    boot = bytearray(512)
    struct.pack_into(
        "<HBHBHHBH",
        boot,
        11,
        sector,
        per_cluster,
        reserved,
        fats,
        root_entries,
        total16,
        0xF8,
        fat16,
    )
    struct.pack_into("<I", boot, 32, total32)
    struct.pack_into("<I", boot, 36, fat32)
    struct.pack_into("<I", boot, 44, root_cluster)
    boot[510:512] = b"\x55\xaa"
    consume(bytes(boot) + rest)


@settings(max_examples=40, deadline=None)
@given(
    names=st.lists(
        st.text(
            st.characters(
                blacklist_characters='"*/:<>?\\|',
                blacklist_categories=("Cs", "Cc"),
                min_codepoint=0x20,
                max_codepoint=0x2FF,
            ),
            min_size=1,
            max_size=40,
        ).filter(lambda name: name not in (".", "..") and name[-1] not in ". "),
        min_size=1,
        max_size=20,
        unique_by=str.upper,
    )
)
def test_any_names_round_trip_and_check_clean(
    tmp_path_factory: pytest.TempPathFactory, names: list[str]
) -> None:
    files: list[tuple[str, Payload]] = [
        (f"d/{name}", BytesPayload(name.encode(), "n")) for name in names
    ]
    files.append(("z", BytesPayload(b"z", "z")))
    volume = fat.plan(files, label="")
    shorts = [node.short_name for node in volume.files if node.parent is not volume.root]
    assert len(set(shorts)) == len(shorts)
    image = tmp_path_factory.mktemp("names") / "names.img"
    with image.open("wb") as out:
        fat.write(out, 0, volume)
    with image.open("rb") as stream:
        listed = [(e.path, e.size) for e in fat.list_files(stream)]
    assert sorted(listed) == sorted((path, len(payload_bytes(p))) for path, p in files)
    if shutil.which("fsck.fat"):
        fsck_clean(image)
