"""x86 unified images, checked with objdump and pefile (no boot: tests/e2e boots them)."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pefile
import pytest

from hlimage.formats import compression, cpio, pe
from hlimage.plumbing.streams import file_sha256
from tests.conftest import require, run_cli, write_description
from tests.support import payloads

PAYLOAD_SECTIONS = [".config", ".kernel", ".ramdisk"]


def build(description: Path, output: Path, *extra: str) -> str:
    result = run_cli("build", description, "--format", "unified", "-o", output, *extra)
    assert result.code == 0, result.stderr
    return result.stderr


def objdump_sections(path: Path) -> dict[str, tuple[int, int, int]]:
    """name -> (size, vma, file offset) as binutils reads them."""
    require(shutil.which("objdump") is not None, "objdump (binutils) not installed")
    text = subprocess.run(["objdump", "-h", "-w", str(path)], capture_output=True, text=True,
                          check=True).stdout  # fmt: skip
    sections = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) > 6 and fields[0].isdigit():
            sections[fields[1]] = (int(fields[2], 16), int(fields[3], 16), int(fields[5], 16))
    return sections


@pytest.mark.parametrize("xen_version", payloads.XEN_VERSIONS)
def test_layout_agrees_with_objdump_and_pefile(
    x86_system: Path, tmp_path: Path, xen_version: str
) -> None:
    """4.17 ends in a 6 MiB .pad; 4.20 has none, keeps its DWARF (counted in SizeOfImage) and
    names .data.read_mostly through the COFF string table: each must come out the same way."""
    xen_efi = payloads.xen_efi("x86_64", xen_version)
    description = x86_system.read_text().replace(str(payloads.path("x86_64/xen.efi")), str(xen_efi))
    x86_system.write_text(description)
    output = tmp_path / "xen-unified.efi"
    build(x86_system, output)
    image = pefile.PE(str(output))
    base = image.OPTIONAL_HEADER.ImageBase
    section_alignment = image.OPTIONAL_HEADER.SectionAlignment
    file_alignment = image.OPTIONAL_HEADER.FileAlignment
    dumped = objdump_sections(output)
    names = [s.Name.rstrip(b"\0").decode() for s in image.sections]
    assert names[-3:] == PAYLOAD_SECTIONS
    assert not any(name.startswith(".debug") for name in names)
    last_end = 0
    previous_raw_end = image.OPTIONAL_HEADER.SizeOfHeaders
    for section in image.sections:
        name = section.Name.rstrip(b"\0").decode()
        rva, vsize = section.VirtualAddress, section.Misc_VirtualSize
        # objdump and pefile agree on where every section is.
        assert dumped[name][1] == base + rva
        if section.SizeOfRawData:
            assert dumped[name][2] == section.PointerToRawData
            # No gaps and no overlaps in the file: each section starts where the last ended.
            assert section.PointerToRawData == previous_raw_end
            assert section.PointerToRawData % file_alignment == 0
            assert section.SizeOfRawData % file_alignment == 0
            previous_raw_end = section.PointerToRawData + section.SizeOfRawData
        # Sorted by RVA, no overlaps in memory.
        assert rva >= last_end
        last_end = rva + (vsize or section.SizeOfRawData)
        if name in PAYLOAD_SECTIONS:
            assert rva % section_alignment == 0 and rva % 4096 == 0
    assert previous_raw_end == output.stat().st_size
    sizes = {
        ".kernel": (payloads.CACHE / "x86_64/vmlinuz").stat().st_size,
        ".ramdisk": (x86_system.parent / "initrd.gz").stat().st_size,
    }
    for section in image.sections:
        name = section.Name.rstrip(b"\0").decode()
        if name in sizes:
            assert section.Misc_VirtualSize == sizes[name]
            assert dumped[name][0] == sizes[name]
    assert image.OPTIONAL_HEADER.SizeOfImage % section_alignment == 0
    # Dropped debug sections are no longer counted (4.20's would add 26 MiB).
    assert (
        image.OPTIONAL_HEADER.SizeOfImage == -(-last_end // section_alignment) * section_alignment
    )
    assert image.OPTIONAL_HEADER.CheckSum == image.generate_checksum()
    assert image.FILE_HEADER.PointerToSymbolTable == 0
    table_end = (image.DOS_HEADER.e_lfanew + 24 + image.FILE_HEADER.SizeOfOptionalHeader
                 + 40 * image.FILE_HEADER.NumberOfSections)  # fmt: skip
    assert image.OPTIONAL_HEADER.SizeOfHeaders >= table_end
    # Xen's own code and data are carried over unchanged, except the debug directory's file
    # pointer, which follows its data to the new offset.
    source = xen_efi.read_bytes()
    written = output.read_bytes()
    with xen_efi.open("rb") as stream:
        original = pe.parse(stream)
    debug_rva = original.directory(pe.DIRECTORY_DEBUG)[0]
    for section in original.sections:
        if not section.raw_size or section.is_debug:
            continue
        copied = next(s for s in image.sections if s.VirtualAddress == section.virtual_address)
        old = source[section.raw_offset : section.raw_offset + section.data_size]
        new = written[copied.PointerToRawData : copied.PointerToRawData + section.data_size]
        if section.virtual_address <= debug_rva < section.virtual_address + section.data_size:
            field = debug_rva - section.virtual_address + pe.DEBUG_POINTER_OFFSET
            shift = copied.PointerToRawData - section.raw_offset
            old_pointer = int.from_bytes(old[field : field + 4], "little")
            assert int.from_bytes(new[field : field + 4], "little") == old_pointer + shift
            old, new = old[:field] + old[field + 4 :], new[:field] + new[field + 4 :]
        assert old == new, section.name


def test_inspect_round_trips(x86_system: Path, tmp_path: Path) -> None:
    output = tmp_path / "xen-unified.efi"
    build(x86_system, output)
    result = run_cli("inspect", "--json", output)
    assert result.code == 0, result.stderr
    data = json.loads(result.stdout)
    sections = {s["name"]: s for s in data["sections"]}
    config_text = run_cli("efi-config", "--embedded", x86_system).stdout
    assert sections[".config"]["payload"]["text"] == config_text
    assert sections[".config"]["payload"]["parsed"]["xen"]["kernel"] == (
        "vmlinuz console=hvc0 earlyprintk=xen"
    )
    assert "dom0_mem=512M" in sections[".config"]["payload"]["parsed"]["xen"]["options"]
    assert sections[".kernel"]["sha256"] == file_sha256(payloads.CACHE / "x86_64/vmlinuz")
    assert "bzImage, x86_64" in sections[".kernel"]["payload"]["detail"]
    assert sections[".ramdisk"]["sha256"] == file_sha256(x86_system.parent / "initrd.gz")
    assert sections[".ramdisk"]["payload"]["detail"] == "gzip compressed"
    assert data["xen"]["version"] == "4.17"
    text = run_cli("inspect", output).stdout
    assert "Xen 4.17" in text and "| kernel=vmlinuz console=hvc0" in text


def test_two_builds_are_identical(x86_system: Path, tmp_path: Path) -> None:
    build(x86_system, tmp_path / "a.efi")
    build(x86_system, tmp_path / "b.efi")
    assert file_sha256(tmp_path / "a.efi") == file_sha256(tmp_path / "b.efi")


def test_inspect_reads_an_objcopy_image(x86_system: Path, tmp_path: Path) -> None:
    """The objcopy recipe of Xen's docs (docs/xen-boot-formats.md 4.4)."""
    require(shutil.which("objcopy") is not None, "objcopy (binutils) not installed")
    cfg = tmp_path / "xen.cfg"
    cfg.write_text(run_cli("efi-config", "--embedded", x86_system).stdout)
    stripped = tmp_path / "xen-s.efi"
    xen = str(payloads.CACHE / "x86_64/xen.efi")
    subprocess.run(["objcopy", "--strip-debug", xen, str(stripped)], check=True)
    out = tmp_path / "objcopy.efi"
    base = 0xFFFF82D041000000
    subprocess.run(
        ["objcopy",
         "--add-section", f".config={cfg}", "--change-section-vma", f".config={base:#x}",
         "--add-section", f".kernel={payloads.CACHE / 'x86_64/vmlinuz'}",
         "--change-section-vma", f".kernel={base + 0x200000:#x}",
         "--add-section", f".ramdisk={x86_system.parent / 'initrd.gz'}",
         "--change-section-vma", f".ramdisk={base + 0x1000000:#x}",
         str(stripped), str(out)],
        check=True,
    )  # fmt: skip
    data = json.loads(run_cli("inspect", "--json", out).stdout)
    sections = {s["name"]: s for s in data["sections"]}
    assert sections[".kernel"]["sha256"] == file_sha256(payloads.CACHE / "x86_64/vmlinuz")
    assert sections[".ramdisk"]["sha256"] == file_sha256(x86_system.parent / "initrd.gz")
    assert sections[".config"]["payload"]["parsed"]["xen"]["kernel"].startswith("vmlinuz ")
    # And hlimage refuses to add to it unless asked to replace.
    description = x86_system.read_text().replace(str(payloads.CACHE / "x86_64/xen.efi"), str(out))
    again = write_description(tmp_path, description, "again.toml")
    result = run_cli("build", again, "--format", "unified", "-o", tmp_path / "again.efi")
    assert result.code == 2
    assert (
        "already has .config, .kernel, .ramdisk" in result.stderr and "--replace" in result.stderr
    )
    assert not (tmp_path / "again.efi").exists()
    build(again, tmp_path / "again.efi", "--replace")
    replaced = pefile.PE(str(tmp_path / "again.efi"), fast_load=True)
    names = [s.Name.rstrip(b"\0").decode() for s in replaced.sections]
    assert names.count(".kernel") == 1 and names[-3:] == PAYLOAD_SECTIONS


