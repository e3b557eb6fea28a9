"""What a Xen image is: its architecture, version, payload sections, and what it can parse.

A Xen image cut short is refused here, whatever the output: xen.efi by its PE section table
(pe.parse), xen.gz by its gzip stream ending early and the ELF inside by its header tables.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from hlimage.errors import FormatError, HlimageError, TruncatedError
from hlimage.formats import compression, elf, multiboot2, pe
from hlimage.formats.payload import Region
from hlimage.model import System
from hlimage.payloads import article

# Every Xen build prints its banner with this format string (common/kernel.c, xen/drivers).
XEN_BANNER = b"Xen version %d.%d%s"
# The v6 hyperlaunch parser's strings (docs/xen-boot-formats.md 2.3.1); no released Xen has both.
HYPERLAUNCH_STRINGS = (b"hypervisor,xen", b"module-index")
# Arm Xen names itself to dom0 as compatible "xen,xen-MAJOR.MINOR".
ARM_COMPATIBLE = re.compile(rb"xen,xen-(\d+)\.(\d+)\0")
# Distribution builds embed their full version ("4.17.5+72-g01140da4e8-1") as a string.
VERSION_STRING = re.compile(rb"\0([4-9])\.(\d{1,2})\.(\d{1,3})(?:[+~-][\w.+~-]*)?\0")
# Xen keeps its own .config in the image, gzip'd by `gzip -n` (xen/common/Makefile, config.gz,
# built with the default CONFIG_HYPFS_CONFIG=y): a header with no name and no time.
CONFIG_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"
CONFIG_TEXT_START = b"#\n# Automatically generated file; DO NOT EDIT.\n# Xen/"
# Kconfig's header names the release: "# Xen/arm 4.20.5-pre Configuration".
CONFIG_RELEASE = re.compile(rb"# Xen/\S+ (\d+)\.(\d+)\.(\d+)(\S*) Configuration")
CONFIG_LIMIT = 1 << 20

PAYLOAD_SECTIONS = (".config", ".kernel", ".ramdisk", ".xsm", ".ucode", ".dtb")
MACHINE_ARCH = {pe.MACHINE_AMD64: "x86_64", pe.MACHINE_ARM64: "arm64"}
SCAN_LIMIT = 64 << 20


@dataclass(frozen=True)
class BuildConfig:
    """The Kconfig a Xen image was built with: the one it carries, or the `.config` file a
    distribution installs beside it (Debian: /boot/xen-4.20-arm64.config)."""

    options: dict[str, str] = field(hash=False)
    """CONFIG_NAME -> value, for the options set (a "# ... is not set" line sets none)."""
    source: str
    release: tuple[int, int, int] | None = None
    """major.minor.patch of the header; a development build ("4.20.5-pre") counts as the
    release before it, which is what it certainly has."""

    def enabled(self, symbol: str) -> bool:
        return self.options.get(symbol) == "y"


def parse_build_config(text: bytes, source: str) -> BuildConfig | None:
    if not text.startswith(CONFIG_TEXT_START):
        return None
    options = {}
    for line in text.decode("utf-8", "replace").splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, _, value = line.partition("=")
            options[name] = value
    release = None
    match = CONFIG_RELEASE.search(text[:512])
    if match:
        major, minor, patch = (int(match.group(i)) for i in (1, 2, 3))
        if match.group(4).startswith(b"-") and patch:  # "-pre", "-rc": not released yet
            patch -= 1
        release = (major, minor, patch)
    return BuildConfig(options, source, release)


@dataclass(frozen=True)
class XenImage:
    path: Path
    arch: str
    version: tuple[int, int] | None
    has_hyperlaunch: bool
    patch: int | None
    """The patch release (4.21.2: 2) where the image says it, else None."""
    build_config: BuildConfig | None
    """What Xen was built with, where it can be found, else None (then nothing is refused
    for want of a build option)."""

    @property
    def release(self) -> tuple[int, ...] | None:
        """(major, minor, patch), or (major, minor) when the patch release is unknown."""
        if self.version is None:
            return None
        return (*self.version, self.patch) if self.patch is not None else self.version

    @property
    def version_text(self) -> str:
        return f"{self.version[0]}.{self.version[1]}" if self.version else "unknown version"

    def at_least(self, major: int, minor: int) -> bool:
        return self.version is not None and self.version >= (major, minor)


@dataclass(frozen=True)
class XenEfi(XenImage):
    image: pe.PeImage
    payload_sections: tuple[str, ...]
    debug_sections: tuple[str, ...]
    signed: bool


@dataclass(frozen=True)
class XenMultiboot(XenImage):
    compressed: bool
    header: multiboot2.Multiboot2Header


@dataclass
class _ScanResult:
    is_xen: bool = False
    compatible_version: tuple[int, int] | None = None
    string_version: tuple[int, int] | None = None
    string_patch: int | None = None
    has_hyperlaunch: bool = False
    build_config: BuildConfig | None = None

    @property
    def version(self) -> tuple[int, int] | None:
        # A build from Xen's own tree has no distribution version string; its Kconfig header
        # names the release.
        config = self.build_config.release if self.build_config is not None else None
        return self.compatible_version or self.string_version or (config[:2] if config else None)


class _ConfigFinder:
    """Decompresses, as the scan passes, each gzip stream that starts like Xen's config.gz."""

    def __init__(self) -> None:
        self.streams: dict[int, tuple[zlib._Decompress, bytearray]] = {}
        self.found: bytes | None = None

    def feed(self, window: bytes, window_start: int, new_from: int) -> None:
        """`window` holds the bytes from absolute offset `window_start`; those before
        `new_from` (relative) were seen in the last window."""
        for start, (stream, out) in list(self.streams.items()):
            self._advance(start, stream, out, window[new_from:])
        if self.found is not None:
            return
        index = window.find(CONFIG_GZIP_HEADER)
        while index >= 0:
            start = window_start + index
            if start not in self.streams and index + len(CONFIG_GZIP_HEADER) > new_from:
                stream, out = zlib.decompressobj(31), bytearray()
                self.streams[start] = (stream, out)
                self._advance(start, stream, out, window[index:])
            index = window.find(CONFIG_GZIP_HEADER, index + 1)

    def _advance(self, start: int, stream: zlib._Decompress, out: bytearray, data: bytes) -> None:
        try:
            out += stream.decompress(data, CONFIG_LIMIT - len(out))
        except zlib.error:
            del self.streams[start]
            return
        if len(out) >= len(CONFIG_TEXT_START) and not out.startswith(CONFIG_TEXT_START):
            del self.streams[start]
        elif stream.eof or len(out) >= CONFIG_LIMIT:
            del self.streams[start]
            if stream.eof and self.found is None:
                self.found = bytes(out)


