"""Linux kernel image headers: the x86 bzImage setup header and the arm64 Image header."""

from __future__ import annotations

from dataclasses import dataclass

import construct as c

from hlimage.errors import TruncatedError

# Documentation/arch/x86/boot.rst: the setup header starts at 0x1f1.
SETUP_HEADER_OFFSET = 0x1F1
SetupHeader = c.Struct(
    "setup_sects" / c.Int8ul,
    "root_flags" / c.Int16ul,
    "syssize" / c.Int32ul,
    "ram_size" / c.Int16ul,
    "vid_mode" / c.Int16ul,
    "root_dev" / c.Int16ul,
    "boot_flag" / c.Int16ul,
    "jump" / c.Int16ul,
    "header" / c.Bytes(4),
    "version" / c.Int16ul,
    "realmode_swtch" / c.Int32ul,
    "start_sys_seg" / c.Int16ul,
    "kernel_version" / c.Int16ul,
    "type_of_loader" / c.Int8ul,
    "loadflags" / c.Int8ul,
    "setup_move_size" / c.Int16ul,
    "code32_start" / c.Int32ul,
    "ramdisk_image" / c.Int32ul,
    "ramdisk_size" / c.Int32ul,
    "bootsect_kludge" / c.Int32ul,
    "heap_end_ptr" / c.Int16ul,
    "ext_loader_ver" / c.Int8ul,
    "ext_loader_type" / c.Int8ul,
    "cmd_line_ptr" / c.Int32ul,
    "initrd_addr_max" / c.Int32ul,
    "kernel_alignment" / c.Int32ul,
    "relocatable_kernel" / c.Int8ul,
    "min_alignment" / c.Int8ul,
    "xloadflags" / c.Int16ul,
    "cmdline_size" / c.Int32ul,
    "hardware_subarch" / c.Int32ul,
    "hardware_subarch_data" / c.Int64ul,
    "payload_offset" / c.Int32ul,
    "payload_length" / c.Int32ul,
)
SETUP_HEADER_END = SETUP_HEADER_OFFSET + SetupHeader.sizeof()

# Documentation/arch/arm64/booting.rst
Arm64Header = c.Struct(
    "code0" / c.Int32ul,
    "code1" / c.Int32ul,
    "text_offset" / c.Int64ul,
    "image_size" / c.Int64ul,
    "flags" / c.Int64ul,
    "res2" / c.Int64ul,
    "res3" / c.Int64ul,
    "res4" / c.Int64ul,
    "magic" / c.Const(b"ARM\x64"),
    "res5" / c.Int32ul,
)
ARM64_MAGIC_OFFSET = 0x38
ARM64_MAGIC = b"ARM\x64"


@dataclass(frozen=True)
class BzImage:
    protocol: int
    """Boot protocol version, e.g. 0x20f for 2.15."""
    setup_sects: int
    syssize: int
    """The protected-mode kernel's length in 16-byte paragraphs (32 bits since protocol 2.04)."""
    payload_offset: int
    payload_length: int
    version: str | None

    @property
    def protocol_text(self) -> str:
        return f"{self.protocol >> 8}.{self.protocol & 0xFF:02d}"

    @property
    def stated_length(self) -> int | None:
        """The bytes a boot loader reads: the boot sector and setup sectors, then the kernel
        (boot.rst: "the 32-bit code begins at (setup_sects+1)*512"). None before 2.04, whose
        syssize was 16 bits and so says nothing about a large kernel."""
        if self.protocol < 0x204:
            return None
        return (self.setup_sects + 1) * 512 + self.syssize * 16

    def check_length(self, size: int) -> None:
        """TruncatedError when `size` bytes cannot hold what the setup header says. More is
        fine: a signed kernel carries its signature after the kernel."""
        needed = self.stated_length
        if needed is not None and size < needed:
            raise TruncatedError.stated(
                "bzImage", size=size, needed=needed, by="its setup header (setup_sects, syssize)"
            )


def parse_bzimage(head: bytes) -> BzImage | None:
    """The setup header of a bzImage, or None when `head` is not one. `head` should hold the
    first 64 KiB, so that the version string can be read too."""
    if len(head) < SETUP_HEADER_END or head[0x202:0x206] != b"HdrS":
        return None
    header = SetupHeader.parse(head[SETUP_HEADER_OFFSET:SETUP_HEADER_END])
    setup_sects = header.setup_sects or 4
    version = None
    if header.kernel_version:
        start = header.kernel_version + 0x200
        end = head.find(b"\0", start, start + 256)
        if 0 <= start < len(head) and end > start:
            version = head[start:end].decode("ascii", "replace").split(" ")[0]
    return BzImage(
        protocol=int(header.version),
        setup_sects=int(setup_sects),
        syssize=int(header.syssize),
        payload_offset=int(header.payload_offset) if header.version >= 0x208 else 0,
        payload_length=int(header.payload_length) if header.version >= 0x208 else 0,
        version=version,
    )


@dataclass(frozen=True)
class Arm64Image:
    """The arm64 Image header. It states no length of the file: image_size is what the kernel
    takes in memory, BSS included, so it is larger than the file; a cut-short Image shows in
    its EFI stub's PE header instead (pe.parse)."""

    text_offset: int
    image_size: int
    flags: int


def parse_arm64(head: bytes) -> Arm64Image | None:
    if (
        len(head) < Arm64Header.sizeof()
        or head[ARM64_MAGIC_OFFSET : ARM64_MAGIC_OFFSET + 4] != ARM64_MAGIC
    ):
        return None
    header = Arm64Header.parse(head[: Arm64Header.sizeof()])
    return Arm64Image(int(header.text_offset), int(header.image_size), int(header.flags))


def linux_banner_version(data: bytes) -> str | None:
    """The release from 'Linux version X (...)' in an uncompressed kernel, if present."""
    marker = data.find(b"Linux version ")
    if marker < 0:
        return None
    end = data.find(b" ", marker + 14)
    if end < 0:
        return None
    return data[marker + 14 : end].decode("ascii", "replace")
