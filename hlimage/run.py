"""`hlimage run`: boot an output in QEMU with the serial console on the terminal."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hlimage import qemu
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe

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


def run(output: Path, *, arch: str | None = None, memory: str = "2G") -> int:
    """Boot `output` (a unified image or an ESP directory) and return QEMU's exit code."""
    if not output.exists():
        raise HlimageError(
            "no such file or directory; give an output of hlimage build", where=output
        )
    with tempfile.TemporaryDirectory(prefix="hlimage-run-") as scratch:
        work = Path(scratch)
        if output.is_dir():
            media = qemu.Media(esp_dir=output.resolve())
            arch = arch or _esp_arch(output)
        else:
            arch = arch or _pe_arch(output)
            if arch is None:
                raise HlimageError(
                    "not a unified image or ESP directory hlimage can boot; pass --arch if it is "
                    "a disk image",
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
        qemu.check_tools(arch)
        vars_copy = qemu.prepare_vars(work / "vars.fd") if arch == qemu.X86_64 else None
        argv = qemu.command(arch, media, vars_copy=vars_copy, memory=memory, interactive=True)
        return subprocess.call(argv)
