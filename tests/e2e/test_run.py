"""`hlimage run` boots an output as a user would look at it: serial console on stdout."""

from __future__ import annotations

import sys
from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.boot import boot


def test_run_a_disk_image(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    image = tmp_path / "disk.img"
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    result = run_cli("build", description, "-f", "disk", "-o", image)
    assert result.code == 0, result.stderr
    # Through the boot helper, whose own session kills QEMU too if it hangs: killing only
    # `hlimage run` would leave its QEMU running.
    command = [sys.executable, "-m", "hlimage.cli", "run", str(image)]
    # dom0's init powers the machine off, and Xen's ACPI S5 makes QEMU exit by itself.
    outcome = boot(qemu_x86, qemu.Media(disk_image=image), ["dom0"], log_path=boot_log, timeout=300,
                   command=command, until_exit=True,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert outcome.returncode == 0, f"hlimage run exited {outcome.returncode}:\n{outcome.tail()}"
