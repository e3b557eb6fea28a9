"""ESP trees boot: arm64 dom0 plus dom0less domUs, arm64 without dom0, x86 classic."""

from __future__ import annotations

from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.boot import boot, loaded_domus
from tests.support.descriptions import Guest


def build_esp(description: Path, output: Path) -> Path:
    result = run_cli("build", description, "--format", "esp", "-o", output)
    assert result.code == 0, result.stderr
    return output


def test_arm64_dom0_and_two_domus(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests, xen=xen_version)
    esp = build_esp(description, tmp_path / "esp")
    outcome = boot(qemu_arm64, qemu.Media(esp_dir=esp), ["dom0", "guest1", "guest2"],
                   log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert loaded_domus(outcome.output) == [(1, 192 * 1024), (2, 256 * 1024)]
    assert "LOADING DOMAIN 0" in outcome.output


def test_arm64_without_dom0(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    guests = [Guest("guest1", "128M", 1), Guest("guest2", "160M", 2)]
    description = descriptions.arm64(tmp_path, guests, dom0=False, xen=xen_version)
    esp = build_esp(description, tmp_path / "esp")
    cfg = (esp / "EFI/BOOT/BOOTAA64.cfg").read_text()
    assert "kernel=" not in cfg and "dtb=xen.dtb" in cfg
    outcome = boot(qemu_arm64, qemu.Media(esp_dir=esp), ["guest1", "guest2"],
                   log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "dom0less mode detected" in outcome.output
    assert loaded_domus(outcome.output) == [(1, 128 * 1024), (2, 160 * 1024)]


def test_x86_classic_esp(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    esp = build_esp(description, tmp_path / "esp")
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=240,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Using builtin config file" not in outcome.output
