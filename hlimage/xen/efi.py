"""What Xen's EFI loader reads: xen.cfg, the unified image's sections and their layout."""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import sbat
from hlimage.formats.payload import BytesPayload, Region
from hlimage.formats.xencfg import XenConfig, value_problem
from hlimage.model import Arch, Domain, System
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing.messages import warn
from hlimage.xen import policy


@dataclass(frozen=True)
class ModuleFiles:
    """File names the cfg refers to (relative to xen.efi's directory), or None where the
    content is embedded as a PE section or absent."""

    kernel: str = "kernel"
    ramdisk: str | None = None
    xsm: str | None = None
    ucode: str | None = None
    dtb: str | None = None


def _checked(system: System, key: str, value: str) -> str:
    problem = value_problem(value)
    if problem:
        raise HlimageError(
            f"{key}: {problem}; xen.cfg cannot carry it, change the text", where=system.source
        )
    return value


def section_name(system: System) -> str:
    return system.name


def xen_options(system: System, dom0: Domain | None) -> str:
    parts = [system.xen.cmdline] if system.xen.cmdline else []
    if dom0 is not None:
        parts += policy.dom0_xen_options(system, dom0)
    return " ".join(parts)


def xen_config(system: System, dom0: Domain | None, files: ModuleFiles) -> XenConfig:
    """The config for a boot where dom0 (if any) comes through the cfg.

    The dom0 command line stays on the `kernel=` line even when the kernel is embedded: Xen
    reads it from there (boot.c), taking the first word as the file name."""
    section: dict[str, str] = {}
    options = xen_options(system, dom0)
    section["options"] = _checked(system, "[xen] cmdline", options)
    if dom0 is not None:
        kernel_line = files.kernel
        if dom0.cmdline:
            kernel_line += " " + _checked(
                system, f"{policy.domain_label(dom0)} cmdline", dom0.cmdline
            )
        section["kernel"] = kernel_line
        if files.ramdisk:
            section["ramdisk"] = files.ramdisk
    if files.xsm:
        section["xsm"] = files.xsm
    if files.ucode:
        section["ucode"] = files.ucode
    if files.dtb:
        section["dtb"] = files.dtb
    name = section_name(system)
    return XenConfig(default=name, sections={name: section})


# --- The unified image ------------------------------------------------------------------------

# Xen passes EFI modules to its x86 entry in page frames: a module's address must be 4 KiB
# aligned or its low bits are lost (docs/xen-boot-formats.md 4.3).
X86_MODULE_ALIGN = 0x1000
# Xen refuses to start unless the whole image ends below 4 GiB, loaded at a 2 MiB boundary.
X86_LOAD_LIMIT = 1 << 32
X86_MIN_LOAD_BASE = 2 << 20
# Payloads above this boot in QEMU; ~1 GiB does not (docs/qemu-boot.md): firmware loads the image
# above 4 GiB, or Xen runs out of boot memory moving the ramdisk.
LARGE_PAYLOAD = 256 << 20


@dataclass(frozen=True)
class UnifiedLayout:
    """How payload sections join xen.efi (docs/xen-boot-formats.md 4.4-4.5)."""

    in_place: bool
    """x86: sections are added to xen.efi itself. arm64: its hand-written header has no room
    for more section headers, so a new PE wraps the whole of it."""
    module_align: int = X86_MODULE_ALIGN
    load_limit: int | None = None
    """Where the loaded image must end (from `min_load_base`), if Xen has a limit."""
    min_load_base: int = 0


def unified_layout(arch: Arch) -> UnifiedLayout:
    if arch is Arch.X86_64:
        return UnifiedLayout(True, X86_MODULE_ALIGN, X86_LOAD_LIMIT, X86_MIN_LOAD_BASE)
    return UnifiedLayout(False)


def unified_sections(system: System, dom0: Domain) -> list[PlannedFile]:
    """The sections a unified image adds to xen.efi for a classic dom0, each input checked, in
    the order they are written."""
    from hlimage.payloads import initrd_payload
    from hlimage.xen.modules import kernel_payload

    kernel = kernel_payload(system, dom0)
    config = xen_config(system, dom0, ModuleFiles(kernel=dom0.kernel.name))
    plan = [PlannedFile(".config", BytesPayload(config.encode(), "xen.cfg"), Role.CONFIG)]
    if system.arch is Arch.ARM64:
        if system.xen.dtb is not None:
            plan.append(PlannedFile(".dtb", Region(system.xen.dtb), Role.DTB))
        else:
            warn(
                "[xen] dtb is not set: Xen will use the firmware's device tree; firmware that "
                "publishes only ACPI (EDK2 on QEMU's virt) leaves Xen without one and it hangs"
            )
    plan.append(PlannedFile(".kernel", kernel, Role.KERNEL, dom0, dom0.cmdline))
    ramdisk = initrd_payload(system, dom0)
    if ramdisk is not None:
        plan.append(PlannedFile(".ramdisk", ramdisk, Role.RAMDISK, dom0))
    if system.xen.xsm is not None:
        plan.append(PlannedFile(".xsm", Region(system.xen.xsm), Role.XSM))
    if system.xen.ucode is not None:
        plan.append(PlannedFile(".ucode", Region(system.xen.ucode), Role.UCODE))
    if system.xen.sbat is not None:
        # Last, so that adding it leaves every other section where it was.
        try:
            data = sbat.section_data(sbat.read(system.xen.sbat))
        except FormatError as error:
            raise HlimageError(f"[xen] sbat: {error}", where=system.xen.sbat) from None
        plan.append(PlannedFile(".sbat", BytesPayload(data, str(system.xen.sbat)), Role.SBAT))
    return plan


# --- The ESP ----------------------------------------------------------------------------------


def esp_config(
    system: System, dom0: Domain | None, modules: list[PlannedFile], dtb_name: str | None
) -> XenConfig:
    """The xen.cfg beside xen.efi on an ESP whose module files are `modules`."""
    from hlimage.xen.modules import find

    kernel = find(modules, Role.KERNEL, dom0) if dom0 else None
    ramdisk = find(modules, Role.RAMDISK, dom0) if dom0 else None
    xsm = find(modules, Role.XSM)
    ucode = find(modules, Role.UCODE)
    return xen_config(
        system,
        dom0,
        ModuleFiles(
            kernel=kernel.name if kernel else "kernel",
            ramdisk=ramdisk.name if ramdisk else None,
            xsm=xsm.name if xsm else None,
            ucode=ucode.name if ucode else None,
            dtb=dtb_name,
        ),
    )


# xen-devel fixed the EFI loader's file-system lookup for 4.22: before it, xen.efi loaded over
# the network stops at once ("Couldn't obtain the File System Protocol Interface": it asks for
# a file system before looking at its own sections, docs/qemu-boot.md). Booted on x86 only.
NETWORK_BOOT_ARCHES = (Arch.X86_64,)


def loads_unified_over_network(arch: Arch, version: tuple[int, int] | None) -> bool:
    return (
        arch in NETWORK_BOOT_ARCHES
        and version is not None
        and version >= policy.FIRST_RELEASE["unified over the network"]
    )
