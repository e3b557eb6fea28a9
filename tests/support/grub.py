"""A GRUB EFI loader for test ESPs: finds grub.cfg on the boot disk and runs it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import require

EARLY_CONFIG = """insmod part_msdos
insmod part_gpt
insmod fat
search --no-floppy --file --set=root /grub.cfg
configfile /grub.cfg
"""


def install_loader(esp: Path, platform: str = "x86_64-efi", lib: Path | None = None) -> Path:
    """EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI) that chains to /grub.cfg on the same disk."""
    require(shutil.which("grub-mkstandalone") is not None, "grub-mkstandalone (grub-common)")
    early = esp.parent / f"{esp.name}-early.cfg"
    early.write_text(EARLY_CONFIG)
    name = "BOOTX64.EFI" if platform == "x86_64-efi" else "BOOTAA64.EFI"
    target = esp / "EFI" / "BOOT" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    argv = ["grub-mkstandalone", "-O", platform, "-o", str(target), "--locales=", "--fonts=",
            "--themes=", f"boot/grub/grub.cfg={early}"]  # fmt: skip
    if lib is not None:
        argv[1:1] = ["-d", str(lib)]
    subprocess.run(argv, check=True, capture_output=True)
    return target
