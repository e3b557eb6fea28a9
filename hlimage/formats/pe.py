"""PE/COFF images: parse the headers of any EFI image, and write a new image that adds sections.

Only headers are read into memory; section data is copied from the input in chunks. Nothing
here knows about Xen: which sections to add, at what alignment and what limits apply is the
caller's business (`hlimage/xen/`).
"""

from __future__ import annotations

import io
import struct
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO

import construct as c

from hlimage.errors import FormatError, TruncatedError
from hlimage.formats import align_up
from hlimage.formats.payload import Chunk, Payload, Region, StreamRange

MACHINE_AMD64 = 0x8664
MACHINE_ARM64 = 0xAA64
MACHINE_I386 = 0x14C
MACHINE_NAMES = {MACHINE_AMD64: "x86_64", MACHINE_ARM64: "arm64", MACHINE_I386: "i386"}

PE32_MAGIC = 0x10B
PE32PLUS_MAGIC = 0x20B

DIRECTORY_SECURITY = 4
DIRECTORY_BASERELOC = 5
DIRECTORY_DEBUG = 6

SCN_CNT_CODE = 0x00000020
SCN_CNT_INITIALIZED_DATA = 0x00000040
SCN_CNT_UNINITIALIZED_DATA = 0x00000080
SCN_MEM_DISCARDABLE = 0x02000000
SCN_MEM_EXECUTE = 0x20000000
SCN_MEM_READ = 0x40000000
SCN_MEM_WRITE = 0x80000000
READONLY_DATA = SCN_CNT_INITIALIZED_DATA | SCN_MEM_READ

# The optional header's field offsets that the writer patches (same in PE32 and PE32+).
CHECKSUM_OFFSET_IN_OPTIONAL = 64
SECURITY_DIRECTORY_OFFSET = {PE32_MAGIC: 96 + 8 * 4, PE32PLUS_MAGIC: 112 + 8 * 4}

DosHeader = c.Struct(
    "e_magic" / c.Const(b"MZ"),
    "e_fields" / c.Bytes(0x3A),
    "e_lfanew" / c.Int32ul,
)

CoffHeader = c.Struct(
    "Machine" / c.Int16ul,
    "NumberOfSections" / c.Int16ul,
    "TimeDateStamp" / c.Int32ul,
    "PointerToSymbolTable" / c.Int32ul,
    "NumberOfSymbols" / c.Int32ul,
    "SizeOfOptionalHeader" / c.Int16ul,
    "Characteristics" / c.Int16ul,
)

DataDirectory = c.Struct("VirtualAddress" / c.Int32ul, "Size" / c.Int32ul)

# One struct for PE32 and PE32+: the fields that change width switch on the magic.
_Word = c.IfThenElse(c.this.Magic == PE32PLUS_MAGIC, c.Int64ul, c.Int32ul)
OptionalHeader = c.Struct(
    "Magic" / c.OneOf(c.Int16ul, [PE32_MAGIC, PE32PLUS_MAGIC]),
    "MajorLinkerVersion" / c.Int8ul,
    "MinorLinkerVersion" / c.Int8ul,
    "SizeOfCode" / c.Int32ul,
    "SizeOfInitializedData" / c.Int32ul,
    "SizeOfUninitializedData" / c.Int32ul,
    "AddressOfEntryPoint" / c.Int32ul,
    "BaseOfCode" / c.Int32ul,
    "BaseOfData" / c.If(c.this.Magic == PE32_MAGIC, c.Int32ul),
    "ImageBase" / _Word,
    "SectionAlignment" / c.Int32ul,
    "FileAlignment" / c.Int32ul,
    "MajorOperatingSystemVersion" / c.Int16ul,
    "MinorOperatingSystemVersion" / c.Int16ul,
    "MajorImageVersion" / c.Int16ul,
    "MinorImageVersion" / c.Int16ul,
    "MajorSubsystemVersion" / c.Int16ul,
    "MinorSubsystemVersion" / c.Int16ul,
    "Win32VersionValue" / c.Int32ul,
    "SizeOfImage" / c.Int32ul,
    "SizeOfHeaders" / c.Int32ul,
    "CheckSum" / c.Int32ul,
    "Subsystem" / c.Int16ul,
    "DllCharacteristics" / c.Int16ul,
    "SizeOfStackReserve" / _Word,
    "SizeOfStackCommit" / _Word,
    "SizeOfHeapReserve" / _Word,
    "SizeOfHeapCommit" / _Word,
    "LoaderFlags" / c.Int32ul,
    "NumberOfRvaAndSizes" / c.Int32ul,
    "DataDirectories" / c.Array(c.this.NumberOfRvaAndSizes, DataDirectory),
)

SectionHeader = c.Struct(
    "Name" / c.Bytes(8),
    "VirtualSize" / c.Int32ul,
    "VirtualAddress" / c.Int32ul,
    "SizeOfRawData" / c.Int32ul,
    "PointerToRawData" / c.Int32ul,
    "PointerToRelocations" / c.Int32ul,
    "PointerToLinenumbers" / c.Int32ul,
    "NumberOfRelocations" / c.Int16ul,
    "NumberOfLinenumbers" / c.Int16ul,
    "Characteristics" / c.Int32ul,
)
SECTION_HEADER_SIZE = SectionHeader.sizeof()

