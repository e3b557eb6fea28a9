"""`--format disk`: checked by sfdisk, sgdisk, fsck.fat and mtools against the `esp` output of
the same description, reproducible, sized by --size, read back by `hlimage inspect`."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hlimage import build as build_module
from hlimage import config, qemu, run
from hlimage.formats import fat, gpt
from hlimage.inspection import FatFileRegion
from hlimage.plumbing.streams import file_sha256
from tests.conftest import require, run_cli
from tests.support import descriptions
from tests.support.descriptions import Guest
from tests.unit.test_fat import fsck_clean, mcopy_sha256
from tests.unit.test_gpt import verify_with_partitioners

MIB = 1 << 20


def x86(directory: Path) -> Path:
    return descriptions.x86_classic(directory)


def arm64(directory: Path) -> Path:
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    return descriptions.arm64(directory, guests)


DESCRIPTIONS: dict[str, Callable[[Path], Path]] = {"x86": x86, "arm64": arm64}


def tools() -> None:
    for tool in ("sfdisk", "sgdisk", "fsck.fat", "mcopy", "mdir"):
        require(shutil.which(tool) is not None, f"{tool} is not installed (fdisk, gdisk, "
                "dosfstools, mtools)")  # fmt: skip


def build(description: Path, output: Path, output_format: str = "disk", *extra: str) -> None:
    result = run_cli("build", description, "--format", output_format, "-o", output, *extra)
    assert result.code == 0, result.stderr


def esp_files(root: Path) -> dict[str, Path]:
    return {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}


def mtools_paths(image: str) -> set[str]:
    """Every file mtools lists in the volume, directories left out."""
    listing = subprocess.run(
        ["mdir", "-/", "-b", "-i", image, "::"], capture_output=True, text=True, check=True
    ).stdout
    return {line[3:] for line in listing.splitlines() if not line.endswith("/")}


def extract_partition(image: Path, partition: dict[str, Any], target: Path) -> None:
    """dd the partition out: fsck.fat has no offset option."""
    subprocess.run(
        ["dd", f"if={image}", f"of={target}", "bs=512", f"skip={partition['start']}",
         f"count={partition['size']}", "status=none"],
        check=True,
    )  # fmt: skip


@pytest.mark.parametrize("kind", DESCRIPTIONS)
def test_disk_checks_clean_and_holds_the_esp_tree(cache: Path, tmp_path: Path, kind: str) -> None:
    tools()
    description = DESCRIPTIONS[kind](tmp_path)
    disk, esp = tmp_path / "disk.img", tmp_path / "esp"
    build(description, disk)
    build(description, esp, "esp")
    assert disk.stat().st_size % MIB == 0

    table = verify_with_partitioners(disk)
    assert table["label"] == "gpt"
    (partition,) = table["partitions"]
    assert partition["type"].lower() == str(gpt.ESP_TYPE)
    assert partition["start"] == 2048  # 1 MiB aligned
    assert partition["name"] == "EFI System Partition"
    with disk.open("rb") as stream:
        disk_guid, _ = gpt.parse(stream)
    assert str(table["id"]).lower() == str(disk_guid)

    volume = tmp_path / "volume.img"
    extract_partition(disk, partition, volume)
    fsck_clean(volume)

    expected = esp_files(esp)
    image = f"{disk}@@1M"
    assert mtools_paths(image) == set(expected)
    for path, source in expected.items():
        assert mcopy_sha256(image, path) == file_sha256(source), path


@pytest.mark.parametrize("kind", DESCRIPTIONS)
def test_report_lists_every_file(cache: Path, tmp_path: Path, kind: str) -> None:
    system = config.load(DESCRIPTIONS[kind](tmp_path))
    report = build_module.build(system, "disk", tmp_path / "disk.img")
    build(DESCRIPTIONS[kind](tmp_path), tmp_path / "esp", "esp")
    expected = esp_files(tmp_path / "esp")
    assert report.format == "disk"
    assert {a.name: (a.size, a.sha256) for a in report.artifacts} == {
        path: (source.stat().st_size, file_sha256(source)) for path, source in expected.items()
    }
    roles = {a.name.rsplit("/", 1)[1]: a.role for a in report.artifacts}
    assert roles["BOOTX64.EFI" if kind == "x86" else "BOOTAA64.EFI"] == "xen"
    assert roles["vmlinuz" if kind == "x86" else "Image"] == "kernel"


def test_two_builds_are_identical(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    description = x86(tmp_path)
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    build(description, tmp_path / "a.img")
    build(description, tmp_path / "b.img")
    assert file_sha256(tmp_path / "a.img") == file_sha256(tmp_path / "b.img")

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")  # 2023-11-14 22:13:20 UTC
    build(description, tmp_path / "c.img")
    build(description, tmp_path / "d.img")
    assert file_sha256(tmp_path / "c.img") == file_sha256(tmp_path / "d.img")
    assert file_sha256(tmp_path / "c.img") != file_sha256(tmp_path / "a.img")
    require(shutil.which("mdir") is not None, "mdir (mtools) is not installed")
    listing = subprocess.run(
        ["mdir", "-i", f"{tmp_path / 'c.img'}@@1M", "::EFI/BOOT"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "2023-11-14  22:13" in listing
    unset = subprocess.run(
        ["mdir", "-i", f"{tmp_path / 'a.img'}@@1M", "::EFI/BOOT"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "1980-01-01" in unset

    # The identity is the content's: another input gives other GUIDs and another volume id.
    other = descriptions.x86_classic(tmp_path, name="other.toml", extra="vcpus = 1\n")
    build(other, tmp_path / "e.img")
    with (tmp_path / "c.img").open("rb") as first, (tmp_path / "e.img").open("rb") as second:
        (guid_c, (part_c,)), (guid_e, (part_e,)) = gpt.parse(first), gpt.parse(second)
        assert guid_c != guid_e and part_c.unique_guid != part_e.unique_guid
        assert (
            fat.read_info(first, part_c.offset).volume_id
            != fat.read_info(second, part_e.offset).volume_id
        )

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "yesterday")
    result = run_cli("build", description, "-f", "disk", "-o", tmp_path / "f.img")
    assert result.code == 2 and "SOURCE_DATE_EPOCH" in result.stderr
    assert not (tmp_path / "f.img").exists()


def test_size(cache: Path, tmp_path: Path) -> None:
    tools()
    description = x86(tmp_path)
    output = tmp_path / "disk.img"
    result = run_cli("build", description, "-f", "disk", "-o", output, "--size", "4M")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--size 4M: too small" in result.stderr
    least = result.stderr.split("give --size ", 1)[1].split()[0]
    assert not output.exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries

    # The minimum it names is the minimum: it builds, a MiB less does not.
    least_bytes = config.parse_size(least)
    assert least_bytes is not None
    build(description, output, "disk", "--size", least)
    assert output.stat().st_size == least_bytes
    before = file_sha256(output)
    smaller = f"{(least_bytes >> 20) - 1}M"
    result = run_cli("build", description, "-f", "disk", "-o", output, "--size", smaller)
    assert result.code == 2 and f"--size {smaller}: too small" in result.stderr
    assert file_sha256(output) == before  # a failed build leaves the previous output

    # A given size is the disk's size, the volume filling it to the last MiB before the backup.
    build(description, output, "disk", "--size", "100M")
    assert output.stat().st_size == 100 * MIB
    table = verify_with_partitioners(output)
    (partition,) = table["partitions"]
    assert partition["size"] * 512 == 98 * MIB
    volume = tmp_path / "volume.img"
    extract_partition(output, partition, volume)
    fsck_clean(volume)
    with output.open("rb") as stream:
        assert fat.read_info(stream, MIB).fat_type == 32

    for bad, says in (
        ("lots", "not a size"),
        ("1000", "a disk is whole 512-byte sectors"),
        ("0", "not a size"),
    ):
        result = run_cli(
            "build", description, "-f", "disk", "-o", tmp_path / "x.img", "--size", bad
        )
        assert result.code == 2 and f"--size {bad}: {says}" in result.stderr, result.stderr
    result = run_cli("build", description, "-f", "esp", "-o", tmp_path / "e", "--size", "1G")
    assert result.code == 2 and "--size" in result.stderr
    assert not (tmp_path / "x.img").exists() and not (tmp_path / "e").exists()


def test_lz4_initrd_is_spooled_to_a_file(cache: Path, tmp_path: Path) -> None:
    """A recompressed initrd's size is known only once it is made; the FAT needs it first."""
    tools()
    description = descriptions.x86_classic(tmp_path, extra='initrd_compression = "lz4"\n')
    build(description, tmp_path / "disk.img")
    build(description, tmp_path / "esp", "esp")
    initrd = tmp_path / "esp/EFI/BOOT/dom0-initrd.lz4"
    assert initrd.read_bytes()[:4] == bytes.fromhex("02214c18")  # LZ4 legacy magic
    assert mcopy_sha256(f"{tmp_path / 'disk.img'}@@1M", "EFI/BOOT/dom0-initrd.lz4") == file_sha256(
        initrd
    )
    # The spool went away with the build.
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_inspect_x86(cache: Path, tmp_path: Path) -> None:
    description = x86(tmp_path)
    disk, esp = tmp_path / "disk.img", tmp_path / "esp"
    build(description, disk)
    build(description, esp, "esp")
    result = run_cli("inspect", "--json", disk)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["type"] == "disk" and data["size"] == disk.stat().st_size
    (partition,) = data["partitions"]
    assert partition["type"] == "EFI System" and partition["offset"] == MIB
    assert data["esp"]["loader"] == "BOOTX64.EFI"
    expected = esp_files(esp)
    assert {f["path"]: (f["size"], f["sha256"]) for f in data["esp"]["files"]} == {
        path: (source.stat().st_size, file_sha256(source)) for path, source in expected.items()
    }
    cfg = (esp / "EFI/BOOT/BOOTX64.cfg").read_text()
    assert data["esp"]["config"]["text"] == cfg
    assert data["esp"]["config"]["parsed"]["xen"]["ramdisk"] == "dom0.cpio.gz"
    modules = data["esp"]["modules"]
    assert modules["kernel"]["detail"].startswith("bzImage, x86_64")
    assert modules["ramdisk"] == {"file": "dom0.cpio.gz", "type": "initrd",
                                  "detail": "gzip compressed"}  # fmt: skip
    # The ESP tree and the disk describe the same boot.
    tree = json.loads(run_cli("inspect", "--json", esp).stdout)
    assert tree["modules"] == modules and tree["config"] == data["esp"]["config"]

    text = run_cli("inspect", disk).stdout
    vmlinuz = expected["EFI/BOOT/vmlinuz"]
    assert "GPT disk image" in text and "EFI System Partition" in text
    assert "loader EFI/BOOT/BOOTX64.EFI" in text
    assert f"EFI/BOOT/vmlinuz {vmlinuz.stat().st_size} {file_sha256(vmlinuz)}" in " ".join(
        text.split()
    )
    assert "| kernel=vmlinuz console=hvc0 earlyprintk=xen" in text
    assert "ramdisk: dom0.cpio.gz: gzip compressed" in text
    fast = json.loads(run_cli("inspect", "--json", "--no-digests", disk).stdout)
    assert all("sha256" not in f for f in fast["esp"]["files"])


