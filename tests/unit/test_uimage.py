"""The legacy uImage script format: its header as uboot.md lays it out, and a strict parser."""

from __future__ import annotations

import struct
import zlib

import pytest

from hlimage.errors import FormatError
from hlimage.formats import uimage

SCRIPT = b"load virtio 0:1 0x40400000 /xen.efi\nbooti\n"


def test_script_image_layout() -> None:
    blob = uimage.script_image(SCRIPT, name="hlimage boot", timestamp=1700000000)
    magic, header_crc, time, size, load, entry, data_crc = struct.unpack(">7I", blob[:28])
    assert (magic, time, load, entry) == (0x27051956, 1700000000, 0, 0)
    # The data is the script's length, the 0 ending the length list, then the text, unpadded.
    assert size == len(SCRIPT) + 8 == len(blob) - 64
    assert blob[64:72] == struct.pack(">II", len(SCRIPT), 0)
    assert blob[72:] == SCRIPT
    assert data_crc == zlib.crc32(blob[64:])
    assert header_crc == zlib.crc32(blob[:4] + b"\0" * 4 + blob[8:64])
    assert blob[28:32] == bytes([5, 22, 6, 0])  # linux, arm64, script, no compression
    assert blob[32:64] == b"hlimage boot".ljust(32, b"\0")


def test_parse_round_trip() -> None:
    blob = uimage.script_image(SCRIPT, name="x" * 32, timestamp=7, arch="arm")
    image = uimage.parse(blob + b"\0" * 100)  # padding after the data is ignored
    assert (image.name, image.timestamp, image.arch_name, image.type_name) == (
        "x" * 32,
        7,
        "arm",
        "script",
    )
    assert image.script() == SCRIPT


def _corrupt(blob: bytes, offset: int) -> bytes:
    changed = bytearray(blob)
    changed[offset] ^= 0x40
    return bytes(changed)


@pytest.mark.parametrize(
    ("offset", "message"),
    [(0, "magic"), (4, "header CRC"), (9, "header CRC"), (40, "header CRC"), (70, "data CRC")],
)
def test_parse_refuses_corruption(offset: int, message: str) -> None:
    blob = uimage.script_image(SCRIPT, name="boot", timestamp=1)
    with pytest.raises(FormatError, match=message):
        uimage.parse(_corrupt(blob, offset))


def test_parse_refuses_truncation() -> None:
    blob = uimage.script_image(SCRIPT, name="boot", timestamp=1)
    with pytest.raises(FormatError, match="shorter than its 64-byte header"):
        uimage.parse(blob[:63])
    with pytest.raises(FormatError, match="bytes of data"):
        uimage.parse(blob[:-1])


def test_script_of_a_multi_file_image_is_refused() -> None:
    data = struct.pack(">III", 3, 2, 0) + b"abc\0" + b"de"
    blob = uimage.build(data, name="two", timestamp=0, arch=22, image_type=uimage.TYPES["script"])
    with pytest.raises(FormatError, match="2 files"):
        uimage.parse(blob).script()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "n" * 33}, "at most 32"),
        ({"name": "caf\u00e9"}, "ASCII"),
        ({"timestamp": 1 << 32}, "32 bits"),
        ({"arch": "sparc"}, "architecture"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], message: str) -> None:
    arguments: dict[str, object] = {"name": "boot", "timestamp": 0, **kwargs}
    with pytest.raises(FormatError, match=message):
        uimage.script_image(SCRIPT, **arguments)  # type: ignore[arg-type]


def test_empty_script_is_refused() -> None:
    with pytest.raises(FormatError, match="empty"):
        uimage.script_image(b"", name="boot", timestamp=0)
