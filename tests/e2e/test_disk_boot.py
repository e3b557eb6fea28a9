"""Disk images boot as the machine's disk: x86 classic, arm64 dom0 plus two dom0less domUs."""

from __future__ import annotations

from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.boot import boot, loaded_domus
from tests.support.descriptions import Guest


def build_disk(description: Path, output: Path) -> Path:
    result = run_cli("build", description, "--format", "disk", "-o", output)
    assert result.code == 0, result.stderr
    return output


def test_x86_classic_disk(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    disk = build_disk(description, tmp_path / "disk.img")
    outcome = boot(qemu_x86, qemu.Media(disk_image=disk), ["dom0"], log_path=boot_log,
                   timeout=240, cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    # Xen read the cfg beside itself on the disk, not a builtin one.
    assert "Using builtin config file" not in outcome.output


def test_arm64_dom0_and_two_domus_disk(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests, xen=xen_version)
    disk = build_disk(description, tmp_path / "disk.img")
    outcome = boot(qemu_arm64, qemu.Media(disk_image=disk), ["dom0", "guest1", "guest2"],
                   log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "LOADING DOMAIN 0" in outcome.output
    assert loaded_domus(outcome.output) == [(1, 192 * 1024), (2, 256 * 1024)]
