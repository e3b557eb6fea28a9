"""Fuzzing the input probes: kernels and initrds (hlimage.inputs) and Xen images
(hlimage.xen.probe), on random files and on mutations of the real ones."""

from __future__ import annotations

import gzip
import lzma
from pathlib import Path

import lz4.frame
import pytest
import zstandard
from hypothesis import event, given
from hypothesis import strategies as st

from hlimage.formats import compression, cpio
from hlimage.formats.payload import Region
from hlimage.inputs import InitrdInfo, KernelInfo, check_initrd_length, probe_initrd, probe_kernel
from hlimage.xen.probe import probe_efi, probe_multiboot
from tests.fuzz.conftest import FUZZ, FUZZ_SLOW, mutated, survives


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file, rewritten by each example (hypothesis runs examples one after another)."""
    return tmp_path_factory.mktemp("fuzz-probes") / "input"


def head(path: Path, count: int) -> bytes:
    with path.open("rb") as stream:
        return stream.read(count)


@pytest.fixture(scope="session")
def kernels(cache: Path) -> dict[str, bytes]:
    """Kernel files as the probes see them: the headers and a compressed stream or two."""
    image = head(cache / "arm64/Image", 256 * 1024)
    return {
        "bzImage": head(cache / "x86_64/vmlinuz", 64 * 1024),
        "Image": image,
        "Image.gz": gzip.compress(image, compresslevel=1, mtime=0),
        "Image.xz": lzma.compress(image[: 64 * 1024]),
        "Image.zst": zstandard.ZstdCompressor().compress(image[: 64 * 1024]),
        "xen-elf": gzip.decompress((cache / "x86_64/xen.gz").read_bytes())[: 64 * 1024],
    }


INITRD = cpio.build([cpio.directory("bin"), cpio.regular("init", b"#!/bin/sh\n" * 40, 0o755)])
INITRDS = {
    "cpio": INITRD,
    "gzip": gzip.compress(INITRD, mtime=0),
    "xz": lzma.compress(INITRD),
    "zstd": zstandard.ZstdCompressor().compress(INITRD),
    "lz4-legacy": b"".join(compression.lz4_legacy_compress([INITRD])),
    "lz4-frame": lz4.frame.compress(INITRD),
}


def _checked(region: Region) -> bool:
    check_initrd_length(region)
    return True


def probe_file(scratch: Path, data: bytes, probe: str) -> None:
    scratch.write_bytes(data)
    info: KernelInfo | InitrdInfo | None
    if probe == "kernel":
        info = survives(lambda: probe_kernel(Region(scratch)))
    else:
        info = survives(lambda: probe_initrd(Region(scratch)))
        if info is not None and info.kind != "unknown":
            whole = survives(lambda: _checked(Region(scratch)))
            event(f"initrd length: {'refused' if whole is None else 'whole'}")
    event(f"{probe}: {'refused' if info is None else info.kind}")
    if info is not None:
        info.describe()


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["kernel", "initrd"]))
def test_probe_random_files(scratch: Path, data: bytes, probe: str) -> None:
    probe_file(scratch, data, probe)


@FUZZ
@given(
    st.sampled_from([magic for magic, _ in compression.MAGICS] + [b"\x7fELF", b"MZ", b"070701"]),
    st.binary(max_size=2048),
    st.sampled_from(["kernel", "initrd"]),
)
def test_probe_random_after_a_magic(scratch: Path, magic: bytes, rest: bytes, probe: str) -> None:
    probe_file(scratch, magic + rest, probe)


@FUZZ_SLOW
@given(st.data())
def test_probe_mutated_kernels(
    scratch: Path, kernels: dict[str, bytes], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(sorted(kernels)))
    probe_file(scratch, data.draw(mutated(kernels[name], hot=0x1000)), "kernel")


@FUZZ
@given(st.data())
def test_probe_mutated_initrds(scratch: Path, data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(INITRDS)))
    probe_file(scratch, data.draw(mutated(INITRDS[name])), "initrd")


# --- Xen images -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def xen_images(cache: Path) -> dict[str, bytes]:
    plain = gzip.decompress((cache / "x86_64/xen.gz").read_bytes())
    return {
        "x86_64/xen.efi": (cache / "x86_64/xen.efi").read_bytes(),
        "arm64/xen.efi": (cache / "arm64/xen.efi").read_bytes(),
        "xen": plain,
        # Small enough to mutate anywhere, and still Xen: its header and its version strings.
        "xen-head.gz": gzip.compress(plain[:32768] + b"\0Xen version %d.%d%s\0" + b"\x004.17.5\0"),
    }


def probe_xen(scratch: Path, data: bytes, kind: str) -> None:
    scratch.write_bytes(data)
    if kind == "efi":
        efi = survives(lambda: probe_efi(scratch))
        event("efi: refused" if efi is None else f"efi: Xen {efi.version_text}")
    else:
        multiboot = survives(lambda: probe_multiboot(scratch))
        event("multiboot: refused" if multiboot is None else f"multiboot: {multiboot.version_text}")


@FUZZ_SLOW
@given(st.data())
def test_probe_mutated_xen_efi(
    scratch: Path, xen_images: dict[str, bytes], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["x86_64/xen.efi", "arm64/xen.efi"]))
    probe_xen(scratch, data.draw(mutated(xen_images[name], hot=4096)), "efi")


@FUZZ_SLOW
@given(st.data())
def test_probe_mutated_xen_multiboot(
    scratch: Path, xen_images: dict[str, bytes], data: st.DataObject
) -> None:
    name = data.draw(st.sampled_from(["xen", "xen-head.gz"]))
    hot = 0x8000 if name == "xen" else None
    probe_xen(scratch, data.draw(mutated(xen_images[name], hot=hot)), "multiboot")


@FUZZ
@given(st.binary(max_size=4096), st.sampled_from(["efi", "multiboot"]))
def test_probe_random_xen(scratch: Path, data: bytes, kind: str) -> None:
    probe_xen(scratch, data, kind)