def _scan(chunks: Iterable[bytes]) -> _ScanResult:
    """Look through an image's own code and data for what identifies Xen and its version."""
    result = _ScanResult()
    hyperlaunch = dict.fromkeys(HYPERLAUNCH_STRINGS, False)
    config = _ConfigFinder()
    overlap = b""
    scanned = 0
    for chunk in chunks:
        window = overlap + chunk
        result.is_xen = result.is_xen or XEN_BANNER in window
        if result.compatible_version is None:
            match = ARM_COMPATIBLE.search(window)
            if match:
                result.compatible_version = (int(match.group(1)), int(match.group(2)))
        if result.string_version is None:
            match = VERSION_STRING.search(window)
            if match:
                result.string_version = (int(match.group(1)), int(match.group(2)))
                result.string_patch = int(match.group(3))
        for needle in hyperlaunch:
            hyperlaunch[needle] = hyperlaunch[needle] or needle in window
        config.feed(window, scanned - len(overlap), len(overlap))
        overlap = window[-64:]
        scanned += len(chunk)
        if scanned > SCAN_LIMIT:
            break
    result.has_hyperlaunch = all(hyperlaunch.values())
    if config.found is not None:  # before `version` is read: it may come from the header
        result.build_config = parse_build_config(config.found, "embedded in the image")
    return result