DebugDirectoryEntry = c.Struct(
    "Characteristics" / c.Int32ul,
    "TimeDateStamp" / c.Int32ul,
    "MajorVersion" / c.Int16ul,
    "MinorVersion" / c.Int16ul,
    "Type" / c.Int32ul,
    "SizeOfData" / c.Int32ul,
    "AddressOfRawData" / c.Int32ul,
    "PointerToRawData" / c.Int32ul,
)
DEBUG_ENTRY_SIZE = DebugDirectoryEntry.sizeof()
DEBUG_POINTER_OFFSET = 24

WinCertificateHeader = c.Struct(
    "dwLength" / c.Int32ul,
    "wRevision" / c.Int16ul,
    "wCertificateType" / c.Int16ul,
)

# Generous: real images have tens of sections, and a parser fed junk must not allocate for 65535.
MAX_SECTIONS = 96
MAX_HEADER_BYTES = 1 << 20
# The PE specification's limit is 64 KiB; section alignment is a page or a large page.
MAX_FILE_ALIGNMENT = 1 << 16
MAX_SECTION_ALIGNMENT = 1 << 30


@dataclass(frozen=True)
class Section:
    name: str
    """Decoded name; long COFF names (/nnn) are resolved through the string table."""
    header: c.Container

    @property
    def virtual_address(self) -> int:
        return int(self.header.VirtualAddress)

    @property
    def virtual_size(self) -> int:
        return int(self.header.VirtualSize)

    @property
    def raw_offset(self) -> int:
        return int(self.header.PointerToRawData)

    @property
    def raw_size(self) -> int:
        return int(self.header.SizeOfRawData)

    @property
    def characteristics(self) -> int:
        return int(self.header.Characteristics)

    @property
    def loaded_size(self) -> int:
        """What a loader maps: VirtualSize, or the raw size where a linker left it zero."""
        return self.virtual_size or self.raw_size

    @property
    def data_size(self) -> int:
        """The meaningful bytes in the file: the payload without the FileAlignment padding."""
        if self.virtual_size:
            return min(self.virtual_size, self.raw_size)
        return self.raw_size

    @property
    def is_debug(self) -> bool:
        return self.name.startswith((".debug_", ".zdebug_"))


@dataclass(frozen=True)
class PeImage:
    """The headers of a PE image; section contents stay in the file."""

    dos: bytes
    """Everything before the PE signature (DOS header and stub), kept verbatim."""
    coff: c.Container
    optional: c.Container
    optional_tail: bytes
    """Bytes of the optional header after the data directories (normally none)."""
    sections: tuple[Section, ...]
    file_size: int
    section_table_offset: int

    @property
    def machine(self) -> int:
        return int(self.coff.Machine)

    @property
    def machine_name(self) -> str:
        return MACHINE_NAMES.get(self.machine, f"0x{self.machine:04x}")

    @property
    def is_pe32plus(self) -> bool:
        return int(self.optional.Magic) == PE32PLUS_MAGIC

    @property
    def section_alignment(self) -> int:
        return int(self.optional.SectionAlignment)

    @property
    def file_alignment(self) -> int:
        return int(self.optional.FileAlignment)

    @property
    def size_of_headers(self) -> int:
        return int(self.optional.SizeOfHeaders)

    @property
    def size_of_image(self) -> int:
        return int(self.optional.SizeOfImage)

    @property
    def image_base(self) -> int:
        return int(self.optional.ImageBase)

    def directory(self, index: int) -> tuple[int, int]:
        directories = self.optional.DataDirectories
        if index >= len(directories):
            return (0, 0)
        return (int(directories[index].VirtualAddress), int(directories[index].Size))

    @property
    def signature(self) -> tuple[int, int] | None:
        """(file offset, length) of the Authenticode certificate table, when there is one."""
        offset, length = self.directory(DIRECTORY_SECURITY)
        if offset and length:
            return (offset, length)
        return None

    def section(self, name: str) -> Section | None:
        for section in self.sections:
            if section.name == name:
                return section
        return None

    def rva_to_offset(self, rva: int) -> int | None:
        for section in self.sections:
            start = section.virtual_address
            if (
                start <= rva < start + min(section.raw_size, section.loaded_size)
                and section.raw_size
            ):
                return section.raw_offset + (rva - start)
        return None

    @property
    def header_bytes_needed(self) -> int:
        return int(self.section_table_offset + SECTION_HEADER_SIZE * len(self.sections))


def _read_exact(stream: BinaryIO, offset: int, length: int, what: str) -> bytes:
    stream.seek(offset)
    data = stream.read(length)
    if len(data) != length:
        raise FormatError(f"truncated PE image: {what} ends past the end of the file")
    return data