def test_debug_sections_are_dropped(x86_system: Path, tmp_path: Path) -> None:
    """Xen built with debug info: .debug_* sections (long COFF names) would overlap payloads."""
    require(shutil.which("objcopy") is not None, "objcopy (binutils) not installed")
    blob = tmp_path / "blob"
    blob.write_bytes(os.urandom(5000))
    with_debug = tmp_path / "xen-debug.efi"
    subprocess.run(["objcopy", "--add-section", f".debug_info={blob}", "--set-section-flags",
                    ".debug_info=contents,alloc,load,readonly,data",
                    str(payloads.CACHE / "x86_64/xen.efi"), str(with_debug)],
                   check=True)  # fmt: skip
    with with_debug.open("rb") as stream:
        assert any(s.is_debug for s in pe.parse(stream).sections)
    description = x86_system.read_text().replace(
        str(payloads.CACHE / "x86_64/xen.efi"), str(with_debug)
    )
    path = write_description(tmp_path, description, "debug.toml")
    stderr = build(path, tmp_path / "out.efi")
    assert "dropping 1 debug sections" in stderr
    names = [
        s.Name.rstrip(b"\0") for s in pefile.PE(str(tmp_path / "out.efi"), fast_load=True).sections
    ]
    assert not any(name.startswith((b".debug", b"/")) for name in names)


