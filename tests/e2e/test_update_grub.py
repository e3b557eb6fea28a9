"""update-grub for real: in a clean root (scripts/fresh-root), Debian's grub-efi-amd64 runs
grub/25_hyperlaunch installed as /etc/grub.d/25_hyperlaunch; the grub.cfg update-grub writes,
and the hlimage entry in it alone, pass grub-script-check. Where the root can have a loop
device, /boot and the ESP are partitions of a disk image that grub-install made bootable, and
that grub.cfg boots from that disk to dom0's marker with no key pressed: Debian's GRUB, made
with grub-mkstandalone as the ESP's loader, runs /grub/grub.cfg from the /boot partition (the
ESP cannot be mounted for grub-install: the machine's kernel has no vfat). The entry has no
search line there: GRUB's probe finds no drive for a loop device's partition (docs/boot-chains.md
§5), and the entry reads /boot from the partition grub.cfg came from. Where the root has no
loop device, the entry update-grub wrote boots through a GRUB image of the test's own, with the
files at the paths it names."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hlimage import qemu
from tests.support import clean_root, descriptions, payloads
from tests.support.boot import boot
from tests.support.grub import install_loader

# One worker runs the whole module, so its clean root is made once (scripts/test: loadgroup).
pytestmark = pytest.mark.xdist_group("update-grub")

XEN = "4.17"
FILES = "/boot/hlimage-test"
DESCRIPTION = f"""[image]
arch = "x86_64"

[xen]
multiboot = "{FILES}/xen.gz"
cmdline = "{descriptions.X86_XEN_CMDLINE}"

[[domain]]
name = "dom0"
kernel = "{FILES}/vmlinuz"
initrd = "{FILES}/dom0.cpio.gz"
cmdline = "console=hvc0 earlyprintk=xen"
memory = "512M"
"""


@pytest.fixture(scope="module")
def updated(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> clean_root.Outcome:
    work = tmp_path_factory.mktemp("update-grub")
    (work / "xen.toml").write_text(DESCRIPTION)
    payloads.make_initramfs("x86_64", "dom0", work / "dom0.cpio.gz")
    inputs = {
        "xen.gz": payloads.xen_gz(XEN),
        "vmlinuz": payloads.path("x86_64/vmlinuz"),
        "dom0.cpio.gz": work / "dom0.cpio.gz",
        "xen.toml": work / "xen.toml",
    }
    outcome = clean_root.run("update-grub.sh", inputs, work / "results")
    assert outcome.returncode == 0, outcome.log[-6000:]
    return outcome


def test_update_grub_writes_a_checked_hlimage_entry(updated: clean_root.Outcome) -> None:
    entry = (updated.results / "25_hyperlaunch.cfg").read_text()
    assert "menuentry 'Xen (xen)' --id hlimage-xen {" in entry
    assert re.search(r"multiboot2 \S*/hlimage-test/xen\.gz placeholder ", entry), entry
    assert "Found hlimage description: /etc/hlimage/xen.toml" in updated.log
    # Checked inside the root; again here by this machine's GRUB, the file that came back.
    if shutil.which("grub-script-check"):
        for name in ("grub.cfg", "25_hyperlaunch.cfg"):
            subprocess.run(["grub-script-check", updated.results / name], check=True)
    grub_cfg = (updated.results / "grub.cfg").read_text()
    assert 'set default="hlimage-xen"' in grub_cfg


def test_the_entry_boots(
    updated: clean_root.Outcome, qemu_x86: str, tmp_path: Path, boot_log: Path
) -> None:
    disk = updated.results / "disk.img"
    if disk.exists():
        assert "::/EFI/BOOT/BOOTX64.EFI" in (updated.results / "esp.txt").read_text()
        boot_files = (updated.results / "boot.txt").read_text().splitlines()
        assert "./grub/grub.cfg" in boot_files and "./hlimage-test/xen.gz" in boot_files
        media = qemu.Media(disk_image=disk)
    else:
        # No loop device in the root: say so, and boot the entry from an ESP of the test's own,
        # the files where the entry names them (/boot/..., as /boot was no file system of its
        # own), without the search line that looks for the root's file system.
        print(f"no loop device: {(updated.results / 'no-loop').read_text().strip()}")
        entry = (updated.results / "25_hyperlaunch.cfg").read_text()
        esp = tmp_path / "esp"
        shutil.copytree(updated.results / "boot", esp / "boot", symlinks=False)
        lines = [line for line in entry.splitlines() if not line.strip().startswith("search ")]
        (esp / "grub.cfg").write_text("set timeout=0\n" + "\n".join(lines) + "\n")
        install_loader(esp)
        media = qemu.Media(esp_dir=esp)
    outcome = boot(qemu_x86, media, ["dom0"], log_path=boot_log, timeout=300,
                   cmdlines={"dom0": "console=hvc0 earlyprintk=xen"})  # fmt: skip
    outcome.check()
    assert "Bootloader: GRUB" in outcome.output
