"""One entry point for every output format: description in, output (and report) out."""

from __future__ import annotations

from pathlib import Path

from hlimage.errors import HlimageError
from hlimage.model import Arch, System
from hlimage.report import BuildReport


def build(
    system: System, output_format: str, output: Path, *, replace: bool = False
) -> BuildReport:
    if output_format == "unified":
        from hlimage.outputs import unified

        return unified.build(system, output, replace=replace)
    if output_format == "esp":
        from hlimage.outputs import esp

        return esp.build(system, output)
    raise HlimageError(f"--format {output_format}: not implemented yet in this hlimage")


def efi_config_text(system: System, *, embedded: bool) -> str:
    """The xen.cfg of the unified image (embedded) or of the ESP."""
    if embedded:
        from hlimage.xen import efi, policy

        policy.check_domains(system)
        dom0 = system.hardware_domain
        files = efi.ModuleFiles(kernel=dom0.kernel.name if dom0 else "kernel")
        return efi.xen_config(system, dom0, files).render()
    from hlimage.outputs import esp

    files_ = esp.plan(system)
    config = next(f for f in files_ if f.role == "config")
    return b"".join(config.payload.chunks()).decode("ascii")


def lcm(system: System) -> bytes:
    """The device tree that tells Xen which domains to build: the hyperlaunch LCM on x86,
    the host device tree with dom0less domain nodes on arm64."""
    from hlimage.messages import warn
    from hlimage.xen import dom0less, hyperlaunch, policy
    from hlimage.xen import modules as boot_modules
    from hlimage.xen.probe import probe_efi, probe_multiboot

    policy.check_domains(system)
    if system.arch is Arch.X86_64:
        chain = hyperlaunch.module_order(system)
        tree = hyperlaunch.lcm_tree(system, chain)
        if system.xen.multiboot is not None:
            xen = probe_multiboot(system.xen.multiboot)
            if not xen.has_hyperlaunch:
                warn(
                    f"{system.xen.multiboot}: this Xen ({xen.version_text}) has no hyperlaunch "
                    "parser and cannot boot this LCM; it would take it as dom0's kernel"
                )
        return tree.build()
    version = probe_efi(system.xen.efi).version if system.xen.efi is not None else None
    tree = dom0less.host_tree(system)
    dom0less.add_domains(system, tree, boot_modules.all_modules(system), version)
    return tree.build()