def test_signed_input_loses_its_signature_with_a_warning(x86_system: Path, tmp_path: Path) -> None:
    require(shutil.which("sbsign") is not None, "sbsigntool not installed")
    signed = tmp_path / "xen-signed.efi"
    subprocess.run(["sbsign", "--key", "/usr/share/ovmf/PkKek-1-snakeoil.key", "--cert",
                    "/usr/share/ovmf/PkKek-1-snakeoil.pem", "--output", str(signed),
                    str(payloads.CACHE / "x86_64/xen.efi")],
                   input=b"snakeoil\n", capture_output=True, check=False)  # fmt: skip
    require(signed.exists(), "sbsign could not sign with the snakeoil key")
    description = x86_system.read_text().replace(
        str(payloads.CACHE / "x86_64/xen.efi"), str(signed)
    )
    path = write_description(tmp_path, description, "signed.toml")
    stderr = build(path, tmp_path / "out.efi")
    assert "signature is removed" in stderr and "sign the output afterwards" in stderr
    image = pefile.PE(str(tmp_path / "out.efi"), fast_load=True)
    assert image.OPTIONAL_HEADER.DATA_DIRECTORY[4].Size == 0


def test_initrd_parts_are_joined_on_4_byte_boundaries(x86_system: Path, tmp_path: Path) -> None:
    odd = tmp_path / "odd.bin"
    # A whole archive without the zero padding after its trailer's name: 4n+1 bytes, so the
    # next part starts after 3 bytes of padding. (Not a cpio header cut short: that is refused.)
    odd.write_bytes(cpio.build([cpio.regular("kernel/x86/microcode/x.bin", b"abc")])[:-3])
    assert len(odd.read_bytes()) % 4 == 1
    description = x86_system.read_text().replace(
        'initrd = "initrd.gz"', 'initrd = ["odd.bin", "initrd.gz"]'
    )
    path = write_description(tmp_path, description, "parts.toml")
    build(path, tmp_path / "out.efi")
    data = json.loads(run_cli("inspect", "--json", tmp_path / "out.efi").stdout)
    ramdisk = next(s for s in data["sections"] if s["name"] == ".ramdisk")
    joined = odd.read_bytes() + b"\0" * 3 + (tmp_path / "initrd.gz").read_bytes()
    assert ramdisk["virtual_size"] == len(joined)
    assert ramdisk["sha256"] == hashlib.sha256(joined).hexdigest()


