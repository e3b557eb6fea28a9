"""Boot chains without booting: the trees --loader systemd-boot, --loader systemd-boot-uki and
--shim lay out, read back with objdump and sbverify; the same in a disk image; rebuilt byte
for byte. The boots are in tests/e2e/test_systemd_boot.py and test_shim.py."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hlimage.formats import fat, gpt, pe
from hlimage.outputs import chains
from tests.conftest import require, run_cli
from tests.e2e.test_shim import SBAT, SHIM
from tests.support import descriptions
from tests.support.signing import key_and_certificate

SYSTEMD_BOOT = chains.SYSTEMD_BOOT_DIR / "systemd-bootx64.efi"
DISCARDABLE = pe.SCN_MEM_DISCARDABLE


def build(description: Path, output: Path, *extra: str | Path, fmt: str = "esp") -> str:
    result = run_cli("build", description, "-f", fmt, "-o", output, *extra)
    assert result.code == 0, result.stderr
    return result.stderr


def tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}  # fmt: skip


def sections(path: Path) -> dict[str, pe.Section]:
    with path.open("rb") as stream:
        return {section.name: section for section in pe.parse(stream).sections}


def section_bytes(path: Path, name: str) -> bytes:
    section = sections(path)[name]
    with path.open("rb") as stream:
        stream.seek(section.raw_offset)
        return stream.read(section.data_size)


@pytest.fixture
def systemd_boot(cache: Path) -> Path:
    require(SYSTEMD_BOOT.is_file(), f"{SYSTEMD_BOOT} missing (package systemd-boot-efi)")
    return SYSTEMD_BOOT


def test_type1_tree(systemd_boot: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    build(description, tmp_path / "plain")
    build(description, tmp_path / "esp", "--loader", "systemd-boot")
    files = tree(tmp_path / "esp")
    assert sorted(files) == [
        "EFI/BOOT/BOOTX64.EFI", "EFI/xen/dom0.cpio.gz", "EFI/xen/vmlinuz", "EFI/xen/xen.cfg",
        "EFI/xen/xen.efi", "loader/entries/xen.conf", "loader/loader.conf",
    ]  # fmt: skip
    plain = tree(tmp_path / "plain")
    assert files["EFI/BOOT/BOOTX64.EFI"] == systemd_boot.read_bytes()
    assert files["EFI/xen/xen.cfg"] == plain["EFI/BOOT/BOOTX64.cfg"]
    assert files["EFI/xen/vmlinuz"] == plain["EFI/BOOT/vmlinuz"]
    lines = files["loader/entries/xen.conf"].decode().splitlines()
    assert [line for line in lines if not line.startswith("#")] == [
        "title Xen (xen)", "version 4.17", "architecture x64", "efi /EFI/xen/xen.efi",
        "options xen.efi xen",
    ]  # fmt: skip
    conf = files["loader/loader.conf"].decode()
    assert "timeout 0\ndefault xen.conf\n" in conf and "editor" not in conf
    # Xen as the ESP's own, but with a .reloc every loader maps.
    xen = sections(tmp_path / "esp/EFI/xen/xen.efi")
    original = sections(tmp_path / "plain/EFI/BOOT/BOOTX64.EFI")
    assert list(xen) == list(original)
    assert original[".reloc"].characteristics & DISCARDABLE
    assert xen[".reloc"].characteristics == original[".reloc"].characteristics & ~DISCARDABLE
    build(description, tmp_path / "again", "--loader", "systemd-boot")
    assert tree(tmp_path / "again") == files


def test_type2_tree_holds_the_unified_image_systemd_boot_lists(
    systemd_boot: Path, tmp_path: Path
) -> None:
    description = descriptions.x86_classic(tmp_path)
    build(description, tmp_path / "esp", "--loader", "systemd-boot-uki")
    image = tmp_path / "esp/EFI/Linux/xen.efi"
    build(description, tmp_path / "uki.efi", "--loader", "systemd-boot", fmt="unified")
    assert image.read_bytes() == (tmp_path / "uki.efi").read_bytes()
    osrel = section_bytes(image, ".osrel").decode()
    assert osrel == ('NAME=Xen\nID=xen\nPRETTY_NAME="Xen (xen)"\nVERSION_ID=4.17\nIMAGE_ID=xen\n')
    assert section_bytes(image, ".cmdline") == b"xen.efi xen"
    # objdump reads the sections where systemd-boot's PE reader looks for them.
    listing = subprocess.run(["objdump", "-h", image], capture_output=True, text=True,
                             check=True).stdout  # fmt: skip
    assert ".osrel" in listing and ".cmdline" in listing
    assert "default xen.efi\n" in (tmp_path / "esp/loader/loader.conf").read_text()
    build(description, tmp_path / "plain.efi", fmt="unified")
    assert ".osrel" not in sections(tmp_path / "plain.efi")


def test_disk_holds_the_same_tree(systemd_boot: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    build(description, tmp_path / "esp", "--loader", "systemd-boot")
    build(description, tmp_path / "disk.img", "--loader", "systemd-boot", fmt="disk")
    files = tree(tmp_path / "esp")
    with (tmp_path / "disk.img").open("rb") as stream:
        _, partitions = gpt.parse(stream)
        offset = partitions[0].offset
        listed = {entry.path.lstrip("/") for entry in fat.list_files(stream, offset)}
        assert listed == set(files)
        for name, data in files.items():
            assert b"".join(fat.read_file(stream, offset, name)) == data, name
    manifest = json.loads((tmp_path / "disk.img.manifest.json").read_text())
    assert {image["path"] for image in manifest["pe_images"]} == {
        "EFI/BOOT/BOOTX64.EFI", "EFI/xen/xen.efi",
    }  # fmt: skip


def sign_options(tmp_path: Path) -> list[str | Path]:
    key, cert = key_and_certificate()
    (tmp_path / "key.pem").write_bytes(key)
    (tmp_path / "cert.pem").write_bytes(cert)
    return ["--key", tmp_path / "key.pem", "--cert", tmp_path / "cert.pem"]


def sbverify(path: Path, cert: Path) -> None:
    result = subprocess.run(["sbverify", "--cert", cert, path], capture_output=True, text=True)
    assert result.returncode == 0, f"{path}: {result.stdout}{result.stderr}"


@pytest.fixture
def shim(cache: Path) -> Path:
    require(SHIM.is_file(), f"{SHIM} missing (package shim-unsigned)")
    require(shutil.which("sbverify") is not None, "sbverify missing (package sbsigntool)")
    return SHIM


def shim_description(tmp_path: Path) -> Path:
    (tmp_path / "sbat.csv").write_text("# comment\n" + SBAT)
    return descriptions.x86_classic(tmp_path, xen_extra='sbat = "sbat.csv"\n')


def test_shim_tree_signed_for_db(shim: Path, tmp_path: Path) -> None:
    description = shim_description(tmp_path)
    esp = tmp_path / "esp"
    stderr = build(description, esp, "--shim", shim, *sign_options(tmp_path))
    files = tree(esp)
    assert sorted(files) == [
        "EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/dom0.cpio.gz", "EFI/BOOT/grubx64.cfg",
        "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi", "EFI/BOOT/vmlinuz",
    ]  # fmt: skip
    # What the chain starts, each signed: shim, MokManager, Xen, and dom0's kernel, which Xen
    # has shim verify.
    for name in ("BOOTX64.EFI", "mmx64.efi", "grubx64.efi", "vmlinuz"):
        sbverify(esp / "EFI/BOOT" / name, tmp_path / "cert.pem")
    assert "dom0's kernel is not signed" not in stderr
    xen = esp / "EFI/BOOT/grubx64.efi"
    assert section_bytes(xen, ".sbat") == SBAT.encode()
    assert not sections(xen)[".reloc"].characteristics & DISCARDABLE
    build(description, tmp_path / "again", "--shim", shim, *sign_options(tmp_path))
    assert tree(tmp_path / "again") == files


def test_a_signed_shim_keeps_its_signature(shim: Path, tmp_path: Path) -> None:
    """shim-signed's shim carries Microsoft's signature, which --key must not replace: a shim
    signed with another key is copied unchanged while Xen is signed with --key."""
    other = tmp_path / "other"
    other.mkdir()
    signed_shim = tmp_path / "shimx64.efi"
    result = run_cli("sign", shim, *sign_options(other), "-o", signed_shim)
    assert result.code == 0, result.stderr
    description = shim_description(tmp_path)
    esp = tmp_path / "esp"
    stderr = build(description, esp, "--shim", signed_shim, *sign_options(tmp_path))
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == signed_shim.read_bytes()
    assert "already signed" in stderr
    assert not (esp / "EFI/BOOT/mmx64.efi").exists()  # none beside the shim given
    sbverify(esp / "EFI/BOOT/grubx64.efi", tmp_path / "cert.pem")


def test_shim_without_key_warns_about_the_kernel(shim: Path, tmp_path: Path) -> None:
    stderr = build(shim_description(tmp_path), tmp_path / "esp", "--shim", shim)
    assert "dom0's kernel is not signed" in stderr
    assert (tmp_path / "esp/EFI/BOOT/BOOTX64.EFI").read_bytes() == shim.read_bytes()


@pytest.mark.parametrize("fmt", ["esp", "disk"])
def test_loader_uefi_is_the_default_layout(tmp_path: Path, fmt: str) -> None:
    """--loader uefi names what the format does anyway: the same bytes, not a chain."""
    description = descriptions.x86_classic(tmp_path)
    plain, uefi = tmp_path / "plain", tmp_path / "uefi"
    build(description, plain, fmt=fmt)
    build(description, uefi, "--loader", "uefi", fmt=fmt)
    if fmt == "esp":
        assert tree(uefi) == tree(plain)
    else:
        assert uefi.read_bytes() == plain.read_bytes()


def test_unified_esp_holds_the_unified_image_alone(tmp_path: Path) -> None:
    """--unified: BOOTX64.EFI is, byte for byte, what --format unified writes."""
    description = descriptions.x86_classic(tmp_path)
    build(description, tmp_path / "xen.efi", fmt="unified")
    build(description, tmp_path / "esp", "--unified")
    assert tree(tmp_path / "esp") == {"EFI/BOOT/BOOTX64.EFI": (tmp_path / "xen.efi").read_bytes()}
    build(description, tmp_path / "disk.img", "--unified", fmt="disk")
    with (tmp_path / "disk.img").open("rb") as stream:
        _, partitions = gpt.parse(stream)
        offset = partitions[0].offset
        assert [entry.path.lstrip("/") for entry in fat.list_files(stream, offset)] == [
            "EFI/BOOT/BOOTX64.EFI"
        ]
        image = b"".join(fat.read_file(stream, offset, "EFI/BOOT/BOOTX64.EFI"))
        assert image == (tmp_path / "xen.efi").read_bytes()
    manifest = json.loads((tmp_path / "disk.img.manifest.json").read_text())
    assert [image["path"] for image in manifest["pe_images"]] == ["EFI/BOOT/BOOTX64.EFI"]


def test_shim_with_the_unified_image_signed(shim: Path, tmp_path: Path) -> None:
    """--shim --unified: shim, and the unified image as grubx64.efi, signed as a whole; the
    kernel inside it signed too, for a Xen before 4.21 that has shim verify it."""
    description = shim_description(tmp_path)
    esp = tmp_path / "esp"
    stderr = build(description, esp, "--shim", shim, "--unified", *sign_options(tmp_path))
    files = tree(esp)
    assert sorted(files) == ["EFI/BOOT/BOOTX64.EFI", "EFI/BOOT/grubx64.efi", "EFI/BOOT/mmx64.efi"]
    assert "dom0's kernel is not signed" not in stderr
    xen = esp / "EFI/BOOT/grubx64.efi"
    for name in ("BOOTX64.EFI", "grubx64.efi"):
        sbverify(esp / "EFI/BOOT" / name, tmp_path / "cert.pem")
    kernel = tmp_path / "kernel.efi"
    kernel.write_bytes(section_bytes(xen, ".kernel"))
    sbverify(kernel, tmp_path / "cert.pem")
    assert {".config", ".kernel", ".ramdisk", ".sbat"} <= set(sections(xen))
    assert section_bytes(xen, ".sbat") == SBAT.encode()
    assert not sections(xen)[".reloc"].characteristics & DISCARDABLE
    build(description, tmp_path / "again", "--shim", shim, "--unified", *sign_options(tmp_path))
    assert tree(tmp_path / "again") == files
