"""Descriptions the tests build from the cached Debian payloads, with marker initramfs images."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.support import payloads

X86_XEN_CMDLINE = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot"
ARM64_XEN_CMDLINE = "console=dtuart loglvl=all guest_loglvl=all"
# Seconds dom0 waits before powering off when domUs boot beside it: under software emulation
# on a loaded machine a domU's marker came 3 s after dom0's.
DOM0_LINGER = 60


@dataclass(frozen=True)
class Guest:
    name: str
    memory: str = "192M"
    vcpus: int | None = 1
    extra: str = "vpl011 = true\n"


def arm64(
    directory: Path,
    guests: list[Guest],
    *,
    dom0: bool = True,
    name: str = "hlimage.toml",
    xen_extra: str = "",
    xen: str = "4.17",
) -> Path:
    """dom0 (optional) plus dom0less guests, each with its own marker initramfs, on Debian's
    Xen of release `xen`."""
    cache = payloads.CACHE
    text = f"""[image]
arch = "arm64"

[xen]
efi = "{payloads.xen_efi("arm64", xen)}"
dtb = "{cache / payloads.ARM64_DTB}"
cmdline = "{ARM64_XEN_CMDLINE}"
{xen_extra}
"""
    domains = ([Guest("dom0", "512M", None, "")] if dom0 else []) + guests
    for guest in domains:
        initrd = directory / f"{guest.name}.cpio.gz"
        if not initrd.exists():
            # dom0 halts the machine when it powers off: beside domUs it waits for theirs.
            linger = DOM0_LINGER if guest.name == "dom0" and guests else 1
            payloads.make_initramfs("arm64", guest.name, initrd, linger=linger)
        console = "console=hvc0 earlycon=xenboot" if guest.name == "dom0" else "console=ttyAMA0"
        text += f"""
[[domain]]
name = "{guest.name}"
kernel = "{cache / "arm64/Image"}"
initrd = "{initrd.name}"
cmdline = "{console}"
memory = "{guest.memory}"
"""
        if guest.vcpus is not None:
            text += f"vcpus = {guest.vcpus}\n"
        text += guest.extra
    path = directory / name
    path.write_text(text)
    return path


def x86_classic(
    directory: Path,
    *,
    name: str = "hlimage.toml",
    extra: str = "",
    initrd_name: str | None = None,
    memory: str = "512M",
    xen: str = "4.17",
    xen_extra: str = "",
) -> Path:
    """dom0 with a marker initramfs, or with `initrd_name` (a file the caller provides), on
    Debian's Xen of release `xen`; `xen_extra` is added to [xen], `extra` to the domain."""
    cache = payloads.CACHE
    initrd = directory / (initrd_name or "dom0.cpio.gz")
    if initrd_name is None and not initrd.exists():
        payloads.make_initramfs("x86_64", "dom0", initrd)
    path = directory / name
    path.write_text(
        f"""[image]
arch = "x86_64"

[xen]
efi = "{payloads.xen_efi("x86_64", xen)}"
multiboot = "{payloads.xen_gz(xen)}"
cmdline = "{X86_XEN_CMDLINE}"
{xen_extra}
[[domain]]
name = "dom0"
kernel = "{cache / "x86_64/vmlinuz"}"
initrd = "{initrd.name}"
cmdline = "console=hvc0 earlyprintk=xen"
memory = "{memory}"
{extra}"""
    )
    return path


def cmdlines(description: Path, domains: Sequence[str] | None = None) -> dict[str, str]:
    """What each domain's /proc/cmdline must be: the description's `cmdline`, exactly (all
    domains, or those named)."""
    from hlimage import config

    system = config.load(description)
    return {d.name: d.cmdline for d in system.domains if domains is None or d.name in domains}


def unified_x86_cmdlines(description: Path, xen_version: str) -> dict[str, str]:
    """dom0's /proc/cmdline from an x86 unified image: since Xen 4.19 the EFI loader no
    longer strips the module's name and hands dom0 the section's, "kernel", as the line's first
    word, whatever xen.cfg says (README, "Exact command lines")."""
    expected = cmdlines(description)
    if tuple(int(part) for part in xen_version.split(".")) >= (4, 19):
        expected["dom0"] = f"kernel {expected['dom0']}".rstrip()
    return expected
