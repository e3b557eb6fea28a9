"""The multiboot2 header a loader looks for: 8-byte aligned within the first 32 KiB."""

from __future__ import annotations

from dataclasses import dataclass

import construct as c

MAGIC = 0xE85250D6
SEARCH_LIMIT = 32768
ARCH_I386 = 0
ARCH_MIPS32 = 4

TAG_END = 0
TAG_INFORMATION_REQUEST = 1
TAG_ADDRESS = 2
TAG_ENTRY_ADDRESS = 3
TAG_CONSOLE_FLAGS = 4
TAG_FRAMEBUFFER = 5
TAG_MODULE_ALIGN = 6
TAG_EFI_BS = 7
TAG_ENTRY_ADDRESS_EFI32 = 8
TAG_ENTRY_ADDRESS_EFI64 = 9
TAG_RELOCATABLE = 10
TAG_NAMES = {
    TAG_INFORMATION_REQUEST: "information-request",
    TAG_ADDRESS: "address",
    TAG_ENTRY_ADDRESS: "entry-address",
    TAG_CONSOLE_FLAGS: "console-flags",
    TAG_FRAMEBUFFER: "framebuffer",
    TAG_MODULE_ALIGN: "module-align",
    TAG_EFI_BS: "efi-boot-services",
    TAG_ENTRY_ADDRESS_EFI32: "entry-address-efi32",
    TAG_ENTRY_ADDRESS_EFI64: "entry-address-efi64",
    TAG_RELOCATABLE: "relocatable",
}

Header = c.Struct(
    "magic" / c.Int32ul,
    "architecture" / c.Int32ul,
    "header_length" / c.Int32ul,
    "checksum" / c.Int32ul,
)
Tag = c.Struct("type" / c.Int16ul, "flags" / c.Int16ul, "size" / c.Int32ul)


@dataclass(frozen=True)
class Multiboot2Header:
    offset: int
    architecture: int
    length: int
    tags: tuple[str, ...]


def find(head: bytes) -> Multiboot2Header | None:
    """The first valid header in `head` (which should be the image's first 32 KiB)."""
    limit = min(len(head), SEARCH_LIMIT)
    magic = MAGIC.to_bytes(4, "little")
    offset = head.find(magic, 0, limit)
    while offset >= 0:
        if offset % 8 == 0 and offset + 16 <= len(head):
            header = Header.parse(head[offset : offset + 16])
            total = header.magic + header.architecture + header.header_length + header.checksum
            if total & 0xFFFFFFFF == 0 and header.header_length >= 16:
                return Multiboot2Header(
                    offset,
                    int(header.architecture),
                    int(header.header_length),
                    _tags(head, offset + 16, offset + int(header.header_length)),
                )
        offset = head.find(magic, offset + 1, limit)
    return None


def _tags(head: bytes, start: int, end: int) -> tuple[str, ...]:
    names = []
    position = start
    while position + 8 <= min(end, len(head)):
        tag = Tag.parse(head[position : position + 8])
        if tag.type == TAG_END:
            break
        names.append(TAG_NAMES.get(int(tag.type), f"tag-{tag.type}"))
        if tag.size < 8:
            break
        position += (int(tag.size) + 7) & ~7
    return tuple(names)


def build(architecture: int, tags: bytes = b"") -> bytes:
    """A header with the given raw tags (an END tag is appended); for tests and fixtures."""
    body = tags + bytes(Tag.build({"type": TAG_END, "flags": 0, "size": 8}))
    length = 16 + len(body)
    checksum = -(MAGIC + architecture + length) & 0xFFFFFFFF
    header = bytes(
        Header.build(
            {
                "magic": MAGIC,
                "architecture": architecture,
                "header_length": length,
                "checksum": checksum,
            }
        )
    )
    return header + body