def parse(stream: BinaryIO) -> PeImage:
    """Read the headers of a PE image. Raises FormatError for anything that is not one."""
    stream.seek(0, 2)
    file_size = stream.tell()
    if file_size < 0x40:
        raise FormatError("not a PE image: shorter than a DOS header")
    head = _read_exact(stream, 0, 0x40, "the DOS header")
    if head[:2] != b"MZ":
        raise FormatError("not a PE image: no MZ signature")
    e_lfanew = DosHeader.parse(head).e_lfanew
    if e_lfanew < 0x40 or e_lfanew + 24 > min(file_size, MAX_HEADER_BYTES):
        raise FormatError("not a PE image: e_lfanew points outside the file")
    dos = _read_exact(stream, 0, e_lfanew, "the DOS stub")
    if _read_exact(stream, e_lfanew, 4, "the PE signature") != b"PE\0\0":
        raise FormatError("not a PE image: no PE signature at e_lfanew")
    coff = CoffHeader.parse(_read_exact(stream, e_lfanew + 4, CoffHeader.sizeof(), "COFF header"))
    optional_offset = e_lfanew + 4 + CoffHeader.sizeof()
    optional_size = int(coff.SizeOfOptionalHeader)
    if optional_size < 96 or optional_offset + optional_size > min(file_size, MAX_HEADER_BYTES):
        raise FormatError("not a PE image: bad SizeOfOptionalHeader")
    optional_raw = _read_exact(stream, optional_offset, optional_size, "optional header")
    try:
        optional = OptionalHeader.parse(optional_raw)
    except c.ConstructError:
        raise FormatError("not a PE image: unknown optional header magic or truncated") from None
    consumed = OptionalHeader.build(optional)
    if len(consumed) > optional_size:
        raise FormatError("not a PE image: data directories overrun the optional header")
    if int(optional.SizeOfHeaders) > file_size:
        raise TruncatedError.stated(
            "PE image", size=file_size, needed=int(optional.SizeOfHeaders), by="SizeOfHeaders"
        )
    if int(coff.NumberOfSections) > MAX_SECTIONS:
        raise FormatError(f"not a usable PE image: {coff.NumberOfSections} sections")
    table_offset = optional_offset + optional_size
    count = int(coff.NumberOfSections)
    table = _read_exact(stream, table_offset, SECTION_HEADER_SIZE * count, "section table")
    strings = _string_table(stream, coff, file_size)
    sections = []
    for index in range(count):
        header = SectionHeader.parse(table[index * SECTION_HEADER_SIZE :])
        sections.append(Section(_section_name(header.Name, strings), header))
    # What the headers say the file holds: every section's raw data (what a loader reads, so
    # named first), then the COFF symbol and string tables (after the sections in an image that
    # keeps them, as Debian's x86 xen.efi does) and the certificate table (whose "address" is a
    # file offset), which a cut-short signed image loses first.
    ends = [
        (section.raw_offset + section.raw_size, f"its section table (section {section.name})")
        for section in sections
        if section.raw_size
    ]
    needed, by = max(ends, default=(0, ""))
    if needed > file_size:
        raise TruncatedError.stated("PE image", size=file_size, needed=needed, by=by)
    if int(coff.PointerToSymbolTable):
        symbols_end = int(coff.PointerToSymbolTable) + 18 * int(coff.NumberOfSymbols)
        ends.append((symbols_end, "its COFF header (the symbol table)"))
        if symbols_end + 4 <= file_size:
            stream.seek(symbols_end)
            (strings_size,) = struct.unpack("<I", stream.read(4))
            ends.append((symbols_end + strings_size, "its COFF string table's size"))
    directories = optional.DataDirectories
    if len(directories) > DIRECTORY_SECURITY and directories[DIRECTORY_SECURITY].Size:
        security = directories[DIRECTORY_SECURITY]
        ends.append((int(security.VirtualAddress) + int(security.Size), "its certificate table"))
    needed, by = max(ends, default=(0, ""))
    if needed > file_size:
        raise TruncatedError.stated("PE image", size=file_size, needed=needed, by=by)
    return PeImage(
        dos=dos,
        coff=coff,
        optional=optional,
        optional_tail=optional_raw[len(consumed) :],
        sections=tuple(sections),
        file_size=file_size,
        section_table_offset=table_offset,
    )


def _string_table(stream: BinaryIO, coff: c.Container, file_size: int) -> bytes:
    pointer = int(coff.PointerToSymbolTable)
    if not pointer:
        return b""
    start = pointer + 18 * int(coff.NumberOfSymbols)
    if start + 4 > file_size:
        return b""
    stream.seek(start)
    (length,) = struct.unpack("<I", stream.read(4))
    if length < 4 or start + length > file_size or length > MAX_HEADER_BYTES:
        return b""
    return stream.read(length - 4)


def _section_name(raw: bytes, strings: bytes) -> str:
    name = raw.rstrip(b"\0")
    if name.startswith(b"/") and name[1:].isdigit() and strings:
        offset = int(name[1:]) - 4
        if 0 <= offset < len(strings):
            end = strings.find(b"\0", offset)
            name = strings[offset : end if end >= 0 else len(strings)]
    return name.decode("ascii", "replace")


