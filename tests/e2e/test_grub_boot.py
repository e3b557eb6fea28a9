"""GRUB boots Xen: a grub.cfg with its files on an ESP, a grub-standalone file alone on an ESP
(x86, multiboot2), and arm64's xen_hypervisor from a grub-standalone image."""

from __future__ import annotations

from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions, payloads
from tests.support.boot import boot
from tests.support.grub import install_loader


def test_x86_grub_directory_on_an_esp(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    esp = tmp_path / "esp"
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    result = run_cli("build", description, "-f", "grub", "-o", esp)
    assert result.code == 0, result.stderr
    install_loader(esp)
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Bootloader: GRUB" in outcome.output


def test_x86_grub_standalone_alone_on_an_esp(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    image = esp / "EFI/BOOT/BOOTX64.EFI"
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    result = run_cli("build", description, "-f", "grub-standalone", "-o", image, "--no-manifest")
    assert result.code == 0, result.stderr
    assert [p.name for p in esp.rglob("*") if p.is_file()] == ["BOOTX64.EFI"]
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()


def test_arm64_grub_xen_hypervisor(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """GRUB arm64 needs `devicetree` under QEMU's ACPI firmware (docs/qemu-boot.md)."""
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    image = esp / "EFI/BOOT/BOOTAA64.EFI"
    description = descriptions.arm64(tmp_path, [], xen=xen_version)
    result = run_cli("build", description, "-f", "grub-standalone", "-o", image, "--no-manifest",
                     "--grub-lib", cache / payloads.ARM64_GRUB)  # fmt: skip
    assert result.code == 0, result.stderr
    outcome = boot(qemu_arm64, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