def test_lz4_recompression(x86_system: Path, tmp_path: Path) -> None:
    payloads.make_initramfs("x86_64", "dom0", tmp_path / "second.xz", compression="xz")
    description = x86_system.read_text().replace(
        'initrd = "initrd.gz"', 'initrd = ["initrd.gz", "second.xz"]\ninitrd_compression = "lz4"'
    )
    path = write_description(tmp_path, description, "lz4.toml")
    build(path, tmp_path / "out.efi")
    image = pefile.PE(str(tmp_path / "out.efi"), fast_load=True)
    ramdisk = next(s for s in image.sections if s.Name.startswith(b".ramdisk"))
    # Read by offset: pefile's get_data rounds small FileAlignments to 0x200.
    start = ramdisk.PointerToRawData
    data = (tmp_path / "out.efi").read_bytes()[start : start + ramdisk.Misc_VirtualSize]
    assert data[:4] == bytes.fromhex("02214c18")  # LZ4 legacy magic
    plain = b"".join(compression.lz4_legacy_decompress([data]))
    first = gzip.decompress((tmp_path / "initrd.gz").read_bytes())
    second = payloads.initramfs_cpio("x86_64", "dom0")
    padding = b"\0" * (-len(first) % 4)
    assert plain == first + padding + second
    if shutil.which("lz4"):
        (tmp_path / "r.lz4").write_bytes(data)
        out = subprocess.run(
            ["lz4", "-dc", str(tmp_path / "r.lz4")], capture_output=True, check=True
        )
        assert out.stdout == plain
    # A manifest's digests need the headers first, so the LZ4 stream (its size known only once
    # compressed) is spooled first; without the manifest the headers follow the data. The two
    # give the same bytes, and the manifest's section digest is of what is in the image.
    result = run_cli("build", path, "-f", "unified", "-o", tmp_path / "loose.efi", "--no-manifest")
    assert result.code == 0, result.stderr
    assert (tmp_path / "loose.efi").read_bytes() == (tmp_path / "out.efi").read_bytes()
    manifest = json.loads((tmp_path / "out.efi.manifest.json").read_text())
    listed = {item["name"]: item["sha256"] for item in manifest["artifacts"]}
    assert listed[".ramdisk"] == hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (('cmdline = "console=hvc0 earlyprintk=xen"', 'cmdline = "console=hvc0 café"'),
         "cmdline: non-ASCII character 'é' at position 17 (xen.cfg is ASCII only)"),
        (('cmdline = "console=hvc0 earlyprintk=xen"', 'cmdline = "console=hvc0 #x"'),
         "cmdline: '#' at position 14 (xen.cfg starts a comment there)"),
        (("loglvl=all", "loglvl=all dom0_mem=1G"),
         '[[domain]] "dom0" memory and [xen] cmdline both set dom0_mem (512M and 1G); keep one'),
        (('memory = "512M"', 'memory = "512M"\n[[domain]]\nname = "g"\nkernel = "initrd.gz"'),
         "a unified image carries one domain, dom0, the description has 2 domain(s) (dom0, g)"),
    ],
)  # fmt: skip
def test_description_errors(
    x86_system: Path, tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    path = write_description(tmp_path, x86_system.read_text().replace(*edit), "bad.toml")
    result = run_cli("build", path, "--format", "unified", "-o", tmp_path / "out.efi")
    assert result.code == 2, result.stderr
    assert expected in result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out.efi").exists()


def test_wrong_arch_kernel(x86_system: Path, tmp_path: Path) -> None:
    description = x86_system.read_text().replace(
        str(payloads.CACHE / "x86_64/vmlinuz"), str(payloads.CACHE / "arm64/Image")
    )
    path = write_description(tmp_path, description, "bad.toml")
    result = run_cli("build", path, "--format", "unified", "-o", tmp_path / "out.efi")
    assert result.code == 2
    assert re.search(r'kernel: an arm64 kernel .* but \[image\] arch is "x86_64"', result.stderr)
    assert not (tmp_path / "out.efi").exists()


def test_xen_that_is_not_xen(x86_system: Path, tmp_path: Path) -> None:
    description = x86_system.read_text().replace(
        str(payloads.CACHE / "x86_64/xen.efi"), str(payloads.CACHE / "x86_64/vmlinuz")
    )
    path = write_description(tmp_path, description, "bad.toml")
    result = run_cli("build", path, "--format", "unified", "-o", tmp_path / "out.efi")
    assert result.code == 2
    assert "[xen] efi: this PE image is not Xen" in result.stderr


def test_image_that_cannot_end_below_4g(x86_system: Path, tmp_path: Path) -> None:
    huge = tmp_path / "huge.img"
    with huge.open("wb") as stream:
        stream.truncate(4 << 30)  # sparse: nothing is read before the check refuses it
    description = x86_system.read_text().replace('initrd = "initrd.gz"', 'initrd = "huge.img"')
    path = write_description(tmp_path, description, "big.toml")
    result = run_cli("build", path, "--format", "unified", "-o", tmp_path / "out.efi")
    assert result.code == 2
    assert "Xen must end below 4 GiB" in result.stderr
    assert not (tmp_path / "out.efi").exists()
    assert not list(tmp_path.glob(".out.efi.*"))


def test_large_payload_warning(x86_system: Path, tmp_path: Path) -> None:
    big = tmp_path / "big.img"
    with big.open("wb") as stream:
        stream.write(payloads.initramfs_cpio("x86_64", "dom0"))
        stream.truncate(300 << 20)
    description = x86_system.read_text().replace('initrd = "initrd.gz"', 'initrd = "big.img"')
    path = write_description(tmp_path, description, "big.toml")
    stderr = build(path, tmp_path / "out.efi")
    assert "warning: payloads total 311 MiB" in stderr and "above 4 GiB" in stderr


def test_killed_build_leaves_the_previous_output(x86_system: Path, tmp_path: Path) -> None:
    """SIGKILL in the middle of writing: the target keeps the last complete image."""
    output = tmp_path / "out.efi"
    build(x86_system, output)
    previous = file_sha256(output)
    big = tmp_path / "big.img"
    with big.open("wb") as stream:
        stream.write(payloads.initramfs_cpio("x86_64", "dom0"))
        stream.truncate(2 << 30)
    description = x86_system.read_text().replace('initrd = "initrd.gz"', 'initrd = "big.img"')
    path = write_description(tmp_path, description, "big.toml")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hlimage.cli",
            "build",
            str(path),
            "-f",
            "unified",
            "-o",
            str(output),
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        temporaries = list(tmp_path.glob(".out.efi.*"))
        if temporaries and temporaries[0].stat().st_size > 64 << 20:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the build never got going")
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert file_sha256(output) == previous


def test_arm64_wrapped_layout(cache: Path, tmp_path: Path) -> None:
    """docs/xen-boot-formats.md 4.5: Xen whole at RVA 0x1000 with its BSS, payloads page-aligned
    after it, entry point moved by 0x1000, SizeOfHeaders covering the section table."""
    payloads.make_initramfs("arm64", "dom0", tmp_path / "initrd.gz")
    xen_path = cache / "arm64/xen.efi"
    description = write_description(
        tmp_path,
        f"""
[image]
arch = "arm64"
[xen]
efi = "{xen_path}"
dtb = "{cache / payloads.ARM64_DTB}"
[[domain]]
name = "dom0"
kernel = "{cache / "arm64/Image"}"
initrd = "initrd.gz"
""",
    )
    output = tmp_path / "xen-arm64.efi"
    build(description, output)
    with xen_path.open("rb") as stream:
        xen = pe.parse(stream)
    image = pefile.PE(str(output), fast_load=True)
    assert image.FILE_HEADER.Machine == pe.MACHINE_ARM64
    assert image.OPTIONAL_HEADER.SizeOfHeaders == 0x1000
    assert image.OPTIONAL_HEADER.SectionAlignment == 0x1000
    assert image.OPTIONAL_HEADER.ImageBase == 0
    names = [s.Name.rstrip(b"\0").decode() for s in image.sections]
    assert names == [".text", ".config", ".dtb", ".kernel", ".ramdisk"]
    inner = image.sections[0]
    assert inner.VirtualAddress == 0x1000 and inner.Misc_VirtualSize == xen.size_of_image
    data = output.read_bytes()
    assert (
        data[inner.PointerToRawData : inner.PointerToRawData + xen.file_size]
        == xen_path.read_bytes()
    )
    assert (
        image.OPTIONAL_HEADER.AddressOfEntryPoint == int(xen.optional.AddressOfEntryPoint) + 0x1000
    )
    end = 0x1000 + xen.size_of_image
    for section in image.sections[1:]:
        assert section.VirtualAddress % 0x1000 == 0 and section.VirtualAddress >= end
        assert section.PointerToRawData % 0x200 == 0
        end = section.VirtualAddress + section.Misc_VirtualSize
    assert image.OPTIONAL_HEADER.SizeOfImage == (end + 0xFFF) & ~0xFFF
    assert image.OPTIONAL_HEADER.CheckSum == image.generate_checksum()
    dtb = image.sections[2]
    start = dtb.PointerToRawData
    assert data[start : start + dtb.Misc_VirtualSize] == (cache / payloads.ARM64_DTB).read_bytes()
