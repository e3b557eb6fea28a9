"""The boot modules a description needs, in the order Xen takes them, with the file names the
directory outputs (ESP, GRUB, PXE) give them.

One list serves every output: the ESP writes the files, xen.cfg and the device tree name
them, GRUB loads them in this order and the hyperlaunch LCM refers to them by index.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from hlimage.errors import HlimageError
from hlimage.formats.payload import Payload, Region
from hlimage.model import Domain, System
from hlimage.payloads import article, initrd_payload, kernel_info
from hlimage.planned import PlannedFile, Role

FDT_MAGIC = bytes.fromhex("d00dfeed")
# A module is a planned file whose name is unique in a directory output, ASCII, with no
# directory part.
Module = PlannedFile


_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]")


def _safe(name: str) -> str:
    return _UNSAFE.sub("_", name) or "file"


class _Namer:
    """File names for modules: the input's own name where it is free, the domain's name in
    front where two different inputs share one, and one file for one input used twice (Xen's
    EFI loader reads a file once per name)."""

    RESERVED = frozenset({"xen.dtb", "BOOTX64.EFI", "BOOTX64.cfg", "BOOTAA64.EFI", "BOOTAA64.cfg"})

    def __init__(self, reserved: Iterable[str] = ()) -> None:
        self.by_source: dict[Path, str] = {}
        self.used: set[str] = {name.lower() for name in (*self.RESERVED, *reserved)}

    def name(self, preferred: str, prefix: str, source: Path | None) -> str:
        if source is not None and source in self.by_source:
            return self.by_source[source]
        candidate = _safe(preferred)
        if candidate.lower() in self.used:
            candidate = f"{prefix}-{candidate}"
        base, number = candidate, 2
        while candidate.lower() in self.used:  # FAT names compare without case
            candidate = f"{base}-{number}"
            number += 1
        self.used.add(candidate.lower())
        if source is not None:
            self.by_source[source] = candidate
        return candidate


def _source(payload: Payload) -> Path | None:
    if isinstance(payload, Region) and payload.offset == 0:
        return payload.path.resolve()
    return None


def kernel_payload(system: System, domain: Domain) -> Region:
    """The domain's kernel, refused where Xen cannot load it."""
    info = kernel_info(system, domain)
    key = f'[[domain]] "{domain.name}" kernel'
    if info.kind.endswith("multiboot2 elf"):
        raise HlimageError(
            f"{key}: a multiboot2 image (Xen's own xen.gz?), not a Linux kernel; give the "
            "domain's kernel (vmlinuz, Image)",
            where=domain.kernel,
        )
    if info.kind == "efi-zboot":
        raise HlimageError(
            f"{key}: an EFI zboot kernel (vmlinuz.efi), which Xen cannot load; give the plain "
            "Image or Image.gz",
            where=domain.kernel,
        )
    if info.arch != system.arch.value:
        raise HlimageError(
            f"{key}: {article(info.arch or 'unknown')} kernel ({info.describe()}), but [image] "
            f'arch is "{system.arch.value}"; give {article(system.arch.value)} kernel',
            where=domain.kernel,
        )
    return Region(domain.kernel)


def domain_modules(system: System, domain: Domain, namer: _Namer | None = None) -> list[Module]:
    """A domain's kernel, initrd and passthrough device tree, probed (errors name the key)."""
    namer = namer or _Namer()
    prefix = _safe(domain.name)
    kernel = kernel_payload(system, domain)
    modules = [
        Module(
            namer.name(domain.kernel.name, prefix, _source(kernel)),
            kernel,
            Role.KERNEL,
            domain,
            domain.cmdline,
        )
    ]
    ramdisk = initrd_payload(system, domain)
    if ramdisk is not None:
        if len(domain.initrd) == 1 and domain.initrd_compression is None:
            preferred = domain.initrd[0].name
        else:
            preferred = f"{prefix}-initrd" + (".lz4" if domain.initrd_compression else ".img")
        modules.append(
            Module(namer.name(preferred, prefix, _source(ramdisk)), ramdisk, Role.RAMDISK, domain)
        )
    if domain.passthrough_dtb is not None:
        payload = Region(domain.passthrough_dtb)
        if payload.head(4) != FDT_MAGIC:
            # Xen would only find out at boot, and panic.
            raise HlimageError(
                f'[[domain]] "{domain.name}" passthrough_dtb: not a device tree blob (no FDT '
                "magic); give the partial device tree compiled with dtc -O dtb",
                where=domain.passthrough_dtb,
            )
        name = namer.name(domain.passthrough_dtb.name, prefix, _source(payload))
        modules.append(Module(name, payload, Role.PASSTHROUGH_DTB, domain))
    return modules


def xen_modules(system: System, namer: _Namer | None = None) -> list[Module]:
    """XSM policy and microcode, which Xen claims itself (by magic, or `ucode=`)."""
    namer = namer or _Namer()
    modules = []
    for role, path in ((Role.XSM, system.xen.xsm), (Role.UCODE, system.xen.ucode)):
        if path is not None:
            payload = Region(path)
            modules.append(Module(namer.name(path.name, "xen", _source(payload)), payload, role))
    return modules


def all_modules(system: System, reserved: Iterable[str] = ()) -> list[Module]:
    """Every domain's modules in description order, then Xen's own; no module is given a
    name in `reserved` (the output's own files)."""
    namer = _Namer(reserved)
    modules = []
    for domain in system.domains:
        modules += domain_modules(system, domain, namer)
    return modules + xen_modules(system, namer)


def find(modules: list[Module], role: Role, domain: Domain | None = None) -> Module | None:
    for module in modules:
        if module.role == role and module.domain == domain:
            return module
    return None
