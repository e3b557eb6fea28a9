"""PXE: QEMU's user-mode TFTP and OVMF's/EDK2's own network boot client, no disk at all."""

from __future__ import annotations

from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions, payloads
from tests.support.boot import boot


def test_x86_pxe_tree(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    tree = tmp_path / "tftp"
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    result = run_cli("build", description, "-f", "pxe", "-o", tree)
    assert result.code == 0, result.stderr
    assert sorted(p.name for p in tree.iterdir()) == ["README.txt", "bootx64.efi"]
    assert "dnsmasq" in (tree / "README.txt").read_text()
    media = qemu.Media(tftp_dir=tree, bootfile="bootx64.efi")
    # Before 4.22 (4.21.2) the boot file is GRUB, which passes dom0 its line as it is.
    outcome = boot(qemu_x86, media, ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()


def test_arm64_pxe_tree(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    tree = tmp_path / "tftp"
    description = descriptions.arm64(tmp_path, [], xen=xen_version)
    result = run_cli("build", description, "-f", "pxe", "-o", tree,
                     "--grub-lib", cache / payloads.ARM64_GRUB)  # fmt: skip
    assert result.code == 0, result.stderr
    media = qemu.Media(tftp_dir=tree, bootfile="bootaa64.efi")
    outcome = boot(qemu_arm64, media, ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
