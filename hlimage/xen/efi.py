"""The xen.cfg that Xen's EFI loader reads, from a description."""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.errors import HlimageError
from hlimage.formats.xencfg import XenConfig, value_problem
from hlimage.model import Domain, System
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
