"""`hlimage run`: boot an output in QEMU with the serial console on the terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hlimage import qemu
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fat, gpt, pe
from hlimage.inspection import is_gpt_disk

ARCH_BY_MACHINE = {pe.MACHINE_AMD64: qemu.X86_64, pe.MACHINE_ARM64: qemu.ARM64}


def _pe_arch(path: Path) -> str | None:
    try:
        with path.open("rb") as stream:
            return ARCH_BY_MACHINE.get(pe.parse(stream).machine)
    except (FormatError, OSError):
        return None


def _esp_arch(esp: Path) -> str | None:
    for name, arch in (("BOOTX64.EFI", qemu.X86_64), ("BOOTAA64.EFI", qemu.ARM64)):
        if (esp / "EFI" / "BOOT" / name).is_file():
            return arch
    return None


def _disk_arch(image: Path) -> str | None:
    """The arch of the loader in a GPT disk image's EFI System Partition, by its name."""
    try:
        with image.open("rb") as stream:
            _, partitions = gpt.parse(stream)
            for partition in partitions:
                if partition.type_guid != gpt.ESP_TYPE:
                    continue
                paths = {e.path.casefold() for e in fat.list_files(stream, partition.offset)}
                for name, arch in (("BOOTX64.EFI", qemu.X86_64), ("BOOTAA64.EFI", qemu.ARM64)):
                    if f"efi/boot/{name}".casefold() in paths:
                        return arch
    except (FormatError, OSError):
        return None
    return None


def _pxe_boot_file(directory: Path) -> str | None:
    for name in ("bootx64.efi", "bootaa64.efi"):
        if (directory / name).is_file() and not (directory / "EFI").exists():
            return name
    return None


UBOOT_SCRIPTS = ("boot.scr.uimg", "boot.scr")


def _disk_has_uboot_script(image: Path) -> bool:
    try:
        with image.open("rb") as stream:
            _, partitions = gpt.parse(stream)
            if not partitions:
                return False
            paths = {e.path.casefold() for e in fat.list_files(stream, partitions[0].offset)}
    except (FormatError, OSError):
        return False
    return any(name in paths for name in UBOOT_SCRIPTS)


def _is_uboot_image(path: Path) -> bool:
    """A FIT or a script image, which U-Boot runs as boot.scr."""
    try:
        with path.open("rb") as stream:
            head = stream.read(4)
    except OSError:
        return False
    return head in (bytes.fromhex("d00dfeed"), bytes.fromhex("27051956"))


def run(output: Path, *, arch: str | None = None, memory: str = "2G") -> int:
    """Boot `output` (a unified image, an ESP directory, a GPT disk image, a PXE tree, or a
    U-Boot tree or FIT under Debian's U-Boot) and return QEMU's exit code."""
    if not output.exists():
        raise HlimageError(
            "no such file or directory; give an output of hlimage build", where=output
        )
    with tempfile.TemporaryDirectory(prefix="hlimage-run-") as scratch:
        work = Path(scratch)
        pxe_boot_file = _pxe_boot_file(output) if output.is_dir() else None
        uboot = False
        if output.is_dir() and any((output / name).is_file() for name in UBOOT_SCRIPTS):
            # A U-Boot tree (the uboot format, or a PXE tree for U-Boot): as a FAT disk, whose
            # first partition U-Boot's default boot scans.
            media = qemu.Media(esp_dir=output.resolve())
            arch, uboot = arch or qemu.ARM64, True
        elif output.is_file() and _is_uboot_image(output):
            boot_dir = work / "uboot"
            boot_dir.mkdir()
            try:
                os.link(output, boot_dir / "boot.scr")
            except OSError:
                shutil.copyfile(output, boot_dir / "boot.scr")
            media = qemu.Media(esp_dir=boot_dir)
            arch, uboot = arch or qemu.ARM64, True
        elif pxe_boot_file is not None:
            # A PXE tree: the firmware's own network client loads it over QEMU's TFTP.
            media = qemu.Media(tftp_dir=output.resolve(), bootfile=pxe_boot_file)
            arch = arch or (qemu.X86_64 if pxe_boot_file == "bootx64.efi" else qemu.ARM64)
        elif output.is_dir():
            if not (output / "EFI" / "BOOT").is_dir():
                raise HlimageError(
                    "a directory without EFI/BOOT: give an ESP, disk, PXE tree or unified image "
                    "(a grub directory needs a GRUB loader; build grub-standalone to boot it)",
                    where=output,
                )
            media = qemu.Media(esp_dir=output.resolve())
            arch = arch or _esp_arch(output)
        elif is_gpt_disk(output):
            media = qemu.Media(disk_image=output.resolve())
            arch = arch or _disk_arch(output)
            if arch is None and _disk_has_uboot_script(output):
                arch, uboot = qemu.ARM64, True
        else:
            arch = arch or _pe_arch(output)
            if arch is None:
                raise HlimageError(
                    "not a unified image, ESP directory or GPT disk image hlimage can boot; give "
                    "an output of hlimage build",
                    where=output,
                )
            esp = work / "esp"
            boot_dir = esp / "EFI" / "BOOT"
            boot_dir.mkdir(parents=True)
            name = "BOOTX64.EFI" if arch == qemu.X86_64 else "BOOTAA64.EFI"
            try:
                os.link(output, boot_dir / name)
            except OSError:
                shutil.copyfile(output, boot_dir / name)
            media = qemu.Media(esp_dir=esp)
        if arch is None:
            raise HlimageError("cannot tell the architecture; pass --arch", where=output)
        if uboot and arch != qemu.ARM64:
            raise HlimageError("a U-Boot output boots on arm64 only; drop --arch", where=output)
        qemu.check_tools(arch, uboot=uboot)
        vars_copy = qemu.prepare_vars(work / "vars.fd") if arch == qemu.X86_64 else None
        argv = qemu.command(
            arch, media, vars_copy=vars_copy, memory=memory, interactive=True, uboot=uboot
        )
        return subprocess.call(argv)
