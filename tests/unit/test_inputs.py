"""Probing kernels, initrds and Xen images, on synthetic headers and the real payloads."""

from __future__ import annotations

import gzip
import io
import struct
from pathlib import Path

import pytest

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import compression, cpio, linux, multiboot2, xencfg
from hlimage.formats.payload import Region
from hlimage.inputs import probe_initrd, probe_kernel
from hlimage.xen.probe import probe_efi, probe_multiboot
from tests.support import payloads


def bzimage(protocol: int = 0x20F, version: bytes = b"6.1.0-test (builder)") -> bytes:
    head = bytearray(0x4000)
    head[0x1F1] = 4
    head[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", head, 0x206, protocol)
    struct.pack_into("<H", head, 0x20E, 0x1000 - 0x200)
    head[0x1000 : 0x1000 + len(version) + 1] = version + b"\0"
    return bytes(head)


def arm64_image() -> bytes:
    head = bytearray(0x1000)
    struct.pack_into("<I", head, 0, 0x91005A4D)
    head[0x38:0x3C] = linux.ARM64_MAGIC
    head[0x200:0x220] = b"Linux version 6.1.0-arm (x@y) "
    return bytes(head)


def write(tmp_path: Path, name: str, data: bytes) -> Region:
    path = tmp_path / name
    path.write_bytes(data)
    return Region(path)


def test_bzimage(tmp_path: Path) -> None:
    info = probe_kernel(write(tmp_path, "k", bzimage()))
    assert (info.kind, info.arch, info.version) == ("bzImage", "x86_64", "6.1.0-test")
    assert "boot protocol 2.15" in info.describe()


def test_old_bzimage_is_refused(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"boot protocol 2.06: Xen needs 2.08 or newer"):
        probe_kernel(write(tmp_path, "k", bzimage(0x206)))


def test_arm64_image_and_gzip(tmp_path: Path) -> None:
    assert probe_kernel(write(tmp_path, "Image", arm64_image())).arch == "arm64"
    packed = gzip.compress(arm64_image(), mtime=0)
    info = probe_kernel(write(tmp_path, "Image.gz", packed))
    assert (info.kind, info.arch) == ("gzip arm64-image", "arm64")


def test_gzip_kernel_with_trailing_padding_is_refused(tmp_path: Path) -> None:
    packed = gzip.compress(arm64_image(), mtime=0) + b"\0" * 512
    with pytest.raises(FormatError, match=r"512 bytes after the gzip stream"):
        probe_kernel(write(tmp_path, "Image.gz", packed))


def test_truncated_gzip_kernel(tmp_path: Path) -> None:
    packed = gzip.compress(arm64_image() * 64, mtime=0)
    with pytest.raises(FormatError, match=r"truncated gzip kernel"):
        probe_kernel(write(tmp_path, "Image.gz", packed[: len(packed) // 2]))


def test_elf_kernel_machine(tmp_path: Path) -> None:
    header = bytearray(64)
    header[:4] = b"\x7fELF"
    header[4], header[5], header[6] = 2, 1, 1  # 64-bit, little endian, version 1
    struct.pack_into("<HHI", header, 16, 2, 183, 1)  # ET_EXEC, EM_AARCH64
    struct.pack_into("<H", header, 52, 64)
    info = probe_kernel(write(tmp_path, "vmlinux", bytes(header) + b"\0" * 1024))
    assert (info.kind, info.arch) == ("elf", "arm64")


def test_not_a_kernel(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="not a kernel"):
        probe_kernel(write(tmp_path, "x", b"hello" * 100))


def test_initrd_kinds(tmp_path: Path) -> None:
    archive = cpio.build([cpio.regular("init", b"#!/bin/sh\n", 0o755)])
    assert (
        probe_initrd(write(tmp_path, "a", archive)).describe() == "cpio (newc), first member init"
    )
    assert probe_initrd(write(tmp_path, "b", gzip.compress(archive))).kind == "gzip"
    legacy = b"".join(compression.lz4_legacy_compress([archive]))
    assert probe_initrd(write(tmp_path, "c", legacy)).kind == "lz4-legacy"
    with pytest.raises(FormatError, match="LZ4 frame format"):
        probe_initrd(write(tmp_path, "d", bytes.fromhex("04224d18") + b"\0" * 16))


def test_cpio_members_round_trip() -> None:
    archive = cpio.build(
        [cpio.directory("bin"), cpio.regular("bin/x", b"abc"), cpio.symlink("bin/y", "x")]
    )
    names = [m.name for m in cpio.members(io.BytesIO(archive))]
    assert names == ["bin", "bin/x", "bin/y"]
    assert len(archive) % 4 == 0


def test_multiboot2_header_found_only_aligned() -> None:
    header = multiboot2.build(multiboot2.ARCH_I386)
    found = multiboot2.find(b"\0" * 64 + header)
    assert found is not None and found.offset == 64
    assert multiboot2.find(b"\0" * 60 + header) is None  # not 8-byte aligned
    broken = bytearray(header)
    broken[12] ^= 1
    assert multiboot2.find(b"\0" * 64 + bytes(broken)) is None


def test_xencfg_grammar() -> None:
    text = "; comment\n[global]\ndefault=a\n\n[a]\noptions=x=1 y # comment\nkernel=vmlinuz a b\n"
    text += "kernel=second\n  ramdisk = nope\n"
    parsed = xencfg.parse(text)
    assert parsed["global"] == {"default": "a"}
    assert parsed["a"]["options"] == "x=1 y"
    assert parsed["a"]["kernel"] == "vmlinuz a b"  # the first value wins
    assert "ramdisk " not in parsed["a"] and "ramdisk" not in parsed["a"]
    assert xencfg.split_kernel_line("vmlinuz a b") == ("vmlinuz", "a b")
    assert xencfg.value_problem("ok=1") is None
    assert "non-ASCII" in str(xencfg.value_problem("é"))


def test_real_payload_probes(cache: Path) -> None:
    x86 = probe_kernel(Region(cache / "x86_64/vmlinuz"))
    assert x86.kind == "bzImage" and x86.arch == "x86_64"
    arm = probe_kernel(Region(cache / "arm64/Image"))
    assert arm.arch == "arm64"
    xen = probe_efi(cache / "x86_64/xen.efi")
    assert (xen.arch, xen.version, xen.has_hyperlaunch, xen.signed) == (
        "x86_64",
        (4, 17),
        False,
        False,
    )
    assert probe_efi(cache / "arm64/xen.efi").arch == "arm64"
    multiboot = probe_multiboot(cache / "x86_64/xen.gz")
    assert multiboot.compressed and multiboot.version == (4, 17)
    assert "module-align" in multiboot.header.tags


@pytest.mark.parametrize("version", payloads.XEN_VERSIONS)
def test_each_xen_release_probes_as_itself(cache: Path, version: str) -> None:
    """The e2e tests' [4.17] and [4.20] ids are worth only what the files under those names
    are: a mixed-up cache would boot one release twice."""
    expected = tuple(int(part) for part in version.split("."))
    for arch in ("x86_64", "arm64"):
        xen = probe_efi(payloads.xen_efi(arch, version))
        assert (xen.arch, xen.version, xen.signed) == (arch, expected, False)
    multiboot = probe_multiboot(payloads.xen_gz(version))
    assert multiboot.compressed and multiboot.version == expected
    assert "module-align" in multiboot.header.tags


def test_multiboot_probe_refuses_a_pe(cache: Path) -> None:
    with pytest.raises(HlimageError, match=r"a PE image, not an ELF; GRUB's multiboot2"):
        probe_multiboot(cache / "x86_64/xen.efi")
    with pytest.raises(HlimageError, match="no multiboot2 header in the first 32 KiB"):
        probe_multiboot(cache / "x86_64/busybox")
