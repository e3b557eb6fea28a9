"""Secure Boot enforcing (Debian's snakeoil OVMF: its test key is in PK, KEK and db): the
unified image hlimage signs with that key boots; unsigned or changed after signing, the
firmware refuses to start it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from hlimage import qemu
from hlimage.formats import pe
from tests.conftest import require, run_cli
from tests.support import descriptions
from tests.support.boot import BootResult, boot

SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
# What OVMF prints when its image verification refuses the boot option (checked by running
# it): BdsDxe names the option and the EFI status, then goes on to the next option.
REFUSED = re.compile(
    r'failed to load Boot\d+ "UEFI QEMU HARDDISK[^"]*" from [^\r\n]*: Access Denied'
)
# The string that ends a refused run early, rather than waiting for the boot menu.
STOP_ON = (": Access Denied",)
# Xen's EFI loader's first line: its absence shows the firmware never ran the image.
XEN_STARTED = "EFI loader"


@pytest.fixture
def secure_firmware(qemu_x86: str) -> str:
    for path in (qemu.OVMF_CODE_SECURE, qemu.OVMF_VARS_SECURE, SNAKEOIL_KEY, SNAKEOIL_CERT):
        require(path.is_file(), f"{path} missing (package ovmf)")
    return qemu_x86


def build_image(directory: Path, xen_version: str, *, sign: bool) -> Path:
    """The x86 classic unified image of that Xen at ESP/EFI/BOOT/BOOTX64.EFI, signed with the
    snakeoil key (encrypted: its passphrase comes from a file) or not."""
    description = descriptions.x86_classic(directory, xen=xen_version)
    image = directory / "esp" / "EFI" / "BOOT" / "BOOTX64.EFI"
    image.parent.mkdir(parents=True)
    extra: list[str | Path] = []
    if sign:
        password = directory / "passphrase"
        password.write_text("snakeoil\n")
        extra = ["--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_CERT, "--key-password-file", password]
    result = run_cli("build", description, "-f", "unified", "-o", image, "--no-manifest", *extra)
    assert result.code == 0, result.stderr
    assert [p.name for p in (directory / "esp").rglob("*") if p.is_file()] == ["BOOTX64.EFI"]
    return image


def secure_boot(image: Path, log: Path, xen_version: str) -> BootResult:
    esp = image.parents[2]
    description = esp.parent / "hlimage.toml"
    return boot(qemu.X86_64, qemu.Media(esp_dir=esp), ["dom0"], log_path=log, timeout=240,
                secure_boot=True, stop_on=STOP_ON,
                cmdlines=descriptions.unified_x86_cmdlines(description, xen_version))  # fmt: skip


def assert_refused(outcome: BootResult) -> None:
    assert outcome.stopped_by is not None, f"not refused; log {outcome.log_path}:\n{outcome.tail()}"
    assert REFUSED.search(outcome.output), outcome.tail()
    assert not outcome.seen and XEN_STARTED not in outcome.output


def test_signed_unified_image_boots(
    secure_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    outcome = secure_boot(build_image(tmp_path, xen_version, sign=True), boot_log, xen_version)
    outcome.check()
    assert outcome.stopped_by is None
    assert "Using builtin config file" in outcome.output
    # dom0's Linux reads the firmware's SecureBoot variable: the boot above was enforcing.
    assert "Secure boot enabled" in outcome.output


def test_unsigned_unified_image_is_refused(
    secure_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    assert_refused(
        secure_boot(build_image(tmp_path, xen_version, sign=False), boot_log, xen_version)
    )


def test_changed_signed_image_is_refused(
    secure_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """One option of Xen's embedded command line changed after signing, keeping its length:
    what an attacker with write access to the ESP would do."""
    image = build_image(tmp_path, xen_version, sign=True)
    with image.open("rb") as stream:
        config = pe.parse(stream).section(".config")
    assert config is not None
    data = bytearray(image.read_bytes())
    start, end = config.raw_offset, config.raw_offset + config.data_size
    at = data.index(b"loglvl=all", start, end)
    data[at : at + 10] = b"loglvl=non"
    image.write_bytes(bytes(data))
    assert_refused(secure_boot(image, boot_log, xen_version))


def test_signed_esp_boots(
    secure_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """--format esp --key: BOOTX64.EFI is a signed copy of xen.efi without its COFF symbol
    table; the firmware runs it and Xen reads its cfg and modules beside it."""
    description = descriptions.x86_classic(tmp_path, xen=xen_version)
    password = tmp_path / "passphrase"
    password.write_text("snakeoil\n")
    esp = tmp_path / "esp"
    result = run_cli("build", description, "-f", "esp", "-o", esp, "--key", SNAKEOIL_KEY,
                     "--cert", SNAKEOIL_CERT, "--key-password-file", password)  # fmt: skip
    assert result.code == 0, result.stderr
    outcome = boot(qemu.X86_64, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, secure_boot=True, stop_on=STOP_ON,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    assert "Secure boot enabled" in outcome.output
