"""Fuzzing the binary and text format parsers of hlimage/formats (FDT, FAT, GPT and the DER
reader have their own in tests/unit): PE/COFF, the multiboot2 header, Linux boot headers, ELF
header tables, cpio, the streaming decompressors, compressed streams' framing, xen.cfg and
U-Boot's uImage."""

from __future__ import annotations

import gzip
import io
import itertools
import lzma
import struct
from pathlib import Path

import pytest
import zstandard
from hypothesis import event, given
from hypothesis import strategies as st

from hlimage.errors import FormatError, TruncatedError
from hlimage.formats import (
    authenticode,
    compression,
    cpio,
    elf,
    linux,
    multiboot2,
    pe,
    uimage,
    xencfg,
)
from tests.fuzz.conftest import FUZZ, FUZZ_SLOW, INTERESTING_32, mutated, survives

# --- samples ----------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def xen_efi(cache: Path) -> bytes:
    return (cache / "x86_64/xen.efi").read_bytes()


@pytest.fixture(scope="session")
def arm64_xen_efi(cache: Path) -> bytes:
    return (cache / "arm64/xen.efi").read_bytes()


@pytest.fixture(scope="session")
def xen_elf_head(cache: Path) -> bytes:
    """The first 32 KiB of Xen's multiboot ELF, where loaders look for the header."""
    with gzip.open(cache / "x86_64/xen.gz") as stream:
        return stream.read(multiboot2.SEARCH_LIMIT)


@pytest.fixture(scope="session")
def bzimage_head(cache: Path) -> bytes:
    with (cache / "x86_64/vmlinuz").open("rb") as stream:
        return stream.read(64 * 1024)


@pytest.fixture(scope="session")
def arm64_head(cache: Path) -> bytes:
    with (cache / "arm64/Image").open("rb") as stream:
        return stream.read(64 * 1024)


