"""QEMU command lines that boot Xen images (docs/qemu-boot.md), for `hlimage run` and the tests.

Software emulation only (KVM does not work on the machines this was checked on); the x86 CPU
model is the one Xen's CI uses.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from hlimage.errors import HlimageError

X86_64 = "x86_64"
ARM64 = "arm64"

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECURE = Path("/usr/share/OVMF/OVMF_CODE_4M.snakeoil.fd")
OVMF_VARS_SECURE = Path("/usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd")
AAVMF = Path("/usr/share/qemu-efi-aarch64/QEMU_EFI.fd")
UBOOT = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
"""Debian's U-Boot for QEMU virt (u-boot-qemu): the firmware of the U-Boot outputs."""
UBOOT_PACKAGE = "u-boot-qemu"

PACKAGES = {
    X86_64: ("qemu-system-x86_64", "qemu-system-x86", OVMF_CODE, "ovmf"),
    ARM64: ("qemu-system-aarch64", "qemu-system-arm", AAVMF, "qemu-efi-aarch64"),
}


def machine_args(arch: str, *, secure_boot: bool = False, memory: str = "2G") -> list[str]:
    """The machine without firmware or media."""
    if arch == X86_64:
        machine = "q35,smm=on" if secure_boot else "q35"
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-machine", machine]
        argv += ["-cpu", "qemu64,+svm", "-m", memory, "-smp", "2"]
        if secure_boot:
            argv += ["-global", "driver=cfi.pflash01,property=secure,value=on"]
        return argv
    if arch == ARM64:
        return [
            "qemu-system-aarch64",
            "-machine", "virt,virtualization=on,gic-version=3",
            "-cpu", "cortex-a57", "-m", memory, "-smp", "2",
        ]  # fmt: skip
    raise ValueError(arch)


@dataclass(frozen=True)
class Media:
    """What the machine boots from: one of an ESP directory, a disk image, or a TFTP root."""

    esp_dir: Path | None = None
    disk_image: Path | None = None
    tftp_dir: Path | None = None
    bootfile: str | None = None
    dtb: Path | None = None
    """arm64: the device tree QEMU hands the firmware instead of the one it makes (-dtb).
    U-Boot takes it as its control device tree, which holds its verified-boot keys."""


def check_tools(arch: str, *, secure_boot: bool = False, uboot: bool = False) -> None:
    binary, package, firmware, firmware_package = PACKAGES[arch]
    if shutil.which(binary) is None:
        raise HlimageError(f"{binary} not found; install the {package} package")
    if secure_boot:
        firmware = OVMF_CODE_SECURE
    if uboot:
        firmware, firmware_package = UBOOT, UBOOT_PACKAGE
    if not firmware.is_file():
        raise HlimageError(f"{firmware} not found; install the {firmware_package} package")


def command(
    arch: str,
    media: Media,
    *,
    vars_copy: Path | None = None,
    secure_boot: bool = False,
    secure_vars: Path | None = None,
    memory: str = "2G",
    interactive: bool = False,
    uboot: bool = False,
) -> list[str]:
    """A full QEMU command line. `vars_copy` is a writable copy of the x86 firmware variables
    (see `prepare_vars`); serial goes to stdio. `uboot`: arm64 boots Debian's U-Boot instead
    of UEFI firmware, whose default boot finds a boot script on the disk or over TFTP by
    itself (so a TFTP root needs no boot file)."""
    if uboot and arch != ARM64:
        raise ValueError("U-Boot is the arm64 machine's firmware only")
    if media.dtb is not None and arch != ARM64:
        raise ValueError("a device tree is for the arm64 machine only")
    argv = machine_args(arch, secure_boot=secure_boot, memory=memory)
    if arch == X86_64:
        code = OVMF_CODE_SECURE if secure_boot else OVMF_CODE
        if vars_copy is None:
            raise ValueError("x86 needs a writable copy of the firmware variables")
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={vars_copy}"]
    else:
        argv += ["-bios", str(UBOOT if uboot else AAVMF)]
        if media.dtb is not None:
            # Under -bios QEMU puts this blob where it puts its own, at the start of RAM.
            argv += ["-dtb", str(media.dtb)]
    if media.tftp_dir is not None:
        netdev = f"user,id=n0,tftp={media.tftp_dir}"
        if media.bootfile is not None:
            netdev += f",bootfile={media.bootfile}"
        elif not uboot:
            raise ValueError("a TFTP boot needs a boot file")
        argv += ["-netdev", netdev, "-device", "virtio-net-pci,netdev=n0,romfile="]
    else:
        if media.esp_dir is not None:
            drive = f"file=fat:rw:{media.esp_dir},format=raw"
        elif media.disk_image is not None:
            drive = f"file={media.disk_image},format=raw"
        else:
            raise ValueError("no boot media")
        if arch == X86_64:
            argv += ["-drive", drive]
        else:
            argv += ["-drive", f"if=none,id=esp,{drive}", "-device", "virtio-blk-pci,drive=esp"]
        argv += ["-net", "none"]
    argv += ["-no-reboot", "-display", "none"]
    # Interactive runs multiplex QEMU's monitor on the terminal, so Ctrl-A X quits.
    argv += ["-serial", "mon:stdio"] if interactive else ["-monitor", "none", "-serial", "stdio"]
    return argv


def prepare_vars(destination: Path, *, secure_boot: bool = False) -> Path:
    """A writable copy of OVMF's variable store (x86); arm64's firmware keeps none."""
    source = OVMF_VARS_SECURE if secure_boot else OVMF_VARS
    shutil.copyfile(source, destination)
    return destination
