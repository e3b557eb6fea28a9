"""systemd-boot (Debian's systemd-boot-efi) starts Xen, with no key pressed: from a Type #1
entry naming the plain ESP's xen.efi, and from the unified image it lists in EFI/Linux/ (a
Type #2 entry). The ESP's only firmware boot path is systemd-boot, so Xen running at all shows
that systemd-boot found the entry; Xen's command line shows that it read the load options
systemd-boot passed as hlimage meant them (a section name misread loses the cfg's options)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage import qemu
from hlimage.outputs import chains
from tests.conftest import require, run_cli
from tests.support import descriptions
from tests.support.boot import boot

SYSTEMD_BOOT = chains.SYSTEMD_BOOT_DIR / "systemd-bootx64.efi"
XEN_OPTIONS = f"Command line: {descriptions.X86_XEN_CMDLINE} dom0_mem=512M"


@pytest.fixture
def systemd_boot(qemu_x86: str) -> str:
    require(SYSTEMD_BOOT.is_file(), f"{SYSTEMD_BOOT} missing (package systemd-boot-efi)")
    return qemu_x86


@pytest.mark.parametrize("xen_version", ["4.20"])
def test_type1_entry_starts_the_plain_xen_efi(
    systemd_boot: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    esp = tmp_path / "esp"
    result = run_cli("build", description, "-f", "esp", "--loader", "systemd-boot", "-o", esp)
    assert result.code == 0, result.stderr
    assert (esp / "EFI/BOOT/BOOTX64.EFI").read_bytes() == SYSTEMD_BOOT.read_bytes()
    entry = (esp / "loader/entries/xen.conf").read_text()
    assert "efi /EFI/xen/xen.efi\noptions xen.efi xen\n" in entry
    outcome = boot(systemd_boot, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Using configuration file 'xen.cfg'" in outcome.output
    assert XEN_OPTIONS in outcome.output


@pytest.mark.parametrize("xen_version", ["4.17"])
def test_type2_entry_starts_the_unified_image(
    systemd_boot: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    esp = tmp_path / "esp"
    result = run_cli("build", description, "-f", "esp", "--loader", "systemd-boot-uki", "-o", esp)
    assert result.code == 0, result.stderr
    assert sorted(str(p.relative_to(esp)) for p in esp.rglob("*") if p.is_file()) == [
        "EFI/BOOT/BOOTX64.EFI", "EFI/Linux/xen.efi", "loader/loader.conf",
    ]  # fmt: skip
    outcome = boot(systemd_boot, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
    assert XEN_OPTIONS in outcome.output