def test_inspect_arm64_shows_the_domains(cache: Path, tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    build(arm64(tmp_path), disk)
    data = json.loads(run_cli("inspect", "--json", disk).stdout)
    esp = data["esp"]
    assert esp["loader"] == "BOOTAA64.EFI"
    assert esp["config"]["parsed"]["xen"]["dtb"] == "xen.dtb"
    assert esp["modules"]["kernel"]["detail"].startswith("arm64-image")
    domains = {d["name"]: d for d in esp["modules"]["dtb"]["domains"]}
    assert set(domains) == {"guest1", "guest2"}
    assert domains["guest1"]["cpus"] == 1 and domains["guest1"]["memory_kib"] == 192 * 1024
    assert domains["guest2"]["cpus"] == 2 and domains["guest2"]["memory_kib"] == 256 * 1024
    text = run_cli("inspect", disk).stdout
    assert "| dtb=xen.dtb" in text
    assert "domain guest1: 1 vCPU, 192 MiB, kernel=Image (console=ttyAMA0)" in text
    assert "domain guest2: 2 vCPU, 256 MiB, kernel=Image (console=ttyAMA0)" in text


def test_fat_file_region_reads_any_range(cache: Path, tmp_path: Path) -> None:
    """Ranges across the reader's 1 MiB pieces read what the file holds."""
    disk = tmp_path / "disk.img"
    build(x86(tmp_path), disk)
    kernel = (cache / "x86_64/vmlinuz").read_bytes()
    with disk.open("rb") as stream:
        entry = next(e for e in fat.list_files(stream, MIB) if e.path == "EFI/BOOT/vmlinuz")
    region = FatFileRegion(disk, MIB, entry)
    for start, count in ((0, 512), (MIB - 3, 10), (MIB, MIB), (5, 3 * MIB), (len(kernel) - 4, 99)):
        assert region.read(start, count) == kernel[start : start + count], (start, count)
    assert region.read(len(kernel), 10) == b""
    assert hashlib.sha256(b"".join(region.chunks())).hexdigest() == file_sha256(
        cache / "x86_64/vmlinuz"
    )


def test_inspect_and_run_refuse_what_they_cannot_read(tmp_path: Path) -> None:
    junk = tmp_path / "junk.img"
    junk.write_bytes(b"\0" * 512 + b"EFI PART" + b"\0" * 4096)
    result = run_cli("inspect", junk)
    assert result.code == 2 and str(junk) in result.stderr and "GPT" in result.stderr
    assert run._disk_arch(junk) is None


@pytest.mark.parametrize(("kind", "arch"), [("x86", qemu.X86_64), ("arm64", qemu.ARM64)])
def test_run_boots_a_disk_image_as_a_disk(
    cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str, arch: str
) -> None:
    """`hlimage run disk.img`: the arch from the loader's name, the image as the boot disk
    (tests/e2e/test_disk_boot.py boots such images)."""
    binary = qemu.PACKAGES[arch][0]
    require(shutil.which(binary) is not None, f"{binary} not installed")
    disk = tmp_path / "disk.img"
    build(DESCRIPTIONS[kind](tmp_path), disk)
    started: list[list[str]] = []

    def call(argv: list[str]) -> int:
        started.append(argv)
        return 0

    monkeypatch.setattr("hlimage.run.subprocess.call", call)
    assert run_cli("run", disk).code == 0
    (argv,) = started
    assert argv[0] == binary
    assert any(f"file={disk.resolve()},format=raw" in arg for arg in argv)
    assert not any("fat:rw:" in arg for arg in argv)
