"""What an input file is: a kernel (and for which architecture) or an initrd (and how packed),
and whether it is whole.

Probing reads headers, and for gzip'd kernels streams the whole file once (to find the
architecture inside and to check that the gzip stream ends where the file ends). A file cut
short (an interrupted copy or download) is refused wherever its format states its own length:
a bzImage's setup header, the PE header of an EFI-stub kernel, an ELF's header tables, the
block headers of LZ4 legacy and zstd streams, an xz stream's footer, and a cpio archive's
member headers and trailer.

How far an initrd is checked (check_initrd_length): it may be gigabytes, so nothing is
decompressed for the check. A plain cpio archive's member headers are read (seeking over the
data between them); a compressed one's framing is read where it states lengths (LZ4 legacy and
zstd block headers, the xz footer), a few reads however large it is. gzip, bzip2, lzma and lzo
state no length: only inflating all of it would find that one ends early, which would cost
seconds a gigabyte, so they are not checked here; where hlimage decompresses an initrd anyway
(initrd_compression = "lz4", hlimage.payloads) the stream's end and the cpio archive inside it
are checked on that pass.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from hlimage.errors import FormatError, TruncatedError
from hlimage.formats import ReadAt, compression, cpio, elf, leading_zeros, linux, multiboot2, pe
from hlimage.formats.payload import Region

# pyelftools names the machine; these are the architectures hlimage knows.
ELF_MACHINES = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "arm64", "EM_ARM": "arm32"}
HEAD = 64 * 1024
# What one read of a cpio archive's headers takes; member data beyond it is seeked over.
CPIO_READ = 64 * 1024


class _Prefix(io.BytesIO):
    """The first bytes of something `length` bytes long, as a file for pe.parse: the headers are
    in the first bytes; past them it reads zeros (which state nothing), and seeking to the end
    finds `length`. For kernels inside a compressed stream or a section, not read whole."""

    def __init__(self, head: bytes, length: int) -> None:
        super().__init__(head)
        self._length = length

    def seek(self, offset: int, whence: int = 0) -> int:
        if whence == 2:
            return super().seek(self._length + offset)
        return super().seek(offset, whence)

    def read(self, size: int | None = -1) -> bytes:
        position = self.tell()
        data = super().read(size)
        wanted = self._length - position if size is None or size < 0 else size
        missing = min(wanted, self._length - position) - len(data)
        return data + bytes(max(0, missing))


def check_kernel_length(head: bytes, length: int) -> None:
    """TruncatedError when a kernel of `length` bytes starting with `head` is shorter than its
    headers say: a bzImage's setup header, an ELF's header tables, an EFI stub's PE header
    (bzImage and arm64 Image alike; an arm64 Image's own header states no file length)."""
    bz = linux.parse_bzimage(head)
    if bz is not None:
        bz.check_length(length)
    elf.check_length(head, length)
    if head[:2] == b"MZ":
        try:
            pe.parse(_Prefix(head, length))
        except TruncatedError:
            raise
        except FormatError:
            pass  # a stub header no loader of a kernel reads; what Xen reads was checked


@dataclass(frozen=True)
class _Source:
    read: ReadAt
    data_from: Callable[[int], int]
    """The first offset at or after this one that may hold anything but zeros: past a hole in
    a sparse file at once (SEEK_DATA), where the file system says where its holes are."""


@contextlib.contextmanager
def _read_at(region: Region) -> Iterator[_Source]:
    """Positional reads of a region: pread on its file where it is a plain range of one (only
    what is asked for is read), else one forward pass over its chunks (a file inside a FAT
    volume, say)."""
    if type(region) is Region:
        with open(region.path, "rb", buffering=0) as stream:
            descriptor = stream.fileno()

            def read(offset: int, count: int) -> bytes:
                count = max(0, min(count, region.length - offset))
                return os.pread(descriptor, count, region.offset + offset) if count else b""

            def data_from(offset: int) -> int:
                try:
                    found = os.lseek(descriptor, region.offset + offset, os.SEEK_DATA)
                except OSError as error:
                    # ENXIO: nothing but a hole to the end; anything else: no hole map.
                    return region.length if error.errno == errno.ENXIO else offset
                return max(offset, min(found - region.offset, region.length))

            yield _Source(read, data_from)
        return
    chunks = region.chunks()
    try:
        yield _Source(_ForwardReader(chunks).read, lambda offset: offset)
    finally:
        close = getattr(chunks, "close", None)  # a generator's: its file closes now
        if close is not None:
            close()


class _ForwardReader:
    """ReadAt over a stream of chunks, for readers whose offsets only grow."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._base = 0
        self._buffer = bytearray()

    def _more(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        self._buffer += chunk
        return True

    def read(self, offset: int, count: int) -> bytes:
        assert offset >= self._base, "offsets must not go back"
        while self._base + len(self._buffer) < offset:
            self._base += len(self._buffer)
            self._buffer.clear()
            if not self._more():
                return b""
        del self._buffer[: offset - self._base]
        self._base = offset
        while len(self._buffer) < count and self._more():
            pass
        return bytes(self._buffer[:count])


@dataclass(frozen=True)
class KernelInfo:
    kind: str
    """bzImage, elf, arm64-image, arm32-zimage, efi-zboot; 'gzip ' prefixed when compressed."""
    arch: str | None
    version: str | None = None
    detail: str = ""

    def describe(self) -> str:
        parts = [self.kind]
        if self.arch:
            parts.append(self.arch)
        if self.version:
            parts.append(self.version)
        if self.detail:
            parts.append(self.detail)
        return ", ".join(parts)


def _elf_machine(head: bytes) -> str | None:
    # Imported here: pyelftools takes ~20 ms to import, and most inputs are not ELF.
    from elftools.common.exceptions import ELFError
    from elftools.elf.elffile import ELFFile

    try:
        machine = ELFFile(io.BytesIO(head))["e_machine"]
    except (ELFError, struct.error, ValueError, KeyError, IndexError):
        return None
    return ELF_MACHINES.get(machine)


def _uncompressed_kernel(head: bytes) -> KernelInfo | None:
    bz = linux.parse_bzimage(head)
    if bz is not None:
        return KernelInfo("bzImage", "x86_64", bz.version, f"boot protocol {bz.protocol_text}")
    arm = linux.parse_arm64(head)
    if arm is not None:
        return KernelInfo("arm64-image", "arm64", linux.linux_banner_version(head))
    if head[:4] == b"\x7fELF":
        machine = _elf_machine(head)
        if multiboot2.find(head) is not None:
            # Not Linux: Xen's own xen.gz, most likely, given as a kernel by mistake.
            return KernelInfo("multiboot2 elf", machine)
        return KernelInfo("elf", machine, linux.linux_banner_version(head))
    if head[:2] == b"MZ" and head[4:8] == b"zimg":
        return KernelInfo("efi-zboot", None)
    if len(head) >= 0x28 and struct.unpack_from("<I", head, 0x24)[0] == 0x016F2818:
        return KernelInfo("arm32-zimage", "arm32")
    return None


def probe_kernel(region: Region) -> KernelInfo:
    head = region.head(HEAD)
    info = _uncompressed_kernel(head)
    if info is not None:
        if info.kind == "bzImage":
            bz = linux.parse_bzimage(head)
            assert bz is not None
            if bz.protocol < 0x208:
                raise FormatError(
                    f"bzImage with boot protocol {bz.protocol_text}: Xen needs 2.08 or newer; "
                    "give a newer kernel"
                )
        check_kernel_length(head, region.length)
        return info
    kind = compression.detect(head)
    if kind == compression.GZIP:
        return _probe_gzip_kernel(region)
    if kind is not None:
        with _read_at(region) as source:
            compression.stream_end(kind, source.read, 0, region.length)
        inner = _decompressed_head(kind, region)
        inner_info = _uncompressed_kernel(inner) if inner else None
        if inner_info is None:
            raise FormatError(f"{kind} data that does not hold a kernel; give a kernel image")
        return KernelInfo(f"{kind} {inner_info.kind}", inner_info.arch, inner_info.version)
    raise FormatError(
        "not a kernel: no bzImage, ELF, arm64 Image or gzip header; give the kernel image"
    )


def _decompressed_head(kind: str, region: Region) -> bytes:
    out = bytearray()
    try:
        for chunk in compression.decompress(kind, region.chunks()):
            out += chunk
            if len(out) >= HEAD:
                break
    except FormatError:
        if not out:
            raise
    return bytes(out[:HEAD])


def _probe_gzip_kernel(region: Region) -> KernelInfo:
    """Xen (and its Arm loader) takes the decompressed size from the file's last 4 bytes, so a
    gzip'd kernel must be exactly one gzip member with nothing after it."""
    decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    head = bytearray()
    total = 0
    trailing = 0
    ended = False
    for chunk in region.chunks():
        if ended:
            trailing += len(chunk)
            continue
        data = chunk
        while True:
            try:
                out = decompressor.decompress(data, 1 << 20)
            except zlib.error as error:
                raise FormatError(
                    f"corrupt gzip data in the kernel ({error}); give an intact file "
                    "(gzip -t checks one)"
                ) from None
            if len(head) < HEAD:
                head += out[: HEAD - len(head)]
            total += len(out)
            if decompressor.eof:
                ended = True
                trailing += len(decompressor.unused_data)
                break
            data = decompressor.unconsumed_tail
            if not data and len(out) < 1 << 20:
                break
    if not ended:
        raise FormatError(
            "truncated gzip kernel: the gzip stream ends before its end marker; give the "
            "whole file (gzip -t checks one)"
        )
    if trailing:
        raise FormatError(
            f"gzip kernel has {trailing} bytes after the gzip stream; Xen reads the size from "
            "the last 4 bytes, so strip the padding (e.g. gzip -dc | gzip -n)"
        )
    inner = _uncompressed_kernel(bytes(head))
    if inner is None:
        raise FormatError("gzip data that does not hold a kernel; give a kernel image")
    try:
        check_kernel_length(bytes(head), total)
    except TruncatedError as error:
        # Whole gzip data of a kernel that was cut short before it was compressed.
        raise TruncatedError(
            f"the gzip data decompresses to a {error}", size=error.size, needed=error.needed
        ) from None
    (stored,) = struct.unpack("<I", region.tail(4))
    if stored != total & 0xFFFFFFFF:
        raise FormatError(
            "gzip kernel's size field does not match its contents (Xen reads the size from "
            "there); recompress it (gzip -dc | gzip -n)"
        )
    return KernelInfo(f"gzip {inner.kind}", inner.arch, inner.version, inner.detail)


@dataclass(frozen=True)
class InitrdInfo:
    kind: str
    """cpio, gzip, xz, zstd, lz4-legacy, bzip2, lzma, lzo, or unknown."""
    first_member: str | None = None

    def describe(self) -> str:
        if self.kind == "cpio" and self.first_member:
            return f"cpio (newc), first member {self.first_member}"
        if self.kind == "cpio":
            return "cpio (newc)"
        return f"{self.kind} compressed"


LINUX_INITRD_KINDS = {
    compression.GZIP,
    compression.XZ,
    compression.ZSTD,
    compression.LZ4_LEGACY,
    compression.BZIP2,
    compression.LZMA,
    compression.LZO,
}


def probe_initrd(region: Region) -> InitrdInfo:
    head = region.head(512)
    if cpio.is_newc(head):
        first = None
        with contextlib.suppress(FormatError):
            first = next(cpio.members(io.BytesIO(head)), None)
        return InitrdInfo("cpio", first.name if first else None)
    kind = compression.detect(head)
    if kind == compression.LZ4_FRAME:
        raise FormatError(
            "LZ4 frame format: Linux reads only LZ4 legacy frames; recompress with 'lz4 -l' or "
            'set initrd_compression = "lz4"'
        )
    if kind in LINUX_INITRD_KINDS:
        return InitrdInfo(kind)
    return InitrdInfo("unknown")


def check_initrd_length(region: Region) -> None:
    """TruncatedError when an initrd (probe_initrd found it cpio or compressed) is cut short,
    as far as its formats state lengths without decompressing (see the module's docstring).
    Like Linux's unpacker, takes archives one after another: cpio archives, zero padding, and
    compressed streams (an early cpio of microcode before a compressed main one, say)."""
    with _read_at(region) as source:
        position, length = 0, region.length
        while position < length:
            head = source.read(position, 16)
            if cpio.is_newc(head):
                position = _cpio_end(source, position, length)
            elif head[:1] == b"\0":
                position = _after_zeros(source, position, length)
            else:
                kind = compression.detect(head)
                end = compression.stream_end(kind, source.read, position, length)
                if end is None:
                    return  # where this ends, only decompressing finds; what follows is unseen
                position = end


def _cpio_end(source: _Source, start: int, length: int) -> int:
    """Where the cpio archives (and the zero padding after them) at `start` end."""
    check = cpio.ArchiveCheck(start, stop_at_other=True)
    while check.offset < length and check.other_at is None:
        if check.skippable:
            check.skip(min(check.skippable, length - check.offset))
            continue
        if check.at_padding:
            hole = source.data_from(check.offset) - check.offset
            if hole > 0:
                check.skip_padding(hole)
                continue
        data = source.read(check.offset, min(CPIO_READ, length - check.offset))
        if not data:
            break
        check.feed(data)
    if check.other_at is not None:
        return check.other_at
    check.finish()
    return check.offset


def _after_zeros(source: _Source, start: int, length: int) -> int:
    position = start
    while position < length:
        position = max(position, source.data_from(position))
        data = source.read(position, min(CPIO_READ, length - position))
        zeros = leading_zeros(data)
        position += zeros
        if zeros < len(data) or not data:
            break
    return min(position, length)
