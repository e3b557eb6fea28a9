"""A Secure Boot chain as Debian ships it, booted enforcing under Debian's snakeoil OVMF.

The chain proved: Debian's shimx64.efi (shim-unsigned 16.1, Debian's CA built in as its
vendor certificate) signed with the snakeoil key, which the firmware's db holds; shim checks
Xen (as grubx64.efi, with its .sbat) against that same db, and Xen asks shim to check dom0's
kernel, signed with the same key. Nothing but the firmware's own db is trusted, so no MOK list
and no Microsoft key is involved (docs/boot-chains.md §3 says why). A Xen changed after signing is
refused by shim itself: the firmware never loads Xen, shim does, and says so."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage import qemu
from tests.conftest import require, run_cli
from tests.e2e.test_secure_boot import SNAKEOIL_CERT, SNAKEOIL_KEY, STOP_ON, XEN_STARTED
from tests.support import descriptions
from tests.support.boot import FATAL, boot

SHIM = Path("/usr/lib/shim/shimx64.efi")
SBAT = (
    "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
    "xen,1,Xen Project,xen,4.17,https://xenproject.org/\n"
)
# shim 16.1's words when the image it was asked to start does not verify (shim.c, pe.c).
SHIM_REFUSED = "Verification failed: (0x1A) Security Violation"


@pytest.fixture
def shim_firmware(qemu_x86: str) -> str:
    for path in (qemu.OVMF_CODE_SECURE, qemu.OVMF_VARS_SECURE, SNAKEOIL_KEY, SHIM):
        require(path.is_file(), f"{path} missing (packages ovmf, shim-unsigned)")
    return qemu_x86


def build_chain(directory: Path, xen_version: str, *extra: str) -> tuple[Path, dict[str, str]]:
    """The shim chain's ESP, and dom0's command line as the description gives it."""
    (directory / "sbat.csv").write_text(SBAT)
    description = descriptions.x86_classic(
        directory, xen=xen_version, xen_extra='sbat = "sbat.csv"\n'
    )
    password = directory / "passphrase"
    password.write_text("snakeoil\n")
    esp = directory / "esp"
    result = run_cli("build", description, "-f", "esp", "-o", esp, "--shim", SHIM,
                     "--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_CERT,
                     "--key-password-file", password, *extra)  # fmt: skip
    assert result.code == 0, result.stderr
    if "--unified" in extra:
        return esp, descriptions.unified_x86_cmdlines(description, xen_version)
    return esp, descriptions.cmdlines(description)


@pytest.mark.parametrize("xen_version", ["4.17"])
def test_shim_starts_xen_which_has_shim_verify_dom0(
    shim_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    esp, cmdlines = build_chain(tmp_path, xen_version)
    outcome = boot(shim_firmware, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, secure_boot=True, stop_on=STOP_ON, cmdlines=cmdlines)  # fmt: skip
    outcome.check()
    # Xen ran under the name shim starts, which the firmware itself never does.
    assert "Using configuration file 'grubx64.cfg'" in outcome.output
    assert "could not be verified" not in outcome.output
    assert "Secure boot enabled" in outcome.output


@pytest.mark.parametrize("xen_version", ["4.17", "4.20"], indirect=True)
def test_shim_starts_the_signed_unified_image(
    shim_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """shim, then the unified image (one signature over Xen, xen.cfg, dom0's kernel and
    initrd), then dom0: Xen before 4.21 has shim verify even the kernel in its own section,
    which --key signed before it went in."""
    esp, cmdlines = build_chain(tmp_path, xen_version, "--unified")
    assert sorted(p.name for p in (esp / "EFI/BOOT").iterdir()) == [
        "BOOTX64.EFI", "grubx64.efi", "mmx64.efi"
    ]  # fmt: skip
    outcome = boot(shim_firmware, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, secure_boot=True, stop_on=STOP_ON, cmdlines=cmdlines)  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
    assert "could not be verified" not in outcome.output
    assert "Secure boot enabled" in outcome.output


@pytest.mark.parametrize("xen_version", ["4.17"])
def test_shim_refuses_a_changed_xen(
    shim_firmware: str, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """One byte of Xen's banner changed after signing: shim, which the firmware accepted,
    refuses Xen; Xen never runs."""
    esp, cmdlines = build_chain(tmp_path, xen_version)
    xen = esp / "EFI/BOOT/grubx64.efi"
    data = bytearray(xen.read_bytes())
    at = data.index("EFI loader".encode("utf-16-le"))
    data[at] = ord("e")
    xen.write_bytes(bytes(data))
    outcome = boot(shim_firmware, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log,
                   timeout=240, secure_boot=True, stop_on=(SHIM_REFUSED, *STOP_ON),
                   fatal=tuple(f for f in FATAL if f != "UiApp"), cmdlines=cmdlines)  # fmt: skip
    assert outcome.stopped_by == SHIM_REFUSED, outcome.tail()
    assert "Access Denied" not in outcome.output  # the firmware started shim
    assert XEN_STARTED not in outcome.output and not outcome.seen
