"""`hlimage run` boots an output as a user would look at it: serial console on stdout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.payloads import marker


def test_run_a_disk_image(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    image = tmp_path / "disk.img"
    result = run_cli(
        "build", descriptions.x86_classic(tmp_path, xen=xen_version), "-f", "disk", "-o", image
    )
    assert result.code == 0, result.stderr
    # dom0's init powers the machine off, and Xen's ACPI S5 makes QEMU exit by itself.
    completed = subprocess.run(
        [sys.executable, "-m", "hlimage.cli", "run", str(image)],
        stdin=subprocess.DEVNULL, capture_output=True, timeout=300, check=False,
    )  # fmt: skip
    output = completed.stdout.decode("utf-8", "replace")
    boot_log.parent.mkdir(parents=True, exist_ok=True)
    boot_log.write_text(output)
    assert marker("dom0") in output, output[-3000:]
    assert completed.returncode == 0