def _beside(path: Path) -> BuildConfig | None:
    """The `.config` a distribution installs beside the image: xen-4.20-arm64.efi ->
    xen-4.20-arm64.config (Debian), xen.gz -> xen.config."""
    name = path.name
    for suffix in (".efi", ".gz"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    candidate = path.with_name(name + ".config")
    try:
        with candidate.open("rb") as stream:
            text = stream.read(CONFIG_LIMIT)
    except OSError:
        return None
    return parse_build_config(text, str(candidate))


def _patch(scan: _ScanResult, version: tuple[int, int] | None) -> int | None:
    """The patch release, from the config's header or the distribution's version string, when
    either names the same major.minor as the image."""
    config = scan.build_config
    if config is not None and config.release is not None and config.release[:2] == version:
        return config.release[2]
    if scan.string_version == version:
        return scan.string_patch
    return None


def probe_efi(path: Path, *, key: str = "[xen] efi") -> XenEfi:
    try:
        with path.open("rb") as stream:
            image = pe.parse(stream)
    except TruncatedError as error:
        raise HlimageError(f"{key}: {error}; {error.advice}", where=path) from None
    except FormatError as error:
        head = Region(path).head(4)
        if compression.detect(head) == compression.GZIP or head == b"\x7fELF":
            # The other Xen image of the same build: an easy slip between two keys.
            what = "gzip data" if head[:2] == b"\x1f\x8b" else "an ELF file"
            raise HlimageError(
                f"{key}: {what} (Xen's multiboot image xen.gz or xen?), not a PE image; give "
                "xen.efi here, and xen.gz as [xen] multiboot",
                where=path,
            ) from None
        raise HlimageError(f"{key}: {error}; give Xen's xen.efi", where=path) from None
    except OSError as error:
        raise HlimageError(f"{key}: cannot read: {error.strerror}", where=path) from None
    arch = MACHINE_ARCH.get(image.machine)
    if arch is None:
        raise HlimageError(
            f"{key}: PE image for machine {image.machine_name}, not x86_64 or arm64; "
            "give Xen's xen.efi",
            where=path,
        )
    own = [s for s in image.sections if s.name not in PAYLOAD_SECTIONS and not s.is_debug]
    scan = _scan(
        chunk
        for section in own
        if section.raw_size
        for chunk in Region(path, section.raw_offset, section.data_size).chunks()
    )
    if not scan.is_xen:
        raise HlimageError(
            f"{key}: this PE image is not Xen (no Xen version banner in it); give Xen's xen.efi",
            where=path,
        )
    if scan.build_config is None:
        scan.build_config = _beside(path)
    version = scan.version
    if arch == "x86_64":
        major, minor = int(image.optional.MajorImageVersion), int(image.optional.MinorImageVersion)
        if major:
            version = (major, minor)
    return XenEfi(
        path=path,
        arch=arch,
        version=version,
        has_hyperlaunch=scan.has_hyperlaunch,
        patch=_patch(scan, version),
        build_config=scan.build_config,
        image=image,
        payload_sections=tuple(s.name for s in image.sections if s.name in PAYLOAD_SECTIONS),
        debug_sections=tuple(s.name for s in image.sections if s.is_debug),
        signed=image.signature is not None,
    )


def probe_multiboot(path: Path, *, key: str = "[xen] multiboot") -> XenMultiboot:
    region = Region(path)
    head = region.head(16)
    kind = compression.detect(head)
    if kind not in (None, compression.GZIP):
        raise HlimageError(
            f"{key}: {kind}-compressed; GRUB and Xen's build use plain or gzip'd xen, "
            "give xen.gz or the uncompressed xen",
            where=path,
        )
    start = bytearray()
    # The decompressed length, once the scan has read to the end (it stops after SCAN_LIMIT).
    length: list[int | None] = [region.length if kind is None else None]

    def decompressed() -> Iterator[bytes]:
        total = 0
        for chunk in compression.decompress(kind, region.chunks()):
            if len(start) < multiboot2.SEARCH_LIMIT:
                start.extend(chunk[: multiboot2.SEARCH_LIMIT - len(start)])
            total += len(chunk)
            yield chunk
        length[0] = total

    try:
        scan = _scan(decompressed())
    except TruncatedError as error:
        raise HlimageError(f"{key}: {error}; {error.advice}", where=path) from None
    except FormatError as error:
        raise HlimageError(f"{key}: {error}; give an intact xen.gz", where=path) from None
    try:
        if length[0] is not None:
            elf.check_length(bytes(start), length[0])
    except TruncatedError as error:
        inside = "" if kind is None else "the gzip data decompresses to a "
        raise HlimageError(f"{key}: {inside}{error}; {error.advice}", where=path) from None
    if bytes(start[:2]) == b"MZ":
        raise HlimageError(
            f"{key}: a PE image, not an ELF; GRUB's multiboot2 loader needs Xen's ELF image: "
            "give xen.gz or xen, not xen.efi",
            where=path,
        )
    header = multiboot2.find(bytes(start))
    if header is None:
        raise HlimageError(
            f"{key}: no multiboot2 header in the first 32 KiB; give Xen's multiboot image "
            "(xen.gz or xen), not xen.efi or xen-syms",
            where=path,
        )
    if not scan.is_xen:
        raise HlimageError(
            f"{key}: this multiboot2 image is not Xen (no Xen version banner in it)", where=path
        )
    if scan.build_config is None:
        scan.build_config = _beside(path)
    return XenMultiboot(
        path=path,
        arch="x86_64",
        version=scan.version,
        has_hyperlaunch=scan.has_hyperlaunch,
        patch=_patch(scan, scan.version),
        build_config=scan.build_config,
        compressed=kind is not None,
        header=header,
    )


def probe_system_efi(system: System) -> XenEfi:
    """The description's xen.efi, which must be there and of its architecture."""
    if system.xen.efi is None:
        raise HlimageError(
            '[xen] efi: needed for this format; add efi = "path/to/xen.efi"', where=system.source
        )
    xen = probe_efi(system.xen.efi)
    if xen.arch != system.arch.value:
        raise HlimageError(
            f"[xen] efi: {article(xen.arch)} Xen, but [image] arch is "
            f'"{system.arch.value}"; give the {system.arch.value} xen.efi',
            where=system.xen.efi,
        )
    return xen
