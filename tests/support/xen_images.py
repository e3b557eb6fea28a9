"""Stand-ins for Xen images no package ships: Debian's arm64 xen.efi with the release it names
and the build configuration it carries rewritten in place (same length, same layout).

They are for what hlimage reads offline (the release it refuses for, the Kconfig options it
checks) and never boot: the code inside is still Debian's. Boots on Xen 4.21 and 4.22 use
builds from Xen's release tags (docs/xen-boot-formats.md, VERIFIED-RUN notes).
"""

from __future__ import annotations

import gzip
import re
import zlib
from collections.abc import Mapping
from pathlib import Path

from tests.support import payloads

CONFIG_GZIP = b"\x1f\x8b\x08\x00\x00\x00\x00\x00"


def _config_stream(data: bytes) -> tuple[int, int, bytes]:
    """(offset, length, text) of the gzip'd Kconfig Xen carries."""
    index = data.find(CONFIG_GZIP)
    while index >= 0:
        stream = zlib.decompressobj(31)
        try:
            text = stream.decompress(data[index : index + (1 << 20)])
        except zlib.error:
            text = b""
        if stream.eof and text.startswith(b"#\n# Automatically generated file"):
            length = len(data[index : index + (1 << 20)]) - len(stream.unused_data)
            return index, length, text
        index = data.find(CONFIG_GZIP, index + 1)
    raise ValueError("no embedded Kconfig")


def restamped(
    destination: Path,
    release: str,
    options: Mapping[str, bool] = {},
    *,
    source_release: str = "4.20",
) -> Path:
    """Debian's arm64 xen.efi of `source_release`, saying it is Xen `release` ("4.22.0")
    built with `options` switched on or off (CONFIG_NAME -> bool)."""
    data = bytearray(payloads.xen_efi("arm64", source_release).read_bytes())
    major_minor = ".".join(release.split(".")[:2])
    old = f"xen,xen-{source_release}\0".encode()
    new = f"xen,xen-{major_minor}\0".encode()
    assert len(old) == len(new) and data.count(old) == 1
    data[data.index(old) : data.index(old) + len(old)] = new
    # The distribution's version string, "\04.20.4+63-g...\0": keep its length.
    match = re.search(
        rb"\0(" + re.escape(source_release.encode()) + rb"\.\d+)([+~-][^\0]*)\0", data
    )
    assert match is not None
    stamp = release.encode()
    tail = match.group(2)
    replacement = (stamp + tail)[: len(match.group(1)) + len(tail)]
    replacement += b"+" * (len(match.group(1)) + len(tail) - len(replacement))
    data[match.start(1) : match.end(2)] = replacement
    offset, length, text = _config_stream(bytes(data))
    lines = text.decode().splitlines()
    lines[2] = f"# Xen/arm {release} Configuration"
    for symbol, wanted in options.items():
        lines = [line for line in lines if not re.match(rf"(# )?{symbol}[= ]", line)]
        lines.append(f"{symbol}=y" if wanted else f"# {symbol} is not set")
    packed = gzip.compress(("\n".join(lines) + "\n").encode(), compresslevel=9, mtime=0)
    if len(packed) > length:
        # Comments cost space and carry nothing hlimage reads.
        kept = [lines[0], lines[1], lines[2]] + [
            line for line in lines[3:] if line.startswith("CONFIG_")
        ]
        packed = gzip.compress(("\n".join(kept) + "\n").encode(), compresslevel=9, mtime=0)
    assert len(packed) <= length, "the new Kconfig does not fit where the old one was"
    data[offset : offset + length] = packed + b"\0" * (length - len(packed))
    # A staged payload is a link into the shared cache: replace the link, never write
    # through it.
    destination.unlink(missing_ok=True)
    destination.write_bytes(bytes(data))
    return destination
