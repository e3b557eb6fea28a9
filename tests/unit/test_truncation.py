"""Inputs cut short (an interrupted copy or download) are found by the lengths their own headers
state: each parser on truncated copies of the real payloads, and on synthetic edge cases."""

from __future__ import annotations

import gzip
import io
import lzma
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
import zstandard

from hlimage.errors import FormatError, HlimageError, TruncatedError
from hlimage.formats import ReadAt, compression, cpio, elf, linux, pe
from hlimage.formats.payload import Region
from hlimage.inputs import check_initrd_length, check_kernel_length, probe_kernel
from hlimage.xen.probe import probe_efi, probe_multiboot
from tests.support import payloads


def head(path: Path, count: int) -> bytes:
    with path.open("rb") as stream:
        return stream.read(count)


def write(tmp_path: Path, name: str, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def read_at(data: bytes) -> ReadAt:
    return lambda offset, count: data[offset : offset + count]


# --- bzImage ----------------------------------------------------------------------------------


def test_bzimage_states_its_own_length(cache: Path) -> None:
    kernel = cache / "x86_64/vmlinuz"
    bz = linux.parse_bzimage(head(kernel, 64 * 1024))
    assert bz is not None
    # Debian's unsigned kernel is exactly what its setup header says.
    assert bz.stated_length == kernel.stat().st_size
    bz.check_length(kernel.stat().st_size)
    bz.check_length(kernel.stat().st_size + 4096)  # a signature after it is fine
    with pytest.raises(TruncatedError) as caught:
        bz.check_length(kernel.stat().st_size - 1)
    assert (caught.value.size, caught.value.needed) == (bz.stated_length - 1, bz.stated_length)
    assert "its setup header (setup_sects, syssize)" in str(caught.value)


def test_bzimage_before_protocol_2_04_states_nothing() -> None:
    header = bytearray(0x4000)
    header[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", header, 0x206, 0x203)
    struct.pack_into("<I", header, 0x1F4, 0xFFFF)
    bz = linux.parse_bzimage(bytes(header))
    assert bz is not None and bz.stated_length is None
    bz.check_length(10)


def test_truncated_bzimage_is_refused_by_the_probe(cache: Path, tmp_path: Path) -> None:
    cut = write(tmp_path, "vmlinuz", head(cache / "x86_64/vmlinuz", 8_000_000))
    with pytest.raises(TruncatedError, match=r"^truncated bzImage: it has 8000000 bytes, but"):
        probe_kernel(Region(cut))


# --- PE (EFI-stub kernels and xen.efi) -------------------------------------------------------


@pytest.mark.parametrize("name", ["x86_64/xen.efi", "arm64/xen.efi", "arm64/Image"])
def test_pe_sections_past_the_end(cache: Path, name: str) -> None:
    whole = (cache / name).read_bytes()
    pe.parse(io.BytesIO(whole))
    for size in (len(whole) - 1, len(whole) // 2, 8192):
        with pytest.raises(TruncatedError) as caught:
            pe.parse(io.BytesIO(whole[:size]))
        assert caught.value.size == size
        assert caught.value.needed is not None and caught.value.needed > size


def test_pe_certificate_table_past_the_end(cache: Path, tmp_path: Path) -> None:
    """A signed image loses its signature first when cut short: the sections are whole."""
    from hlimage.secureboot.trust import SigningKey, sign_file
    from tests.support.signing import key_and_certificate

    key, certificate = key_and_certificate()
    signed = tmp_path / "signed.efi"
    sign_file(cache / "x86_64/xen.efi", signed, SigningKey(key, certificate, None))
    data = signed.read_bytes()
    image = pe.parse(io.BytesIO(data))
    assert image.signature is not None
    offset, length = image.signature
    assert offset + length <= len(data)
    with pytest.raises(TruncatedError, match="its certificate table says it needs"):
        pe.parse(io.BytesIO(data[: offset + length // 2]))


def test_arm64_image_header_states_no_file_length(cache: Path) -> None:
    """image_size counts BSS: it is more than the file, and no bound on it."""
    image = cache / "arm64/Image"
    header = linux.parse_arm64(head(image, 64))
    assert header is not None and header.image_size > image.stat().st_size
    check_kernel_length(head(image, 64 * 1024), image.stat().st_size)


def test_arm64_image_cut_short(cache: Path, tmp_path: Path) -> None:
    cut = write(tmp_path, "Image", head(cache / "arm64/Image", 20_000_000))
    with pytest.raises(TruncatedError, match=r"PE image: it has 20000000 bytes"):
        probe_kernel(Region(cut))


def test_gzip_of_a_truncated_image(cache: Path, tmp_path: Path) -> None:
    """Whole gzip data whose kernel was cut before compressing: the decompressed length counts."""
    packed = write(
        tmp_path,
        "Image.gz",
        gzip.compress(head(cache / "arm64/Image", 4_000_000), compresslevel=1, mtime=0),
    )
    with pytest.raises(TruncatedError, match=r"^the gzip data decompresses to a truncated PE"):
        probe_kernel(Region(packed))


def test_a_stub_header_that_is_no_pe_is_not_a_truncation() -> None:
    """An Image whose 'MZ' has no PE header behind it (res5 zero) is judged by what Xen reads."""
    header = bytearray(0x1000)
    struct.pack_into("<I", header, 0, 0x91005A4D)
    header[0x38:0x3C] = linux.ARM64_MAGIC
    check_kernel_length(bytes(header), len(header))


# --- ELF (xen, vmlinux) ---------------------------------------------------------------------


def test_xen_elf_states_its_length(cache: Path) -> None:
    plain = gzip.decompress((cache / "x86_64/xen.gz").read_bytes())
    stated = elf.stated_length(plain[:32768])
    assert stated is not None and stated.by == "its section header table"
    assert stated.needed <= len(plain) < stated.needed + 4096
    elf.check_length(plain[:32768], len(plain))
    with pytest.raises(TruncatedError, match="truncated ELF image: it has 2000000 bytes"):
        elf.check_length(plain[:32768], 2_000_000)


def elf64(phdrs: list[tuple[int, int]], *, big_endian: bool = False, shoff: int = 0) -> bytes:
    order = ">" if big_endian else "<"
    header = bytearray(64)
    header[:4] = elf.MAGIC
    header[4], header[5], header[6] = elf.CLASS_64, 2 if big_endian else 1, 1
    struct.pack_into(order + "QQIHHHHHH", header, 32, 64, shoff, 0, 64, 56, len(phdrs), 64, 0, 0)
    table = bytearray()
    for offset, filesz in phdrs:
        table += struct.pack(order + "IIQQQQQQ", 1, 5, offset, 0, 0, filesz, filesz, 8)
    return bytes(header + table)


@pytest.mark.parametrize("big_endian", [False, True])
def test_elf64_program_headers(big_endian: bool) -> None:
    data = elf64([(0x1000, 0x500), (0x2000, 0x100)], big_endian=big_endian)
    stated = elf.stated_length(data)
    assert stated == elf.StatedLength(0x2100, "its program header 1")
    elf.check_length(data, 0x2100)
    with pytest.raises(TruncatedError):
        elf.check_length(data, 0x20FF)


def test_elf_that_states_nothing() -> None:
    assert elf.stated_length(b"not an elf" * 10) is None
    assert elf.stated_length(elf64([])) is None
    odd = bytearray(elf64([(0, 10)]))
    odd[4] = 7  # an unknown class
    assert elf.stated_length(bytes(odd)) is None


def test_truncated_xen_elf_and_gzip_of_it(cache: Path, tmp_path: Path) -> None:
    plain = gzip.decompress((cache / "x86_64/xen.gz").read_bytes())
    cut = write(tmp_path, "xen", plain[:2_000_000])
    with pytest.raises(HlimageError, match=r"multiboot: truncated ELF image: it has 2000000"):
        probe_multiboot(cut)
    packed = write(tmp_path, "xen.gz", gzip.compress(plain[:2_000_000], mtime=0))
    with pytest.raises(HlimageError, match=r"the gzip data decompresses to a truncated ELF"):
        probe_multiboot(packed)
    short = write(tmp_path, "short.gz", (cache / "x86_64/xen.gz").read_bytes()[:600_000])
    with pytest.raises(HlimageError, match=r"truncated gzip data; give the whole file"):
        probe_multiboot(short)
    efi = write(tmp_path, "xen.efi", head(cache / "x86_64/xen.efi", 2_000_000))
    with pytest.raises(HlimageError, match=r"efi: truncated PE image: it has 2000000 bytes"):
        probe_efi(efi)


# --- cpio ------------------------------------------------------------------------------------

ARCHIVE = cpio.build(
    [cpio.directory("bin"), cpio.regular("bin/x", b"abcde" * 9), cpio.symlink("bin/y", "x")]
)


def check_all(data: bytes, *, chunk: int = 1 << 20) -> cpio.ArchiveCheck:
    check = cpio.ArchiveCheck()
    for start in range(0, len(data), chunk):
        assert check.feed(data[start : start + chunk]) == len(data[start : start + chunk])
    check.finish()
    return check


def test_cpio_whole_archives_pass() -> None:
    check = check_all(ARCHIVE)
    assert (check.members, check.archives, check.offset) == (3, 1, len(ARCHIVE))
    # Concatenated archives with zero padding between and after them, as Linux reads them.
    check = check_all(ARCHIVE + bytes(512) + ARCHIVE + bytes(12), chunk=7)
    assert (check.members, check.archives) == (6, 2)


def test_cpio_every_cut_is_found() -> None:
    trailer = ARCHIVE.rfind(cpio.NEWC_MAGIC)
    for size in range(1, len(ARCHIVE)):
        if size >= trailer + cpio.HEADER_SIZE + len(cpio.TRAILER) + 1:
            continue  # the trailer is whole; only its padding is cut
        with pytest.raises(TruncatedError):
            check_all(ARCHIVE[:size], chunk=3)


def test_cpio_truncation_messages() -> None:
    data_at = ARCHIVE.find(b"abcde")
    with pytest.raises(TruncatedError) as caught:
        check_all(ARCHIVE[: data_at + 10])
    assert str(caught.value) == (
        f"truncated cpio archive: it has {data_at + 10} bytes, but the header of member bin/x "
        f"says it needs {data_at + 45}"
    )
    trailer = ARCHIVE.rfind(cpio.NEWC_MAGIC)
    with pytest.raises(TruncatedError, match=r"after member bin/y with no TRAILER!!! entry"):
        check_all(ARCHIVE[:trailer])
    with pytest.raises(TruncatedError, match=r"the member header at offset 0"):
        check_all(ARCHIVE[:50])


def test_cpio_skipping_member_data() -> None:
    """A reader of a file seeks over member data: `skippable` says how far it may."""
    check = cpio.ArchiveCheck()
    position = 0
    while position < len(ARCHIVE):
        if check.skippable:
            position += check.skippable
            check.skip(check.skippable)
        else:
            position += check.feed(ARCHIVE[position : position + 64])
    check.finish()
    assert check.members == 3 and position == len(ARCHIVE)
    big = cpio.build([cpio.regular("big", bytes(100_000))])
    check = cpio.ArchiveCheck()
    check.feed(big[:200])
    assert check.skippable == 100_000 - (200 - (cpio.HEADER_SIZE + 6))


def test_cpio_not_cpio() -> None:
    with pytest.raises(FormatError, match="bad magic"):
        check_all(b"0" * 200)
    with pytest.raises(FormatError, match="not at a multiple of 4"):
        check_all(ARCHIVE + b"\0" + ARCHIVE)
    with pytest.raises(FormatError, match="is not cpio"):
        check_all(ARCHIVE + b"junk")
    stop = cpio.ArchiveCheck(stop_at_other=True)
    assert stop.feed(ARCHIVE + bytes(8) + b"\x28\xb5\x2f\xfd") == len(ARCHIVE) + 8
    assert stop.other_at == len(ARCHIVE) + 8


# --- compressed streams, by their framing ----------------------------------------------------


@pytest.fixture(scope="module")
def initramfs(cache: Path) -> bytes:
    return payloads.initramfs_cpio("x86_64", "dom0")


def every_cut(data: bytes) -> Iterator[int]:
    """Sizes to cut a stream to, from just after its magic number to one byte short."""
    yield from (5, 100, len(data) // 3, len(data) // 2, len(data) - 1)


def test_lz4_legacy_blocks(initramfs: bytes) -> None:
    stream = b"".join(compression.lz4_legacy_compress([initramfs * 5]))  # two 8 MiB blocks
    assert compression.lz4_legacy_end(read_at(stream), 0, len(stream)) == len(stream)
    for size in every_cut(stream):
        with pytest.raises(TruncatedError, match="truncated LZ4 legacy stream"):
            compression.lz4_legacy_end(read_at(stream[:size]), 0, size)
    padded = stream + bytes(16)
    assert compression.lz4_legacy_end(read_at(padded), 0, len(padded)) == len(stream)


def test_zstd_frames(initramfs: bytes) -> None:
    frames = [
        zstandard.ZstdCompressor(write_checksum=True).compress(initramfs),
        zstandard.ZstdCompressor(write_content_size=False).compress(initramfs[:1000]),
        struct.pack("<II", compression.ZSTD_SKIPPABLE | 3, 5) + b"12345",
    ]
    stream = b"".join(frames)
    assert compression.zstd_end(read_at(stream), 0, len(stream)) == len(stream)
    # Something after the stream (zero padding, another archive) is the caller's.
    assert compression.zstd_end(read_at(stream + bytes(8)), 0, len(stream) + 8) == len(stream)
    for size in every_cut(stream):
        if size in (len(frames[0]), len(frames[0]) + len(frames[1])):
            continue  # cut between frames: what is left is whole
        with pytest.raises(TruncatedError, match="truncated zstd stream"):
            compression.zstd_end(read_at(stream[:size]), 0, size)


def test_xz_footer(initramfs: bytes) -> None:
    stream = lzma.compress(initramfs[:200_000], preset=0)
    assert compression.xz_end(read_at(stream), 0, len(stream)) == len(stream)
    padded = stream + bytes(64)
    assert compression.xz_end(read_at(padded), 0, len(padded)) == len(padded)
    for size in (len(stream) - 1, len(stream) - 12, len(stream) // 2, 30):
        with pytest.raises(TruncatedError, match="no xz stream footer at its end"):
            compression.xz_end(read_at(stream[:size]), 0, size)
    broken = bytearray(stream)
    broken[-5] ^= 1  # the backward size, which the footer's CRC32 covers
    with pytest.raises(FormatError, match="stream footer does not match"):
        compression.xz_end(read_at(bytes(broken)), 0, len(broken))
    # A cpio archive after the xz stream hides where the stream ends: not judged.
    followed = stream + bytes(-len(stream) % 4) + ARCHIVE
    assert compression.xz_end(read_at(followed), 0, len(followed)) is None


def test_streams_that_state_no_length() -> None:
    data = gzip.compress(b"x" * 1000)
    for kind in (compression.GZIP, compression.BZIP2, compression.LZMA, compression.LZO, None):
        assert compression.stream_end(kind, read_at(data), 0, len(data)) is None


# --- initrds, as the build checks them -------------------------------------------------------


def test_initrd_check_real_initramfs(tmp_path: Path, initramfs: bytes) -> None:
    zstd = zstandard.ZstdCompressor().compress(initramfs)
    early = cpio.build([cpio.directory("kernel"), cpio.regular("kernel/ucode.bin", b"u" * 99)])
    whole = {
        "plain": initramfs,
        "zstd": zstd,
        "lz4": b"".join(compression.lz4_legacy_compress([initramfs])),
        "xz": lzma.compress(initramfs, preset=0),
        "early+zstd": early + bytes(4) + zstd,
    }
    for name, data in whole.items():
        check_initrd_length(Region(write(tmp_path, name, data)))
        cut = write(tmp_path, f"{name}.cut", data[: len(data) - 7])
        with pytest.raises(TruncatedError):
            check_initrd_length(Region(cut))
    # gzip states no length: a cut-short gzip initrd is not found without inflating it.
    check_initrd_length(Region(write(tmp_path, "gz.cut", gzip.compress(initramfs)[:5000])))


def test_initrd_check_of_a_large_cpio_reads_only_headers(tmp_path: Path) -> None:
    """A member of 256 MiB (a hole in a sparse file) is seeked over, not read."""
    path = tmp_path / "big.cpio"
    header = cpio.build([cpio.regular("big", b"")])[: cpio.HEADER_SIZE]
    big = header[:54] + b"%08X" % (256 << 20) + header[62:]
    with path.open("wb") as stream:
        stream.write(big + b"big\0")
        stream.seek(cpio.HEADER_SIZE + 6 + (256 << 20))  # the name padded to 4 bytes, the data
        stream.write(cpio.build([]))
    check_initrd_length(Region(path))
    with path.open("r+b") as stream:
        stream.truncate(200 << 20)
    with pytest.raises(TruncatedError, match=r"the header of member big says it needs"):
        check_initrd_length(Region(path))


class _StreamedRegion(Region):
    """A Region that is not a plain range of a file, as inspect's files in a FAT volume are:
    probes must read it forward, through chunks()."""


def test_kernel_probe_reads_other_regions_forward(tmp_path: Path) -> None:
    zstd = zstandard.ZstdCompressor().compress(head(payloads.path("x86_64/vmlinuz"), 65536))
    path = write(tmp_path, "vmlinuz.zst", zstd[:-3])
    with pytest.raises(TruncatedError, match="truncated zstd stream"):
        probe_kernel(_StreamedRegion(path))


@pytest.mark.parametrize("zeros", [0, 1, 4095, 4096, 4097, 70000])
def test_leading_zeros(zeros: int) -> None:
    from hlimage.formats import leading_zeros

    assert leading_zeros(bytes(zeros)) == zeros
    assert leading_zeros(memoryview(bytes(zeros) + b"x" + bytes(5000))) == zeros


def test_initrd_with_a_long_zero_tail(tmp_path: Path, initramfs: bytes) -> None:
    """Zero padding after the archive (here 64 MiB of hole) is passed over quickly."""
    path = tmp_path / "padded.img"
    with path.open("wb") as stream:
        stream.write(initramfs)
        stream.truncate(len(initramfs) + (64 << 20))
    check_initrd_length(Region(path))
    with path.open("r+b") as stream:
        stream.seek(len(initramfs) + (32 << 20))
        stream.write(b"junk")  # not an archive Linux would read: judged by what it is
    check_initrd_length(Region(path))
    with path.open("r+b") as stream:
        stream.seek(len(initramfs) + (32 << 20))
        stream.write(initramfs[:1000])  # another archive, cut short (its data: the zeros)
    with pytest.raises(TruncatedError, match=r"after member bin/busybox with no TRAILER!!!"):
        check_initrd_length(Region(path))


def test_holes_are_passed_over_unread(
    tmp_path: Path, initramfs: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sparse file's hole (here 4 GiB after the archive) is found with SEEK_DATA, not read;
    so is one inside a member's data, which is seeked over anyway."""
    path = tmp_path / "sparse.img"
    with path.open("wb") as stream:
        stream.write(initramfs)
        stream.truncate(len(initramfs) + (4 << 30))
    real_pread = os.pread
    read: list[int] = []

    def counting(descriptor: int, count: int, offset: int) -> bytes:
        data = real_pread(descriptor, count, offset)
        read.append(len(data))
        return data

    monkeypatch.setattr(os, "pread", counting)
    check_initrd_length(Region(path))
    assert sum(read) < len(initramfs) + (1 << 20)
