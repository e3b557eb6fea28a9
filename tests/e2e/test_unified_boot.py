"""x86 unified images boot under OVMF to dom0's marker."""

from __future__ import annotations

from pathlib import Path

from hlimage import qemu
from tests.conftest import run_cli, write_description
from tests.support import descriptions, payloads
from tests.support.boot import boot


def esp_with(image: Path, esp: Path) -> Path:
    target = esp / "EFI" / "BOOT"
    target.mkdir(parents=True)
    image.rename(target / "BOOTX64.EFI")
    return esp


def test_unified_image_boots(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    image = tmp_path / "xen.efi"
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    result = run_cli("build", description, "--format", "unified", "-o", image)
    assert result.code == 0, result.stderr
    expected = descriptions.unified_x86_cmdlines(description, xen_version)
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp_with(image, tmp_path / "esp")), ["dom0"],
                   log_path=boot_log, timeout=240, cmdlines=expected)  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
    assert "dom0_mem=512M" in outcome.output


def test_lz4_initrd_from_two_parts_boots(
    qemu_x86: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """Linux reads LZ4 legacy initramfs; the parts (gzip + zstd) are joined and recompressed."""
    payloads.make_initramfs("x86_64", "dom0", tmp_path / "extra.zst", compression="zstd")
    classic = descriptions.x86_classic(tmp_path, xen=xen_version).read_text()
    description = classic.replace(
        'initrd = "dom0.cpio.gz"',
        'initrd = ["dom0.cpio.gz", "extra.zst"]\ninitrd_compression = "lz4"',
    )
    path = write_description(tmp_path, description, "lz4.toml")
    image = tmp_path / "xen.efi"
    result = run_cli("build", path, "--format", "unified", "-o", image)
    assert result.code == 0, result.stderr
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp_with(image, tmp_path / "esp")), ["dom0"],
                   log_path=boot_log, timeout=240,
                   cmdlines=descriptions.unified_x86_cmdlines(path, xen_version))  # fmt: skip
    outcome.check()


def test_arm64_unified_image_boots(
    qemu_arm64: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """arm64: a new PE wraps xen.efi (its own header has no room for more sections)."""
    description = descriptions.arm64(tmp_path, [], xen=xen_version)  # dom0 only
    esp = tmp_path / "esp"
    (esp / "EFI" / "BOOT").mkdir(parents=True)
    result = run_cli("build", description, "-f", "unified", "-o", esp / "EFI/BOOT/BOOTAA64.EFI",
                     "--no-manifest")  # fmt: skip
    assert result.code == 0, result.stderr
    assert [p.name for p in esp.rglob("*") if p.is_file()] == ["BOOTAA64.EFI"]
    outcome = boot(qemu_arm64, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=240,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
