"""Fuzzing `hlimage inspect` on mutated real outputs: unified images (x86, arm64, signed), an
ESP tree, a GPT disk image, a dom0less device tree, a U-Boot tree, its script and a FIT, each
built once from the cached Xen images with small stand-in kernels, then changed in their
headers and tables."""

from __future__ import annotations

import gzip
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from hlimage import build, config, inspection
from hlimage.formats import cpio, gpt, linux, pe
from tests.fuzz.conftest import FUZZ_SLOW, Hot, mutated, survives
from tests.support.signing import key_and_certificate


def fake_bzimage() -> bytes:
    """Enough of a bzImage for the probes: the setup header with boot protocol 2.15."""
    data = bytearray(32 * 1024)
    data[linux.SETUP_HEADER_OFFSET] = 4  # setup_sects
    data[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", data, 0x206, 0x020F)
    return bytes(data)


def fake_arm64_image() -> bytes:
    data = bytearray(32 * 1024)
    data[linux.ARM64_MAGIC_OFFSET : linux.ARM64_MAGIC_OFFSET + 4] = linux.ARM64_MAGIC
    data[0x200:0x220] = b"Linux version 6.1.0-fuzz (test)\0"
    return bytes(data)


@pytest.fixture(scope="session")
def outputs(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One of each output inspect reads."""
    from hlimage.secureboot.trust import SigningKey, sign_file

    root = tmp_path_factory.mktemp("fuzz-outputs")
    (root / "bzImage").write_bytes(fake_bzimage())
    (root / "Image").write_bytes(fake_arm64_image())
    initrd = cpio.build([cpio.regular("init", b"#!/bin/sh\necho hello\n", 0o755)])
    (root / "initrd.gz").write_bytes(gzip.compress(initrd, mtime=0))
    (root / "x86.toml").write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "{cache}/x86_64/xen.efi"\n'
        'cmdline = "console=com1"\n[[domain]]\nname = "dom0"\nkernel = "bzImage"\n'
        'initrd = "initrd.gz"\ncmdline = "console=hvc0"\nmemory = "512M"\n'
    )
    guest = (
        '[[domain]]\nname = "guest"\nkernel = "Image"\ninitrd = "initrd.gz"\n'
        'memory = "128M"\nvcpus = 1\n'
    )
    arm64 = (
        f'[image]\narch = "arm64"\n[xen]\nefi = "{cache}/arm64/xen.efi"\n'
        f'dtb = "{cache}/arm64/virt-gicv3.dtb"\ncmdline = "console=dtuart"\n'
        '[[domain]]\nname = "dom0"\nkernel = "Image"\ninitrd = "initrd.gz"\nmemory = "512M"\n'
    )
    (root / "arm64.toml").write_text(arm64)
    (root / "dom0less.toml").write_text(arm64 + guest)
    made = {
        "x86-unified": ("x86.toml", "unified", root / "x86.efi"),
        "arm64-unified": ("arm64.toml", "unified", root / "arm64.efi"),
        "esp": ("dom0less.toml", "esp", root / "esp"),
        "disk": ("dom0less.toml", "disk", root / "disk.img"),
        "uboot": ("dom0less.toml", "uboot", root / "uboot"),
        "fit": ("dom0less.toml", "fit", root / "boot.fit"),
    }
    for description, output_format, output in made.values():
        system = config.load(root / description)
        build.build(system, output_format, output, manifest=False)
    paths = {name: output for name, (_, _, output) in made.items()}
    key_pem, cert_pem = key_and_certificate()
    paths["signed"] = root / "signed.efi"
    sign_file(paths["x86-unified"], paths["signed"], SigningKey(key_pem, cert_pem, None))
    paths["script"] = paths["uboot"] / "boot.scr"
    paths["dtb"] = root / "dom0less.dtb"
    paths["dtb"].write_bytes(build.lcm(config.load(root / "dom0less.toml")))
    return paths


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-inspect")


def hot_ranges(path: Path) -> Hot:
    """Where a file's structure is: PE headers and the certificate table, the GPT and the
    FAT's boot sector, tables and root directory, a DTB's header and structure block."""
    data = path.read_bytes()
    if data[:2] == b"MZ":
        with path.open("rb") as stream:
            image = pe.parse(stream)
        ranges = [(0, image.header_bytes_needed + 64)]
        config_section = image.section(".config")
        if config_section is not None:
            ranges.append((config_section.raw_offset, config_section.raw_offset + 256))
        if image.signature is not None:
            offset, length = image.signature
            ranges.append((offset, offset + min(length, 4096)))
        return tuple(ranges)
    if data[:8] == b"\0" * 8 and data[512 : 512 + 8] == gpt.SIGNATURE:
        volume = 1 << 20
        return ((0, 0x4400), (volume, volume + 0x40000))
    return 0x2000


def check_inspect(target: Path, digests: bool) -> None:
    def run() -> str:
        data: dict[str, Any] = inspection.inspect_path(target, digests=digests)
        return inspection.render(data)

    text = survives(run)
    event("refused" if text is None else "inspected")


@FUZZ_SLOW
@given(
    st.sampled_from(["x86-unified", "arm64-unified", "signed", "disk", "dtb", "fit", "script"]),
    st.booleans(),
    st.data(),
)
def test_inspect_mutated_files(
    outputs: dict[str, Path], scratch: Path, name: str, digests: bool, data: st.DataObject
) -> None:
    source = outputs[name]
    target = scratch / "file"
    target.write_bytes(data.draw(mutated(source.read_bytes(), hot=hot_ranges(source))))
    event(name)
    check_inspect(target, digests)


@FUZZ_SLOW
@given(st.booleans(), st.data())
def test_inspect_mutated_esp(
    outputs: dict[str, Path], scratch: Path, digests: bool, data: st.DataObject
) -> None:
    """One file of the ESP tree changed: its loader, its BOOT*.cfg, its device tree."""
    tree = scratch / "esp"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(outputs["esp"], tree, symlinks=True)
    boot = tree / "EFI" / "BOOT"
    victim = boot / data.draw(st.sampled_from(sorted(p.name for p in boot.iterdir())))
    victim.write_bytes(data.draw(mutated(victim.read_bytes(), hot=hot_ranges(victim))))
    event(victim.name)
    check_inspect(tree, digests)


@FUZZ_SLOW
@given(st.booleans(), st.data())
def test_inspect_mutated_uboot_tree(
    outputs: dict[str, Path], scratch: Path, digests: bool, data: st.DataObject
) -> None:
    """One file of the U-Boot tree changed: its script, Xen, its device tree, a module."""
    tree = scratch / "uboot"
    shutil.rmtree(tree, ignore_errors=True)
    shutil.copytree(outputs["uboot"], tree, symlinks=True)
    victim = tree / data.draw(st.sampled_from(sorted(p.name for p in tree.iterdir())))
    victim.write_bytes(data.draw(mutated(victim.read_bytes(), hot=hot_ranges(victim))))
    event(victim.name)
    check_inspect(tree, digests)
