"""U-Boot boots Xen: Debian's u-boot-qemu as the arm64 machine's firmware, no key pressed
(stdin is closed), U-Boot's default boot finding hlimage's boot.scr(.uimg) by itself on the
disk or over QEMU's TFTP, every domain's marker (docs/uboot.md).

Thirteen boots and one short U-Boot run: each layout once per Xen release where it differs by
release (the domains' node order in /chosen, the dom0less path), the two routes of the one
script (disk and TFTP) shared out between the tests, U-Boot's own UEFI (bootefi) starting
the UEFI disk image once, and an imported ImageBuilder config by both routes.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from hlimage import qemu
from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.boot import BootResult, boot, loaded_domus
from tests.support.descriptions import Guest

TIMEOUT = 300


def build(description: Path, output: Path, *args: str) -> Path:
    result = run_cli("build", description, "-o", output, *args)
    assert result.code == 0, result.stderr
    return output


def uboot_boot(
    media: qemu.Media,
    domains: list[str],
    boot_log: Path,
    *,
    found: str,
    over_tftp: bool,
    cmdlines: dict[str, str],
    command: list[str] | None = None,
) -> BootResult:
    outcome = boot(qemu.ARM64, media, domains, log_path=boot_log, timeout=TIMEOUT, uboot=True,
                   command=command, cmdlines=cmdlines)  # fmt: skip
    outcome.check()
    text = outcome.output
    assert "Hit any key to stop autoboot" in text  # and none was: the default boot ran
    assert found in text
    assert ("over TFTP" in text) == over_tftp
    return outcome


@pytest.mark.parametrize(
    ("media", "xen_version"), [("tree", "4.17"), ("disk", "4.20")], indirect=["xen_version"]
)
def test_dom0_alone(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, media: str, xen_version: str
) -> None:
    """The uboot directory as a FAT disk (QEMU's vvfat), started as a user looks at it with
    `hlimage run DIR`, and the disk image carrying the tree."""
    description = descriptions.arm64(tmp_path, [], xen=xen_version)
    command = None
    if media == "tree":
        tree = build(description, tmp_path / "uboot", "-f", "uboot")
        assert {"boot.scr", "boot.scr.uimg", "xen", "xen.dtb"} <= {p.name for p in tree.iterdir()}
        machine = qemu.Media(esp_dir=tree)
        # Through the boot helper, whose session kills hlimage run's QEMU too.
        command = [sys.executable, "-m", "hlimage.cli", "run", str(tree)]
    else:
        image = build(description, tmp_path / "uboot.img", "-f", "disk", "--loader", "uboot")
        machine = qemu.Media(disk_image=image)
    outcome = uboot_boot(machine, ["dom0"], boot_log, found="Found U-Boot script /boot.scr.uimg",
                         over_tftp=False, command=command,
                         cmdlines=descriptions.cmdlines(description))  # fmt: skip
    assert "hlimage: loading Xen and its modules from virtio 0:1" in outcome.output
    assert "LOADING DOMAIN 0" in outcome.output and loaded_domus(outcome.output) == []


def test_dom0_and_two_domus_over_tftp(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """The PXE tree for U-Boot: the same script takes its tftpboot branch (devtype=dhcp)."""
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests, xen=xen_version)
    tree = build(description, tmp_path / "tftp", "-f", "pxe", "--loader", "uboot")
    outcome = uboot_boot(qemu.Media(tftp_dir=tree), ["dom0", "guest1", "guest2"], boot_log,
                         found="Filename 'boot.scr.uimg'", over_tftp=True,
                         cmdlines=descriptions.cmdlines(description))  # fmt: skip
    assert loaded_domus(outcome.output) == [(1, 192 * 1024), (2, 256 * 1024)]
    # The one kernel is fetched once and copied for each domU.
    assert outcome.output.count("Filename 'Image'") == 1


def test_domus_without_dom0(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """Plain dom0less: no capabilities anywhere, so Xen 4.17 boots it as well as 4.20."""
    guests = [Guest("guest1", "128M", 1), Guest("guest2", "160M", 2)]
    description = descriptions.arm64(tmp_path, guests, dom0=False, xen=xen_version)
    image = build(description, tmp_path / "uboot.img", "-f", "disk", "--loader", "uboot")
    outcome = uboot_boot(qemu.Media(disk_image=image), ["guest1", "guest2"], boot_log,
                         found="Found U-Boot script /boot.scr.uimg", over_tftp=False,
                         cmdlines=descriptions.cmdlines(description))  # fmt: skip
    assert "dom0less mode detected" in outcome.output
    assert loaded_domus(outcome.output) == [(1, 128 * 1024), (2, 160 * 1024)]


@pytest.mark.parametrize("route", ["disk", "tftp"])
def test_fit(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str, route: str
) -> None:
    """One FIT as /boot.scr on the disk image, or as boot.scr.uimg at the TFTP root: source
    runs its script, bootm checks every image's sha256 and starts Xen."""
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests, xen=xen_version)
    if route == "disk":
        image = build(description, tmp_path / "fit.img", "-f", "disk", "--loader", "fit")
        media, found = qemu.Media(disk_image=image), "Found U-Boot script /boot.scr"
    else:
        tree = build(description, tmp_path / "tftp", "-f", "pxe", "--loader", "fit")
        media, found = qemu.Media(tftp_dir=tree), "Filename 'boot.scr.uimg'"
    outcome = boot(qemu.ARM64, media, ["dom0", "guest1", "guest2"], log_path=boot_log,
                   timeout=TIMEOUT, uboot=True,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    text = outcome.output
    assert found in text and "## Loading kernel from FIT Image at 40200000" in text
    # The script, Xen, the tree and the six modules: every hash checked.
    assert text.count("sha256+ OK") >= 8
    assert loaded_domus(text) == [(1, 192 * 1024), (2, 256 * 1024)]


def test_a_file_that_does_not_load_stops_the_script(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path
) -> None:
    """U-Boot alone (about 10 s): a tree missing dom0's initrd names it and starts nothing."""
    description = descriptions.arm64(tmp_path, [])
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    (tree / "dom0.cpio.gz").unlink()
    outcome = boot(qemu.ARM64, qemu.Media(esp_dir=tree), [], log_path=boot_log, timeout=120,
                   uboot=True, fatal=(), stop_on=["Xen not started"], until_exit=True,
                   cmdlines={})  # fmt: skip
    assert outcome.stopped_by == "Xen not started", outcome.tail()
    assert "hlimage: could not load dom0.cpio.gz; Xen not started" in outcome.output
    assert "Starting kernel" not in outcome.output


@pytest.mark.parametrize("xen_version", ["4.20"], indirect=True)
def test_uefi_disk_under_uboot_bootefi(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, xen_version: str
) -> None:
    """Today's arm64 UEFI disk image, unchanged, under U-Boot's own UEFI: finding no boot
    script, the default boot starts efi/boot/bootaa64.efi with bootefi, and Xen's EFI loader
    reads BOOTAA64.cfg and xen.dtb beside it as under EDK2."""
    guests = [Guest("guest1", "192M", 1), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests, xen=xen_version)
    image = build(description, tmp_path / "disk.img", "-f", "disk")
    outcome = boot(qemu.ARM64, qemu.Media(disk_image=image), ["dom0", "guest1", "guest2"],
                   log_path=boot_log, timeout=TIMEOUT, uboot=True,
                   cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    text = outcome.output
    assert "Found EFI removable media binary efi/boot/bootaa64.efi" in text
    assert "Using configuration file 'bootaa64.cfg'" in text
    assert loaded_domus(text) == [(1, 192 * 1024), (2, 256 * 1024)]


@pytest.mark.parametrize("load_cmd", ["load virtio 0:1", "tftpb"])
def test_an_imported_imagebuilder_config_boots(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, load_cmd: str
) -> None:
    """The ImageBuilder user's path, end to end and without root: their config imported, the
    build command the importer prints run as printed, and the tree booted by U-Boot's
    default boot from a FAT disk (QEMU's vvfat) or over QEMU's TFTP, as the config's LOAD_CMD
    says, dom0 and the domU each printing its marker and its command line."""
    from tests.support import payloads

    source = tmp_path / "imagebuilder"
    source.mkdir()
    for link, target in (("xen.efi", payloads.xen_efi("arm64", "4.20")),
                         ("virt.dtb", payloads.CACHE / payloads.ARM64_DTB),
                         ("Image", payloads.CACHE / "arm64" / "Image")):  # fmt: skip
        (source / link).symlink_to(target)
    # The importer names domUs as ImageBuilder's /chosen nodes: domU0, domU1...
    for domain in ("dom0", "domU0"):
        payloads.make_initramfs("arm64", domain, source / f"{domain}.cpio.gz")
    (source / "config").write_text(
        "DEVICE_TREE=virt.dtb\nXEN=xen.efi\n"
        'XEN_CMD="console=dtuart dom0_mem=512M loglvl=all guest_loglvl=all"\n'
        'DOM0_KERNEL=Image\nDOM0_RAMDISK=dom0.cpio.gz\nDOM0_CMD="console=hvc0"\n'
        "NUM_DOMUS=1\nDOMU_KERNEL[0]=Image\nDOMU_RAMDISK[0]=domU0.cpio.gz\nDOMU_MEM[0]=192\n"
        f'DOMU_VCPUS[0]=1\nDOMU_CMD[0]="console=ttyAMA0"\nLOAD_CMD="{load_cmd}"\n'
        "UBOOT_SOURCE=boot.source\nUBOOT_SCRIPT=boot.scr\n"
    )
    description = tmp_path / "out" / "hlimage.toml"
    description.parent.mkdir()
    imported = run_cli("import", "imagebuilder", source / "config", "-o", description)
    assert imported.code == 0, imported.stderr
    command = imported.stdout.split()
    assert command[:2] == ["hlimage", "build"] and "uboot" in command, imported.stdout
    built = run_cli(*command[1:])
    assert built.code == 0, built.stderr
    tree = Path(command[command.index("-o") + 1])
    over_tftp = load_cmd == "tftpb"
    if over_tftp:
        media = qemu.Media(tftp_dir=tree)
        found = "Filename 'boot.scr.uimg'"
    else:
        media = qemu.Media(esp_dir=tree)
        found = "Found U-Boot script /boot.scr.uimg"
    outcome = uboot_boot(media, ["dom0", "domU0"], boot_log, found=found, over_tftp=over_tftp,
                         cmdlines=descriptions.cmdlines(description))  # fmt: skip
    assert loaded_domus(outcome.output) == [(1, 192 * 1024)]