CPIO = cpio.build(
    [
        cpio.directory("bin"),
        cpio.regular("bin/hello", b"#!/bin/sh\necho hello\n", 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.char_device("dev/console", 5, 1),
        cpio.regular("init", b"x" * 300),
    ]
)
# Two archives one after another with zero padding, as an initrd of several parts is.
CPIO_PAIR = CPIO + bytes(12) + CPIO


INTERESTING = INTERESTING_32

# --- PE ---------------------------------------------------------------------------------------


def check_pe(data: bytes) -> None:
    """parse takes it or raises FormatError; what it takes, the rest of hlimage can read
    (digest layout, certificate table, a rewrite that parses again)."""
    stream = io.BytesIO(data)
    image = survives(lambda: pe.parse(stream))
    event("pe: parsed" if image is not None else "pe: refused")
    if image is None:
        return
    for section in image.sections:
        assert 0 <= section.data_size <= section.raw_size or section.raw_size == 0
        image.rva_to_offset(section.virtual_address)
    survives(lambda: authenticode.hash_layout(image))
    survives(lambda: authenticode.read_signatures(stream, image))
    out = io.BytesIO()
    written = survives(lambda: pe.PeWriter(stream, image).write([], out))
    event("pe: rewritten" if written is not None else "pe: not rewritten")
    if written is not None:
        again = pe.parse(io.BytesIO(out.getvalue()))
        assert [s.virtual_address for s in again.sections] == [
            s.virtual_address for s in image.sections
        ]


@FUZZ
@given(st.binary(max_size=4096))
def test_pe_random_bytes(data: bytes) -> None:
    check_pe(data)


SECTION_HEADERS = st.lists(
    st.tuples(
        st.binary(min_size=8, max_size=8) | st.sampled_from([b".text\0\0\0", b"/4\0\0\0\0\0\0"]),
        st.sampled_from(INTERESTING) | st.integers(0, 0x10000),  # VirtualSize
        st.sampled_from(INTERESTING) | st.integers(0, 0x10000),  # VirtualAddress
        st.sampled_from([0, 0x10, 0x200, 0x1000]) | st.integers(0, 0x2000),  # SizeOfRawData
        st.integers(0, 0x2000),  # PointerToRawData
        st.sampled_from(INTERESTING),  # Characteristics
    ),
    max_size=6,
)


@FUZZ
@given(
    st.integers(0x40, 0x100),
    st.sampled_from([pe.MACHINE_AMD64, pe.MACHINE_ARM64, pe.MACHINE_I386, 0]),
    st.sampled_from([pe.PE32_MAGIC, pe.PE32PLUS_MAGIC]),
    st.integers(0, 20),
    st.integers(-8, 64),
    st.lists(st.sampled_from(INTERESTING), min_size=12, max_size=12),
    SECTION_HEADERS,
    st.tuples(st.sampled_from(INTERESTING), st.sampled_from(INTERESTING)),
    st.binary(max_size=1024),
)
def test_pe_random_headers(
    lfanew: int, machine: int, magic: int, directories: int, slack: int, fields: list[int],
    sections: list[tuple[bytes, int, int, int, int, int]], symbols: tuple[int, int], rest: bytes,
) -> None:  # fmt: skip
    """Past the signatures, with header sizes that nearly agree, so that the optional header,
    section table and string table parsers all run."""
    head = bytearray(lfanew)
    head[:2] = b"MZ"
    struct.pack_into("<I", head, 0x3C, lfanew)
    plus = magic == pe.PE32PLUS_MAGIC
    word = "Q" if plus else "I"
    alignment, file_alignment = fields[0] or 0x1000, fields[1] or 0x200
    optional = struct.pack("<HBBIIIII", magic, 0, 0, *fields[2:7])
    if not plus:
        optional += struct.pack("<I", 0)  # BaseOfData
    optional += struct.pack(f"<{word}II", 0x10000000, alignment, file_alignment)
    optional += bytes(16) + struct.pack("<IIIHH", fields[7], fields[8], 0, 10, 0)
    optional += struct.pack(f"<{word}{word}{word}{word}II", 0, 0, 0, 0, 0, directories)
    optional += b"".join(struct.pack("<II", *fields[9:11]) for _ in range(directories))
    optional_size = max(0, len(optional) + slack)
    optional = optional.ljust(optional_size, b"\0")[:optional_size]
    coff = struct.pack("<HHIIIHH", machine, len(sections), 0, *symbols, optional_size, 0)
    table = b"".join(
        struct.pack("<8sIIIIIIHHI", name, vsize, rva, raw, pointer, 0, 0, 0, 0, flags)
        for name, vsize, rva, raw, pointer, flags in sections
    )
    check_pe(bytes(head) + b"PE\0\0" + coff + optional + table + rest)


@FUZZ_SLOW
@given(st.data())
def test_pe_mutated_xen_efi(xen_efi: bytes, data: st.DataObject) -> None:
    check_pe(data.draw(mutated(xen_efi, hot=4096)))


@FUZZ_SLOW
@given(st.data())
def test_pe_mutated_arm64_xen_efi(arm64_xen_efi: bytes, data: st.DataObject) -> None:
    check_pe(data.draw(mutated(arm64_xen_efi, hot=1024)))


# --- multiboot2 -------------------------------------------------------------------------------


def check_multiboot2(head: bytes) -> None:
    header = survives(lambda: multiboot2.find(head))
    if header is not None:
        assert header.offset % 8 == 0 and header.offset < multiboot2.SEARCH_LIMIT


@FUZZ
@given(st.binary(max_size=1024), st.integers(0, 64), st.binary(max_size=256))
def test_multiboot2_random(prefix: bytes, at: int, tags: bytes) -> None:
    """A header with the right magic and checksum at a random offset, random tags after it."""
    header = bytearray(multiboot2.build(multiboot2.ARCH_I386, tags))
    struct.pack_into("<I", header, 8, struct.unpack_from("<I", header, 8)[0] ^ (at & 0xFF))
    check_multiboot2(prefix + bytes(at) + bytes(header))


@FUZZ
@given(st.data())
def test_multiboot2_mutated_xen(xen_elf_head: bytes, data: st.DataObject) -> None:
    check_multiboot2(data.draw(mutated(xen_elf_head)))


# --- Linux boot headers -----------------------------------------------------------------------


def check_linux(head: bytes) -> None:
    bz = survives(lambda: linux.parse_bzimage(head))
    if bz is not None:
        assert bz.protocol_text
    survives(lambda: linux.parse_arm64(head))
    survives(lambda: linux.linux_banner_version(head))


@FUZZ
@given(st.binary(max_size=2048))
def test_linux_random(data: bytes) -> None:
    check_linux(data)
    # With the magic numbers in place, so that the structures are parsed.
    padded = bytearray(data.ljust(0x300, b"\0"))
    padded[0x202:0x206] = b"HdrS"
    check_linux(bytes(padded))
    padded[linux.ARM64_MAGIC_OFFSET : linux.ARM64_MAGIC_OFFSET + 4] = linux.ARM64_MAGIC
    check_linux(bytes(padded))


@FUZZ
@given(st.data())
def test_linux_mutated_bzimage(bzimage_head: bytes, data: st.DataObject) -> None:
    check_linux(data.draw(mutated(bzimage_head, hot=0x300)))


@FUZZ
@given(st.data())
def test_linux_mutated_arm64(arm64_head: bytes, data: st.DataObject) -> None:
    check_linux(data.draw(mutated(arm64_head, hot=0x100)))


# --- cpio -------------------------------------------------------------------------------------


def check_cpio(data: bytes) -> None:
    def walk() -> int:
        count = 0
        for member in cpio.members(io.BytesIO(data)):
            assert member.size >= 0 and len(member.name) <= cpio.MAX_NAME
            count += 1
        return count

    survives(walk)
    survives(lambda: list(cpio.members(io.BytesIO(data), limit=1)))
    whole = archive_check(data, [len(data)])
    # However the bytes arrive (and whatever is skipped), the verdict is the same.
    for step in (1, 7, 113):
        assert archive_check(data, list(range(step, len(data), step))) == whole


def archive_check(data: bytes, cuts: list[int]) -> str:
    """What cpio.ArchiveCheck says of `data` fed in pieces split at `cuts`, member data
    skipped where it may be: 'whole', or the refusal's class."""
    check = cpio.ArchiveCheck()
    try:
        for piece in pieces(data, cuts):
            view = memoryview(piece)
            while view:
                if check.skippable:
                    step = min(check.skippable, len(view))
                    check.skip(step)
                    view = view[step:]
                else:
                    view = view[check.feed(view) :]
        check.finish()
    except TruncatedError as error:
        assert error.needed is None or error.needed > check.offset
        return "truncated"
    except FormatError:
        return "format"
    return "whole"


@FUZZ
@given(st.binary(max_size=1024))
def test_cpio_random(data: bytes) -> None:
    check_cpio(data)
    check_cpio(cpio.NEWC_MAGIC + data)


@FUZZ
@given(st.data())
def test_cpio_mutated(data: st.DataObject) -> None:
    check_cpio(data.draw(mutated(CPIO_PAIR)))


@FUZZ
@given(st.lists(st.integers(0, 0xFFFFFFFF), min_size=13, max_size=13), st.binary(max_size=64))
def test_cpio_random_fields(fields: list[int], rest: bytes) -> None:
    header = cpio.NEWC_MAGIC + b"".join(b"%08X" % value for value in fields)
    check_cpio(header + rest)


@FUZZ
@given(
    st.builds(
        lambda sign, digits: (sign + digits)[:8].rjust(8, " ").encode(),
        st.sampled_from(["-", "+", " ", " -", "0x", "-0x"]),
        st.text(alphabet="0123456789abcdefABCDEF_", min_size=6, max_size=8),
    )
    | st.binary(min_size=8, max_size=8),
    st.integers(0, 12),
)
def test_cpio_odd_hex_fields(field: bytes, index: int) -> None:
    """A field that int() would take but is not eight hex digits (signs, spaces, '_')."""
    fields = [b"00000001"] * 13
    fields[index] = field
    check_cpio(cpio.NEWC_MAGIC + b"".join(fields) + b"name\0\0" + bytes(64))


# --- decompressors ----------------------------------------------------------------------------

SAMPLE = cpio.build([cpio.regular("data", bytes(range(256)) * 64), cpio.regular("z", bytes(9000))])
STREAMS = {
    compression.GZIP: gzip.compress(SAMPLE, mtime=0) + gzip.compress(b"second member", mtime=0),
    compression.XZ: lzma.compress(SAMPLE) + bytes(8),
    compression.ZSTD: zstandard.ZstdCompressor().compress(SAMPLE) * 2,
    compression.LZ4_LEGACY: b"".join(compression.lz4_legacy_compress([SAMPLE, SAMPLE])),
}
# The largest piece a decompressor may hand out: one LZ4 legacy block.
MAX_CHUNK = compression.LZ4_LEGACY_BLOCK


def pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    """`data` as the chunks a file reader would give, split at `cuts`."""
    points = sorted({min(cut, len(data)) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def check_decompress(kind: str, chunks: list[bytes]) -> None:
    def run() -> int:
        total = 0
        for piece in compression.decompress(kind, iter(chunks)):
            assert len(piece) <= MAX_CHUNK
            total += len(piece)
        return total

    survives(run)


KINDS = st.sampled_from(sorted(STREAMS))


@FUZZ
@given(KINDS, st.binary(max_size=2048), st.lists(st.integers(0, 2048), max_size=4))
def test_decompress_random(kind: str, data: bytes, cuts: list[int]) -> None:
    magic = next(m for m, name in compression.MAGICS if name == kind)
    check_decompress(kind, pieces(data, cuts))
    check_decompress(kind, pieces(magic + data, cuts))


@FUZZ
@given(KINDS, st.data(), st.lists(st.integers(0, 1 << 16), max_size=4))
def test_decompress_mutated(kind: str, data: st.DataObject, cuts: list[int]) -> None:
    check_decompress(kind, pieces(data.draw(mutated(STREAMS[kind])), cuts))


@FUZZ
@given(KINDS, st.lists(st.integers(0, 1 << 16), max_size=6))
def test_decompress_intact_in_any_chunks(kind: str, cuts: list[int]) -> None:
    out = b"".join(compression.decompress(kind, iter(pieces(STREAMS[kind], cuts))))
    assert out.startswith(SAMPLE)


FRAMED = (compression.XZ, compression.ZSTD, compression.LZ4_LEGACY)


def check_stream_end(kind: str, data: bytes) -> None:
    def run() -> int | None:
        calls: list[int] = []

        def read(offset: int, count: int) -> bytes:
            # In increasing order, so that a forward-only reader serves it too.
            assert not calls or offset >= calls[-1]
            calls.append(offset)
            return data[offset : offset + count]

        end = compression.stream_end(kind, read, 0, len(data))
        assert end is None or 0 < end <= len(data)
        return end

    survives(run)


@FUZZ
@given(st.sampled_from(FRAMED), st.data())
def test_stream_end_mutated(kind: str, data: st.DataObject) -> None:
    check_stream_end(kind, data.draw(mutated(STREAMS[kind])))


@FUZZ
@given(st.sampled_from(FRAMED), st.binary(max_size=2048))
def test_stream_end_random(kind: str, data: bytes) -> None:
    magic = next(m for m, name in compression.MAGICS if name == kind)
    check_stream_end(kind, magic + data)


@pytest.mark.parametrize("kind", FRAMED)
def test_stream_end_of_intact_streams(kind: str) -> None:
    data = STREAMS[kind]
    end = compression.stream_end(kind, lambda at, count: data[at : at + count], 0, len(data))
    assert end == len(data) or (kind == compression.LZ4_LEGACY and end is not None)


@FUZZ
@given(st.data())
def test_elf_stated_length_mutated(xen_elf_head: bytes, data: st.DataObject) -> None:
    head = data.draw(mutated(xen_elf_head, hot=0x100))
    stated = elf.stated_length(head)
    assert stated is None or stated.needed >= 0
    survives(lambda: elf.check_length(head, len(head)))


@FUZZ
@given(st.binary(max_size=64))
def test_detect(head: bytes) -> None:
    assert compression.detect(head) in {None, *(name for _, name in compression.MAGICS)}


# --- xen.cfg ----------------------------------------------------------------------------------

CFG = """[global]
default=xen

[xen]
options=console=com1 loglvl=all # a comment
kernel=vmlinuz console=hvc0 root=/dev/ram0
ramdisk=initrd.gz
;ignored=1
xsm=policy
"""


def check_cfg(text: str) -> None:
    sections = survives(lambda: xencfg.parse(text))
    if sections is None:
        return
    for options in sections.values():
        for key, value in options.items():
            assert "\n" not in key and "\n" not in value
            xencfg.split_kernel_line(value)
            xencfg.value_problem(value)


@FUZZ
@given(st.text(max_size=512))
def test_xencfg_random_text(text: str) -> None:
    check_cfg(text)


@FUZZ
@given(
    st.lists(
        st.sampled_from(["[", "]", "=", "#", ";", " ", "\t", "\r", "\n", "key", "global", "é"]),
        max_size=80,
    )
)
def test_xencfg_grammar_soup(words: list[str]) -> None:
    check_cfg("".join(words))


@FUZZ
@given(st.data())
def test_xencfg_mutated(data: st.DataObject) -> None:
    check_cfg(data.draw(mutated(CFG.encode())).decode("ascii", "replace"))


@FUZZ
@given(st.dictionaries(st.from_regex(r"[a-z]{1,8}", fullmatch=True), st.text(max_size=40)))
def test_xencfg_render_parse(options: dict[str, str]) -> None:
    """What render writes, parse reads back (or render refuses a value it cannot carry)."""
    config = xencfg.XenConfig("xen", {"xen": options})
    try:
        text = config.render()
    except ValueError:
        assert any(xencfg.value_problem(f"{k}={v}") for k, v in options.items())
        return
    parsed = xencfg.parse(text).get("xen", {})
    for key, value in options.items():
        assert parsed[key] == value.strip(" ")


# --- uImage -----------------------------------------------------------------------------------

UIMAGE = uimage.script_image(b"echo fuzz\nbooti\n", name="fuzz", timestamp=1)


def check_uimage(data: bytes) -> None:
    image = survives(lambda: uimage.parse(data))
    if image is not None:
        survives(image.script)


@FUZZ
@given(st.data())
def test_uimage_mutated(data: st.DataObject) -> None:
    check_uimage(data.draw(mutated(UIMAGE, 64)))


@FUZZ
@given(st.binary(max_size=256), st.integers(0, 255))
def test_uimage_sealed_random_data(body: bytes, image_type: int) -> None:
    """With both CRCs right, the parser gets past them to the multi-file layout."""
    sealed = uimage.build(body, name="x", timestamp=0, arch=22, image_type=image_type)
    check_uimage(sealed)
    assert uimage.parse(sealed).data == body