def encode_section_name(name: str) -> bytes:
    encoded = name.encode("ascii")
    if len(encoded) > 8:
        raise FormatError(f"section name {name!r} is longer than 8 bytes")
    return encoded.ljust(8, b"\0")


@dataclass(frozen=True)
class NewSection:
    name: str
    payload: Payload
    characteristics: int = READONLY_DATA
    alignment: int = 0
    """RVA alignment wanted on top of the image's SectionAlignment (0: SectionAlignment)."""


@dataclass(frozen=True)
class WrittenSection:
    name: str
    virtual_address: int
    virtual_size: int
    raw_offset: int
    raw_size: int


@dataclass(frozen=True)
class WriteResult:
    sections: tuple[WrittenSection, ...]
    size_of_image: int
    size_of_headers: int
    checksum: int
    file_size: int
    dropped: tuple[str, ...]
    signature_removed: bool


HeadersHook = Callable[[bytes, int], None]
"""Called with the final headers and the file's size before any section data is written, when
the writer knows them first (every payload's size known): the moment to set up anything that
must see the output's bytes in order, such as its digests."""


class Checksum:
    """The PE image checksum (16-bit one's complement sum plus the file length), fed in pieces.

    Only the sum modulo 0xFFFF matters: a byte at an even file offset adds its value, at an odd
    one 256 times its value (since 0x10000 = 1 modulo 0xFFFF, so does every 16-bit word, and
    every 32-bit word is its two halves). Summing 32-bit words with numpy keeps this cheap.
    """

    def __init__(self) -> None:
        self.residue = 0
        self.nonzero = False

    @staticmethod
    def _weight(offset: int, data: bytes | bytearray | memoryview) -> int:
        # Imported here: numpy takes ~40 ms to import, which inspect and check need not pay.
        import numpy as np

        view = memoryview(data).cast("B")
        length = len(view)
        whole = length & ~3
        total = int(np.frombuffer(view, dtype="<u4", count=whole // 4).sum(dtype=np.uint64))
        for index in range(whole, length):
            total += view[index] << (8 * (index & 1))
        return total * 256 if offset & 1 else total

    def update(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        weight = self._weight(offset, data)
        if weight:
            self.nonzero = True
            self.residue = (self.residue + weight) % 0xFFFF

    def replace(self, offset: int, old: bytes, new: bytes) -> None:
        """Bytes already summed at `offset` were overwritten with `new`."""
        self.residue = (
            self.residue + self._weight(offset, new) - self._weight(offset, old)
        ) % 0xFFFF
        self.nonzero = self.nonzero or any(new)

    def add(self, other: Checksum) -> None:
        """Fold in the sum of other bytes (at their own offsets)."""
        self.residue = (self.residue + other.residue) % 0xFFFF
        self.nonzero = self.nonzero or other.nonzero

    def finish(self, file_length: int) -> int:
        # Folding with end-around carry never gives 0 once anything was non-zero.
        folded = self.residue or (0xFFFF if self.nonzero else 0)
        return (folded + file_length) & 0xFFFFFFFF


@dataclass(frozen=True)
class _Piece:
    """Raw data of one section, in file order: its bytes, and 4-byte fields to rewrite in it."""

    payload: Payload
    patches: tuple[tuple[int, bytes, bytes], ...] = ()
    """(offset in the piece, old bytes, new bytes)."""


@dataclass(frozen=True)
class _Layout:
    """Everything an image's headers say, but the section data: computed from the pieces'
    sizes, before writing (when they are known) or after."""

    dos: bytes
    coff: c.Container
    optional: c.Container
    optional_tail: bytes
    headers_size: int
    file_alignment: int
    kept: tuple[c.Container, ...]
    """Section headers of the pieces that come first (existing sections), ready but for
    PointerToRawData/SizeOfRawData, which `_place` fills in."""
    kept_written: tuple[WrittenSection, ...]
    new: tuple[NewSection, ...]
    new_cursor: int
    """The first RVA free for new sections."""
    section_alignment: int
    initialized_base: int
    """SizeOfInitializedData before the new sections' raw bytes are added."""


def _placed(
    layout: _Layout, pieces: Sequence[_Piece], sizes: Sequence[int]
) -> tuple[bytes, list[WrittenSection], int, int]:
    """(headers, sections written, SizeOfImage, file size) for the pieces' sizes."""
    position = layout.headers_size
    headers: list[c.Container] = []
    written: list[WrittenSection] = []
    kept_count = len(layout.kept)
    for index, header in enumerate(layout.kept):
        header = c.Container(header)
        size = sizes[index]
        if size:
            raw = align_up(size, layout.file_alignment)
            header.PointerToRawData = position
            header.SizeOfRawData = raw
            position += raw
        else:
            header.PointerToRawData = 0
        headers.append(header)
        before = layout.kept_written[index]
        written.append(
            WrittenSection(
                before.name, before.virtual_address, before.virtual_size,
                int(header.PointerToRawData), int(header.SizeOfRawData),
            )
        )  # fmt: skip
    cursor = layout.new_cursor
    added_raw = 0
    for added, size in zip(layout.new, sizes[kept_count:], strict=True):
        rva = align_up(cursor, max(layout.section_alignment, added.alignment, 1))
        raw = align_up(size, layout.file_alignment)
        headers.append(
            c.Container(
                Name=encode_section_name(added.name),
                VirtualSize=size,
                VirtualAddress=rva,
                SizeOfRawData=raw,
                PointerToRawData=position if raw else 0,
                PointerToRelocations=0,
                PointerToLinenumbers=0,
                NumberOfRelocations=0,
                NumberOfLinenumbers=0,
                Characteristics=added.characteristics,
            )
        )
        written.append(WrittenSection(added.name, rva, size, position if raw else 0, raw))
        position += raw
        added_raw += raw
        cursor = rva + max(size, 1)
    optional = c.Container(layout.optional)
    optional.SizeOfInitializedData = (layout.initialized_base + added_raw) & 0xFFFFFFFF
    header_bytes, size_of_image = _headers(
        dos=layout.dos,
        coff=layout.coff,
        optional=optional,
        optional_tail=layout.optional_tail,
        section_headers=headers,
        headers_size=layout.headers_size,
    )
    return header_bytes, written, size_of_image, position


def _write_pieces(
    out: BinaryIO, layout: _Layout, pieces: Sequence[_Piece], checksum: Checksum | None
) -> list[int]:
    """Each piece's data at the output's position, padded to FileAlignment; their sizes."""
    position = layout.headers_size
    sizes = []
    for piece in pieces:
        size = 0
        for view in piece.payload.views():
            data: Chunk = view
            if piece.patches:
                data = _patched(view, size, piece.patches)
            out.write(data)
            if checksum is not None:
                checksum.update(position + size, data)
            size += len(view)
        pad = align_up(size, layout.file_alignment) - size if size else 0
        _pad(out, pad)
        position += size + pad
        sizes.append(size)
    return sizes


def _patched(view: Chunk, at: int, patches: Sequence[tuple[int, bytes, bytes]]) -> Chunk:
    end = at + len(view)
    hits = [(offset, new) for offset, _, new in patches if offset < end and offset + len(new) > at]
    if not hits:
        return view
    data = bytearray(view)
    for offset, new in hits:
        for index, byte in enumerate(new):
            if at <= offset + index < end:
                data[offset + index - at] = byte
    return data


def _sum_pieces(
    layout: _Layout, pieces: Sequence[_Piece], headers: bytes, checksum: Checksum
) -> None:
    """The checksum of the whole file from the inputs, before any of it is written: every
    file range summed in spans on two threads (reading and numpy's sum let go of the GIL),
    which halves the wait before the first byte can be written."""
    checksum.update(0, headers)
    position = layout.headers_size
    spans: list[tuple[Payload, int]] = []  # (a span of an input, its offset in the output)
    for piece in pieces:
        plain = piece.payload.plain()
        size = plain.exact_size
        assert size is not None, "headers go first only when every size is known"
        if isinstance(plain, Region):
            for start in range(0, size, SUM_SPAN):
                length = min(SUM_SPAN, size - start)
                spans.append((Region(plain.path, plain.offset + start, length), position + start))
        else:
            # Not on the threads: a range of the image being rewritten shares its open file.
            checksum.add(_sum_span((plain, position)))
        for offset, old, new in piece.patches:
            checksum.replace(position + offset, old, new)
        position += align_up(size, layout.file_alignment) if size else 0

    with ThreadPoolExecutor(max_workers=2) as workers:
        for part in workers.map(_sum_span, spans):
            checksum.add(part)


def _sum_span(span: tuple[Payload, int]) -> Checksum:
    payload, at = span
    part = Checksum()
    done = 0
    for view in payload.views():
        part.update(at + done, view)
        done += len(view)
    return part


SUM_SPAN = 64 << 20


def _write(
    out: BinaryIO,
    layout: _Layout,
    pieces: Sequence[_Piece],
    *,
    dropped: tuple[str, ...],
    signature_removed: bool,
    before_data: HeadersHook | None,
) -> WriteResult:
    """The image: headers first where every size is known (its bytes then leave in file
    order, for digests that watch them go by), else after the data they describe."""
    _empty(out)
    exact = [piece.payload.exact_size for piece in pieces]
    checksum = Checksum()
    if before_data is not None and all(size is not None for size in exact):
        planned = [size for size in exact if size is not None]
        headers, written, size_of_image, file_size = _placed(layout, pieces, planned)
        _sum_pieces(layout, pieces, headers, checksum)
        total = checksum.finish(file_size)
        headers = _with_checksum(layout, headers, total)
        before_data(headers, file_size)
        out.write(headers)
        sizes = _write_pieces(out, layout, pieces, None)
        if sizes != planned:
            raise FormatError(
                "an input changed size while it was being written; build again once it is "
                "no longer being written to"
            )
    else:
        out.write(b"\0" * layout.headers_size)
        sizes = _write_pieces(out, layout, pieces, checksum)
        headers, written, size_of_image, file_size = _placed(layout, pieces, sizes)
        checksum.update(0, headers)
        total = checksum.finish(file_size)
        out.seek(0)
        out.write(_with_checksum(layout, headers, total))
    if out.seek(0, 2) != file_size:
        out.truncate(file_size)
    out.seek(file_size)
    return WriteResult(
        sections=tuple(written),
        size_of_image=size_of_image,
        size_of_headers=layout.headers_size,
        checksum=total,
        file_size=file_size,
        dropped=dropped,
        signature_removed=signature_removed,
    )


def _with_checksum(layout: _Layout, headers: bytes, total: int) -> bytes:
    at = len(layout.dos) + 4 + CoffHeader.sizeof() + CHECKSUM_OFFSET_IN_OPTIONAL
    return headers[:at] + struct.pack("<I", total) + headers[at + 4 :]


class PeWriter:
    """Adds sections to an existing image, keeping its sections' RVAs and contents.

    The rules kept: section headers sorted by RVA; a new section's RVA after every existing
    section, aligned to SectionAlignment (and the caller's alignment); raw data contiguous and
    aligned to FileAlignment, so that there are no gaps for Authenticode tools to warn about;
    room for the new headers made by moving raw data, never by overlapping the first section;
    file offsets inside the image (debug directory entries) moved with the data; the COFF
    symbol table and any signature dropped; SizeOfImage and CheckSum recomputed.
    """

    def __init__(
        self,
        source: BinaryIO,
        image: PeImage,
        *,
        drop: Callable[[Section], bool] = lambda section: False,
        characteristics: Callable[[Section], int] | None = None,
    ) -> None:
        """`drop` says which sections to leave out; `characteristics`, if given, the flags
        each kept section is written with (the caller's policy: which loader maps what)."""
        # The writer pads to these: a header's word must not make it write gigabytes of zeros.
        for name, value, limit in (
            ("FileAlignment", image.file_alignment, MAX_FILE_ALIGNMENT),
            ("SectionAlignment", image.section_alignment, MAX_SECTION_ALIGNMENT),
        ):
            if value < 1 or value > limit or value & (value - 1):
                raise FormatError(
                    f"{name} 0x{value:x} is not a power of two up to 0x{limit:x}; "
                    "no loader takes such an image"
                )
        self.source = source
        self.image = image
        self.kept = tuple(s for s in image.sections if not drop(s))
        self.dropped = tuple(s.name for s in image.sections if drop(s))
        self.characteristics = characteristics

    def layout_end(self) -> int:
        """The first RVA after every kept section (and the headers)."""
        end = self.image.size_of_headers
        for section in self.kept:
            end = max(end, section.virtual_address + max(section.loaded_size, 1))
        return end

    def plan_rvas(self, new: Sequence[tuple[int, int]]) -> list[int]:
        """RVAs for new sections given as (size upper bound, extra alignment)."""
        rvas = []
        cursor = self.layout_end()
        for length, alignment in new:
            rva = align_up(cursor, max(self.image.section_alignment, alignment, 1))
            rvas.append(rva)
            cursor = rva + max(length, 1)
        return rvas

    def header_size(self, new_count: int) -> int:
        table_end = self.image.section_table_offset + SECTION_HEADER_SIZE * (
            len(self.kept) + new_count
        )
        return max(align_up(table_end, self.image.file_alignment), self.image.size_of_headers)

    def write(
        self,
        new: Sequence[NewSection],
        out: BinaryIO,
        *,
        before_data: HeadersHook | None = None,
    ) -> WriteResult:
        image = self.image
        file_alignment = max(image.file_alignment, 1)
        headers_size = self.header_size(len(new))
        first_rva = min((s.virtual_address for s in self.kept if s.loaded_size), default=None)
        if first_rva is not None and headers_size > first_rva:
            raise FormatError(
                f"no room for {len(new)} more section headers: the headers would need "
                f"0x{headers_size:x} bytes but the first section is loaded at RVA 0x{first_rva:x}"
            )
        kept_headers: list[c.Container] = []
        kept_written: list[WrittenSection] = []
        pieces: list[_Piece] = []
        moves: list[tuple[int, int, int]] = []  # (old offset, length, new offset)
        position = headers_size
        for section in self.kept:
            header = c.Container(section.header)
            header.Name = _short_name(section)
            if self.characteristics is not None:
                header.Characteristics = self.characteristics(section)
            header.PointerToRelocations = 0
            header.PointerToLinenumbers = 0
            header.NumberOfRelocations = 0
            header.NumberOfLinenumbers = 0
            kept_headers.append(header)
            kept_written.append(
                WrittenSection(section.name, section.virtual_address, int(header.VirtualSize), 0, 0)
            )
            pieces.append(
                _Piece(StreamRange(self.source, section.raw_offset, section.raw_size, section.name))
            )
            if section.raw_size:
                moves.append((section.raw_offset, section.raw_size, position))
                position += align_up(section.raw_size, file_alignment)
        pieces = self._with_debug_patches(pieces, moves)
        pieces += [_Piece(added.payload) for added in new]
        optional = c.Container(image.optional)
        directories = [c.Container(d) for d in image.optional.DataDirectories]
        signature_removed = False
        if len(directories) > DIRECTORY_SECURITY and directories[DIRECTORY_SECURITY].Size:
            directories[DIRECTORY_SECURITY] = c.Container(VirtualAddress=0, Size=0)
            signature_removed = True
        optional.DataDirectories = directories
        coff = c.Container(image.coff)
        coff.PointerToSymbolTable = 0
        coff.NumberOfSymbols = 0
        layout = _Layout(
            dos=image.dos,
            coff=coff,
            optional=optional,
            optional_tail=image.optional_tail,
            headers_size=headers_size,
            file_alignment=file_alignment,
            kept=tuple(kept_headers),
            kept_written=tuple(kept_written),
            new=tuple(new),
            new_cursor=self.layout_end(),
            section_alignment=image.section_alignment,
            initialized_base=int(image.optional.SizeOfInitializedData),
        )
        return _write(
            out, layout, pieces, dropped=self.dropped, signature_removed=signature_removed,
            before_data=before_data,
        )  # fmt: skip

    def _with_debug_patches(
        self, pieces: list[_Piece], moves: Sequence[tuple[int, int, int]]
    ) -> list[_Piece]:
        """Debug directory entries hold file offsets: point them at the data's new place. The
        rewrite is known before anything is written, and made as the section is copied."""
        rva, length = self.image.directory(DIRECTORY_DEBUG)
        if not rva or not length:
            return pieces
        table_offset = self.image.rva_to_offset(rva)
        if table_offset is None:
            return pieces

        def relocate(offset: int) -> int | None:
            for old, size, new in moves:
                if old <= offset < old + size:
                    return new + (offset - old)
            return None

        owner = next(
            (
                index
                for index, section in enumerate(self.kept)
                if section.raw_size
                and section.raw_offset <= table_offset < section.raw_offset + section.raw_size
            ),
            None,
        )
        if owner is None:
            return pieces
        section = self.kept[owner]
        patches = []
        for index in range(min(length // DEBUG_ENTRY_SIZE, 64)):
            field_at = table_offset + index * DEBUG_ENTRY_SIZE + DEBUG_POINTER_OFFSET
            if field_at + 4 > section.raw_offset + section.raw_size:
                break
            self.source.seek(field_at)
            old_bytes = self.source.read(4)
            if len(old_bytes) != 4:
                break
            (pointer,) = struct.unpack("<I", old_bytes)
            moved = relocate(pointer) if pointer else 0
            new_bytes = struct.pack("<I", moved or 0)
            if new_bytes != old_bytes:
                patches.append((field_at - section.raw_offset, old_bytes, new_bytes))
        if not patches:
            return pieces
        result = list(pieces)
        result[owner] = _Piece(pieces[owner].payload, tuple(patches))
        return result


def _headers(
    *,
    dos: bytes,
    coff: c.Container,
    optional: c.Container,
    optional_tail: bytes,
    section_headers: Sequence[c.Container],
    headers_size: int,
) -> tuple[bytes, int]:
    """The headers, CheckSum 0, padded to `headers_size`; and SizeOfImage."""
    end = max(
        [headers_size]
        + [
            int(h.VirtualAddress) + (int(h.VirtualSize) or int(h.SizeOfRawData))
            for h in section_headers
        ]
    )
    size_of_image = align_up(end, max(int(optional.SectionAlignment), 1))
    if size_of_image >= 1 << 32:
        raise FormatError(f"the image would be 0x{size_of_image:x} bytes: PE images end at 4 GiB")
    optional = c.Container(optional)
    optional.SizeOfImage = size_of_image
    optional.SizeOfHeaders = headers_size
    optional.CheckSum = 0
    coff = c.Container(coff)
    coff.NumberOfSections = len(section_headers)
    headers = bytearray(dos)
    headers += b"PE\0\0"
    headers += CoffHeader.build(coff)
    headers += OptionalHeader.build(optional) + optional_tail
    for header in section_headers:
        headers += SectionHeader.build(header)
    if len(headers) > headers_size:
        raise FormatError(f"headers need 0x{len(headers):x} bytes, more than 0x{headers_size:x}")
    headers += b"\0" * (headers_size - len(headers))
    return bytes(headers), size_of_image


def _empty(out: BinaryIO) -> None:
    """Start `out` from nothing. An output that is empty already is not truncated: on ext4,
    truncating a file to nothing makes closing it start writeback of everything written since
    (auto_da_alloc), which costs a build of a GiB a quarter of a second for nothing."""
    if out.seek(0, 2):
        out.truncate(0)
    out.seek(0)


def _short_name(section: Section) -> bytes:
    """Long names point into the COFF string table, which is not carried over: keep 8 bytes."""
    raw = bytes(section.header.Name)
    if raw.startswith(b"/"):
        return section.name.encode("ascii", "replace")[:8].ljust(8, b"\0")
    return raw


def _pad(out: BinaryIO, count: int) -> None:
    if count > 0:
        out.write(b"\0" * count)


WRAP_HEADERS_SIZE = 0x1000
WRAP_FILE_ALIGNMENT = 0x200
WRAP_SECTION_ALIGNMENT = 0x1000
WRAP_CHARACTERISTICS = 0x0206  # executable, line numbers stripped, no relocs stripped


def wrap_image(
    source: BinaryIO,
    image: PeImage,
    new: Sequence[NewSection],
    out: BinaryIO,
    *,
    inner_name: str = ".text",
    before_data: HeadersHook | None = None,
) -> WriteResult:
    """A new PE whose first section is the whole `image` file, followed by new sections.

    For images whose own header has no room for more section headers (arm64 xen.efi's
    hand-written one). The inner image sits at RVA 0x1000 with its full memory size (BSS
    included), so code that expects to be loaded at a page boundary with zeroed BSS still is;
    the entry point moves by 0x1000. Nothing else is relocated: the inner image must be
    position independent (its relocation directory is not carried over).
    """
    inner_rva = WRAP_HEADERS_SIZE
    first = next((s for s in image.sections if s.characteristics & SCN_CNT_CODE), None)
    inner_characteristics = (
        first.characteristics
        if first is not None
        else SCN_CNT_CODE | SCN_MEM_READ | SCN_MEM_EXECUTE
    )
    inner_raw = align_up(image.file_size, WRAP_FILE_ALIGNMENT)
    inner_size = max(image.size_of_image, image.file_size)
    inner_header = c.Container(
        Name=encode_section_name(inner_name),
        VirtualSize=inner_size,
        VirtualAddress=inner_rva,
        SizeOfRawData=inner_raw,
        PointerToRawData=WRAP_HEADERS_SIZE,
        PointerToRelocations=0,
        PointerToLinenumbers=0,
        NumberOfRelocations=0,
        NumberOfLinenumbers=0,
        Characteristics=inner_characteristics,
    )
    dos = bytearray(0x40)
    dos[:2] = b"MZ"
    struct.pack_into("<I", dos, 0x3C, len(dos))
    coff = c.Container(
        Machine=image.machine,
        NumberOfSections=0,
        TimeDateStamp=0,
        PointerToSymbolTable=0,
        NumberOfSymbols=0,
        SizeOfOptionalHeader=0,  # set below, once the optional header is built
        Characteristics=WRAP_CHARACTERISTICS,
    )
    optional = c.Container(
        Magic=PE32PLUS_MAGIC,
        MajorLinkerVersion=0,
        MinorLinkerVersion=0,
        SizeOfCode=inner_raw,
        SizeOfInitializedData=0,
        SizeOfUninitializedData=0,
        AddressOfEntryPoint=int(image.optional.AddressOfEntryPoint) + inner_rva,
        BaseOfCode=inner_rva,
        BaseOfData=None,
        ImageBase=0,
        SectionAlignment=WRAP_SECTION_ALIGNMENT,
        FileAlignment=WRAP_FILE_ALIGNMENT,
        MajorOperatingSystemVersion=0,
        MinorOperatingSystemVersion=0,
        MajorImageVersion=int(image.optional.MajorImageVersion),
        MinorImageVersion=int(image.optional.MinorImageVersion),
        MajorSubsystemVersion=0,
        MinorSubsystemVersion=0,
        Win32VersionValue=0,
        SizeOfImage=0,
        SizeOfHeaders=WRAP_HEADERS_SIZE,
        CheckSum=0,
        Subsystem=int(image.optional.Subsystem),
        DllCharacteristics=0,
        SizeOfStackReserve=0,
        SizeOfStackCommit=0,
        SizeOfHeapReserve=0,
        SizeOfHeapCommit=0,
        LoaderFlags=0,
        NumberOfRvaAndSizes=16,
        DataDirectories=[c.Container(VirtualAddress=0, Size=0) for _ in range(16)],
    )
    coff.SizeOfOptionalHeader = len(OptionalHeader.build(optional))
    layout = _Layout(
        dos=bytes(dos),
        coff=coff,
        optional=optional,
        optional_tail=b"",
        headers_size=WRAP_HEADERS_SIZE,
        file_alignment=WRAP_FILE_ALIGNMENT,
        kept=(inner_header,),
        kept_written=(WrittenSection(inner_name, inner_rva, inner_size, 0, 0),),
        new=tuple(new),
        new_cursor=inner_rva + inner_size,
        section_alignment=WRAP_SECTION_ALIGNMENT,
        initialized_base=0,
    )
    pieces = [_Piece(StreamRange(source, 0, image.file_size, inner_name))]
    pieces += [_Piece(added.payload) for added in new]
    return _write(
        out, layout, pieces, dropped=(), signature_removed=image.signature is not None,
        before_data=before_data,
    )  # fmt: skip


class _HeadersOnly(io.BytesIO):
    """The headers of a file of `file_size` bytes, for parsing them before the file exists."""

    def __init__(self, headers: bytes, file_size: int) -> None:
        super().__init__(headers)
        self.file_size = file_size

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            return super().seek(self.file_size + offset)
        return super().seek(offset, whence)


def parse_headers(headers: bytes, file_size: int) -> PeImage:
    """What `parse` reads of a file that holds `headers` and is `file_size` bytes long."""
    return parse(_HeadersOnly(headers, file_size))
