"""kernel-install for real: bookworm's systemd 252 `kernel-install`, in a clean root
(scripts/fresh-root) whose ESP bootctl set up, runs contrib/kernel-install/90-hlimage.install
beside its own plugins. `add` writes the unified image and, for the bls layout bootctl's
loader/entries.srel selects, its Type #1 entry; `remove` deletes both; and the ESP `add` left
boots under the systemd-boot bootctl installed, with no key pressed."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage import qemu
from tests.support import clean_root, descriptions, payloads
from tests.support.boot import boot

# One worker runs the whole module, so its clean root is made once (scripts/test: loadgroup).
pytestmark = pytest.mark.xdist_group("kernel-install")

ROOT = Path(__file__).resolve().parents[2]
VERSION = "6.12.0-hlimage"
TOKEN = "0123456789abcdef0123456789abcdef"
IMAGE = f"./EFI/Linux/xen-{VERSION}.efi"
ENTRY = f"./loader/entries/{TOKEN}-{VERSION}-xen.conf"
XEN = "4.20"


@pytest.fixture(scope="module")
def installed(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> clean_root.Outcome:
    work = tmp_path_factory.mktemp("kernel-install")
    template = (ROOT / "contrib/kernel-install/kernel-install.toml").read_text()
    # The shipped example, made to boot under QEMU: this machine's console and memory.
    for old, new in (
        ('efi = "/boot/xen.efi"', 'efi = "/inputs/xen.efi"'),
        ('"console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"',
         f'"{descriptions.X86_XEN_CMDLINE}"'),
        ('"root=LABEL=root ro console=hvc0"', '"console=hvc0 earlyprintk=xen"'),
        ('memory = "2G"', 'memory = "512M"'),
    ):  # fmt: skip
        assert old in template, old
        template = template.replace(old, new)
    (work / "kernel-install.toml").write_text(template)
    payloads.make_initramfs("x86_64", "dom0", work / "dom0.cpio.gz")
    inputs = {
        "xen.efi": payloads.xen_efi("x86_64", XEN),
        "vmlinuz": payloads.path("x86_64/vmlinuz"),
        "dom0.cpio.gz": work / "dom0.cpio.gz",
        "kernel-install.toml": work / "kernel-install.toml",
    }
    outcome = clean_root.run("kernel-install.sh", inputs, work / "results")
    assert outcome.returncode == 0, outcome.log[-6000:]
    return outcome


def test_add_writes_image_and_entry_and_remove_deletes_both(
    installed: clean_root.Outcome,
) -> None:
    results = installed.results
    after_add = (results / "after-add.txt").read_text().splitlines()
    after_remove = (results / "after-remove.txt").read_text().splitlines()
    for path in (IMAGE, f"{IMAGE}.manifest.json", ENTRY):
        assert path in after_add, path
        assert path not in after_remove, path
    # systemd's own entry for the plain kernel came and went beside it.
    assert f"./loader/entries/{TOKEN}-{VERSION}.conf" in after_add
    entry = (results / "efi" / ENTRY).read_text()
    assert f"efi /EFI/Linux/xen-{VERSION}.efi\noptions xen.efi xen\n" in entry
    assert "Xen with Linux" in (results / "bootctl-list.txt").read_text()


def test_what_add_wrote_boots_under_systemd_boot(
    installed: clean_root.Outcome, qemu_x86: str, boot_log: Path
) -> None:
    esp = installed.results / "efi"
    # dom0's line as the plugin's description gives it; a unified image on Xen 4.19+ prefixes
    # the section's name, "kernel" (README, "Exact command lines").
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=240,
                   cmdlines={"dom0": "kernel console=hvc0 earlyprintk=xen"})  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
    assert f"Command line: {descriptions.X86_XEN_CMDLINE} dom0_mem=512M" in outcome.output
