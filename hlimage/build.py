"""One entry point for every output format: description in, output (and report) out."""

from __future__ import annotations

from pathlib import Path

from hlimage.errors import HlimageError
from hlimage.model import System
from hlimage.report import BuildReport


def build(
    system: System, output_format: str, output: Path, *, replace: bool = False
) -> BuildReport:
    if output_format == "unified":
        from hlimage.outputs import unified

        return unified.build(system, output, replace=replace)
    raise HlimageError(f"--format {output_format}: not implemented yet in this hlimage")


def efi_config_text(system: System, *, embedded: bool) -> str:
    from hlimage.xen import efi, policy

    policy.check_domains(system)
    dom0 = system.hardware_domain
    if embedded:
        files = efi.ModuleFiles(kernel=dom0.kernel.name if dom0 else "kernel")
    else:
        files = efi.ModuleFiles(
            kernel=dom0.kernel.name if dom0 else "kernel",
            ramdisk="initrd" if dom0 and dom0.initrd else None,
            xsm=system.xen.xsm.name if system.xen.xsm else None,
            ucode=system.xen.ucode.name if system.xen.ucode else None,
        )
    return efi.xen_config(system, dom0, files).render()
