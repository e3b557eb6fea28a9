"""What an input file is: a kernel (and for which architecture) or an initrd (and how packed).

Probing reads headers, and for compressed kernels streams the whole file once (to find the
architecture inside and to check that the gzip stream ends where the file ends).
"""

from __future__ import annotations

import contextlib
import io
import struct
import zlib
from dataclasses import dataclass

from hlimage.errors import FormatError
from hlimage.formats import compression, cpio, linux, multiboot2
from hlimage.streams import Region

# pyelftools names the machine; these are the architectures hlimage knows.
ELF_MACHINES = {"EM_X86_64": "x86_64", "EM_386": "i386", "EM_AARCH64": "arm64", "EM_ARM": "arm32"}
HEAD = 64 * 1024


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
        return info
    kind = compression.detect(head)
    if kind == compression.GZIP:
        return _probe_gzip_kernel(region)
    if kind is not None:
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
