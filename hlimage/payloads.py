"""A domain's files as payloads: the kernel, and the initrd (joined and recompressed as asked).

Inputs are probed here, before anything is written: a kernel for the wrong architecture, an
initrd Linux cannot unpack or a file cut short is an error naming the description key. Every
output format takes its kernels and initrds from here, so every one refuses the same inputs.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Iterator, Sequence
from pathlib import Path

from hlimage.errors import FormatError, HlimageError, TruncatedError
from hlimage.formats import compression, cpio
from hlimage.formats.payload import ConcatPayload, Payload, Region
from hlimage.inputs import KernelInfo, check_initrd_length, probe_initrd, probe_kernel
from hlimage.model import Domain, InitrdCompression, System

INITRD_ALIGN = 4
RECOMPRESSIBLE = {None, compression.GZIP, compression.XZ, compression.ZSTD, compression.LZ4_LEGACY}


def _label(domain: Domain) -> str:
    return f'[[domain]] "{domain.name}"'


def article(word: str) -> str:
    """'an arm64', 'an x86_64', 'a unknown'... as English says them."""
    return ("an " if word[:1].lower() in "aeiox" else "a ") + word


@functools.lru_cache(maxsize=64)
def _probe_kernel(path: Path, size: int, mtime_ns: int) -> KernelInfo:
    """Keyed by size and time too: a kernel file rewritten since is probed again."""
    return probe_kernel(Region(path))


def kernel_info(system: System, domain: Domain) -> KernelInfo:
    """The domain's kernel, probed (what Xen can load is xen/modules.py's to decide)."""
    key = f"{_label(domain)} kernel"
    try:
        # Domains often share one kernel; a gzip'd one is read whole to probe it, so only once.
        status = domain.kernel.stat()
        info = _probe_kernel(domain.kernel.resolve(), status.st_size, status.st_mtime_ns)
    except TruncatedError as error:
        raise HlimageError(f"{key}: {error}; {error.advice}", where=domain.kernel) from None
    except FormatError as error:
        raise HlimageError(f"{key}: {error}", where=domain.kernel) from None
    except OSError as error:
        raise HlimageError(f"{key}: cannot read: {error.strerror}", where=domain.kernel) from None
    return info


class Lz4LegacyPayload(Payload):
    """Initrd parts decompressed, joined (each padded to 4 bytes) and compressed as one LZ4
    legacy stream: Linux's unpacker ends an LZ4 member only at the end of its input, so the
    whole initrd has to be a single stream."""

    def __init__(self, parts: Sequence[tuple[Region, str | None, str]]) -> None:
        self.parts = tuple(parts)
        self.label = "lz4(" + " + ".join(region.label for region, _, _ in parts) + ")"

    def _estimate(self, region: Region, kind: str | None) -> int:
        if kind is None:
            return region.length
        if kind == compression.GZIP:
            # gzip's trailer holds the size modulo 4 GiB; a corrupt file's holds anything, so
            # only a size deflate could have produced (at most ~1032:1) is believed.
            stored = int(struct.unpack("<I", region.tail(4).rjust(4, b"\0"))[0])
            if region.length // 2 <= stored <= region.length * 1032:
                return stored
        return region.length * 4

    def size_bound(self) -> int:
        raw = sum(self._estimate(region, kind) + INITRD_ALIGN for region, kind, _ in self.parts)
        return compression.lz4_legacy_bound(raw)

    def _joined(self) -> Iterator[bytes]:
        for index, (region, kind, key) in enumerate(self.parts):
            length = 0
            # The one pass that decompresses a compressed part checks the cpio inside too,
            # which probing cannot without decompressing it (an uncompressed part it did).
            archive: cpio.ArchiveCheck | None = None
            try:
                for chunk in compression.decompress(kind, region.chunks()):
                    if not length and kind is not None and cpio.is_newc(chunk):
                        archive = cpio.ArchiveCheck()
                    length += len(chunk)
                    if archive is not None:
                        archive.feed(chunk)
                    yield chunk
            except FormatError as error:
                raise HlimageError(
                    f"{key}: {error}; give an intact file (it is decompressed for "
                    'initrd_compression = "lz4")',
                    where=region.path,
                ) from None
            try:
                if archive is not None:
                    archive.finish()
            except TruncatedError as error:
                raise HlimageError(
                    f"{key}: the {kind} data holds a {error}; {error.advice}", where=region.path
                ) from None
            if index < len(self.parts) - 1 and length % INITRD_ALIGN:
                yield b"\0" * (-length % INITRD_ALIGN)

    def chunks(self) -> Iterator[bytes]:
        return compression.lz4_legacy_compress(self._joined())


def initrd_payload(system: System, domain: Domain) -> Payload | None:
    if not domain.initrd:
        return None
    parts: list[tuple[Region, str | None, str]] = []
    for index, path in enumerate(domain.initrd):
        key = f"{_label(domain)} initrd" + (f"[{index}]" if len(domain.initrd) > 1 else "")
        region = Region(path)
        if region.length == 0:
            raise HlimageError(
                f"{key}: the file is empty; give the initrd, or leave initrd out", where=path
            )
        try:
            info = probe_initrd(region)
            if info.kind != "unknown":
                check_initrd_length(region)
        except TruncatedError as error:
            raise HlimageError(f"{key}: {error}; {error.advice}", where=path) from None
        except FormatError as error:
            raise HlimageError(f"{key}: {error}", where=path) from None
        except OSError as error:
            raise HlimageError(f"{key}: cannot read: {error.strerror}", where=path) from None
        kind = None if info.kind in ("cpio", "unknown") else info.kind
        if domain.initrd_compression is InitrdCompression.LZ4 and kind not in RECOMPRESSIBLE:
            raise HlimageError(
                f'{key}: {kind} data cannot be recompressed; initrd_compression = "lz4" takes '
                "gzip, xz, zstd, lz4 or uncompressed parts",
                where=path,
            )
        parts.append((region, kind, key))
    if domain.initrd_compression is InitrdCompression.LZ4:
        return Lz4LegacyPayload(parts)
    if len(parts) == 1:
        return parts[0][0]
    return ConcatPayload([region for region, _, _ in parts], align=INITRD_ALIGN)
