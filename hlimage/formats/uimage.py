"""U-Boot's legacy uImage, as a boot script: build and parse.

A script image is a 64-byte big-endian header and then the data, which for the script type is
U-Boot's multi-file layout with one file: the file's length, a 0 that ends the length list, and
the script text, unpadded. `script_image` reproduces `mkimage -A ARCH -O linux -T script -C none
-n NAME -d FILE` byte for byte when given mkimage's time (SOURCE_DATE_EPOCH, which the caller
reads: formats read no environment).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import construct as c

from hlimage.errors import FormatError

MAGIC = 0x27051956
HEADER_SIZE = 64
NAME_SIZE = 32
U32_MAX = 0xFFFFFFFF

# include/image.h's numbering: only what hlimage writes or names when it lists an image.
ARCHES = {"arm": 2, "x86": 3, "arm64": 22, "x86_64": 24, "riscv": 26}
OS_LINUX = 5
TYPES = {"kernel": 2, "ramdisk": 3, "multi": 4, "firmware": 5, "script": 6, "flat_dt": 8}
COMPRESSION_NONE = 0

Header = c.Struct(
    "magic" / c.Int32ub,
    "header_crc" / c.Int32ub,
    "time" / c.Int32ub,
    "size" / c.Int32ub,
    "load" / c.Int32ub,
    "entry" / c.Int32ub,
    "data_crc" / c.Int32ub,
    "os" / c.Int8ub,
    "arch" / c.Int8ub,
    "type" / c.Int8ub,
    "compression" / c.Int8ub,
    "name" / c.Bytes(NAME_SIZE),
)
assert Header.sizeof() == HEADER_SIZE


@dataclass(frozen=True)
class UImage:
    """A parsed image: the header's fields and the data that follows it."""

    name: str
    timestamp: int
    os: int
    arch: int
    type: int
    compression: int
    load: int
    entry: int
    data: bytes

    @property
    def arch_name(self) -> str:
        return _name_of(ARCHES, self.arch)

    @property
    def type_name(self) -> str:
        return _name_of(TYPES, self.type)

    def script(self) -> bytes:
        """The script text of a script image (the first and only file of its data)."""
        if self.type != TYPES["script"]:
            raise FormatError(f"uImage {self.name!r} is a {self.type_name} image, not a script")
        files = _multi_files(self.data)
        if len(files) != 1:
            raise FormatError(f"script image {self.name!r} holds {len(files)} files, not one")
        return files[0]


def _name_of(table: dict[str, int], value: int) -> str:
    for name, number in table.items():
        if number == value:
            return name
    return str(value)


def script_image(text: bytes, *, name: str, timestamp: int, arch: str = "arm64") -> bytes:
    """The script image mkimage makes of `text` (one file, uncompressed, load and entry 0)."""
    if arch not in ARCHES:
        raise FormatError(f"uImage architecture {arch!r} unknown; use one of {sorted(ARCHES)}")
    if not text:
        # A 0 length is the end of the length list: U-Boot would find no file in the image.
        raise FormatError("a script image needs a script: the text is empty")
    if len(text) > U32_MAX - 8:
        raise FormatError(f"a {len(text)}-byte script is too large for a uImage")
    data = len(text).to_bytes(4, "big") + b"\0\0\0\0" + text
    return build(
        data,
        name=name,
        timestamp=timestamp,
        arch=ARCHES[arch],
        image_type=TYPES["script"],
    )


def build(
    data: bytes,
    *,
    name: str,
    timestamp: int,
    arch: int,
    image_type: int,
    os: int = OS_LINUX,
    compression: int = COMPRESSION_NONE,
    load: int = 0,
    entry: int = 0,
) -> bytes:
    """A uImage of `data` as it is (for the script type the caller has laid out the files)."""
    encoded = name.encode("ascii", errors="replace")
    if not name.isascii() or b"\0" in encoded:
        raise FormatError(f"uImage name {name!r}: use ASCII without NUL")
    # mkimage cuts a longer name at 32 bytes without a NUL; refusing keeps the name as given.
    if len(encoded) > NAME_SIZE:
        raise FormatError(f"uImage name {name!r} is {len(encoded)} bytes; at most {NAME_SIZE}")
    for what, value in (("time", timestamp), ("load address", load), ("entry point", entry)):
        if not 0 <= value <= U32_MAX:
            raise FormatError(f"uImage {what} {value} does not fit in 32 bits")
    if len(data) > U32_MAX:
        raise FormatError(f"{len(data)} bytes of data are too many for a uImage")
    fields = {
        "magic": MAGIC,
        "header_crc": 0,
        "time": timestamp,
        "size": len(data),
        "load": load,
        "entry": entry,
        "data_crc": zlib.crc32(data),
        "os": os,
        "arch": arch,
        "type": image_type,
        "compression": compression,
        "name": encoded.ljust(NAME_SIZE, b"\0"),
    }
    unsealed: bytes = Header.build(fields)
    fields["header_crc"] = zlib.crc32(unsealed)
    return bytes(Header.build(fields)) + data


def parse(blob: bytes) -> UImage:
    """Read a uImage, checking its magic, both CRCs and its length. FormatError otherwise.

    Bytes after the data (a file padded by its medium) are ignored, as U-Boot ignores them.
    """
    if len(blob) < HEADER_SIZE:
        raise FormatError(f"not a uImage: {len(blob)} bytes, shorter than its 64-byte header")
    header = Header.parse(blob)
    if header.magic != MAGIC:
        raise FormatError(f"not a uImage: magic 0x{header.magic:08x}, not 0x{MAGIC:08x}")
    zeroed = blob[:4] + b"\0\0\0\0" + blob[8:HEADER_SIZE]
    if zlib.crc32(zeroed) != header.header_crc:
        raise FormatError("bad uImage: the header CRC does not match the header")
    end = HEADER_SIZE + header.size
    if end > len(blob):
        raise FormatError(
            f"bad uImage: the header says {header.size} bytes of data, "
            f"but {len(blob) - HEADER_SIZE} follow it"
        )
    data = blob[HEADER_SIZE:end]
    if zlib.crc32(data) != header.data_crc:
        raise FormatError("bad uImage: the data CRC does not match the data")
    raw_name = bytes(header.name).split(b"\0", 1)[0]
    return UImage(
        name=raw_name.decode("ascii", errors="replace"),
        timestamp=int(header.time),
        os=int(header.os),
        arch=int(header.arch),
        type=int(header.type),
        compression=int(header.compression),
        load=int(header.load),
        entry=int(header.entry),
        data=data,
    )


def _multi_files(data: bytes) -> list[bytes]:
    """The files of U-Boot's multi-file data: u32 lengths up to a 0, then each file, every one
    but the last padded to 4 bytes."""
    lengths: list[int] = []
    offset = 0
    while True:
        if offset + 4 > len(data):
            raise FormatError("bad multi-file uImage data: the length list has no 0 at its end")
        length = int.from_bytes(data[offset : offset + 4], "big")
        offset += 4
        if length == 0:
            break
        lengths.append(length)
    files = []
    for index, length in enumerate(lengths):
        if offset + length > len(data):
            raise FormatError("bad multi-file uImage data: a file runs past the data's end")
        files.append(data[offset : offset + length])
        offset += length
        if index < len(lengths) - 1:
            offset += -length % 4
    if offset != len(data):
        raise FormatError("bad multi-file uImage data: bytes after the last file")
    return files
