"""One entry point for every output format: description in, output (and report) out."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from hlimage.errors import HlimageError
from hlimage.model import Arch, System
from hlimage.report import BuildReport

if TYPE_CHECKING:
    from hlimage.trust import SigningKey


def build(
    system: System,
    output_format: str,
    output: Path,
    *,
    replace: bool = False,
    size: int | None = None,
    signing: SigningKey | None = None,
    manifest: bool = True,
    prefix: str | None = None,
    grub_lib: Path | None = None,
) -> BuildReport:
    if size is not None and output_format != "disk":
        raise HlimageError(f"--size: only --format disk has a size; drop it for {output_format}")
    if prefix is not None and output_format != "grub":
        raise HlimageError(
            f"--prefix: only --format grub has a path prefix; drop it for {output_format}"
        )
    if grub_lib is not None and output_format not in ("grub-standalone", "pxe"):
        raise HlimageError(f"--grub-lib: only GRUB images use it; drop it for {output_format}")
    if output.name in ("", ".", ".."):
        # `-o .`: the directory by its own name, for the manifest beside it and the temporaries.
        output = Path(os.path.abspath(output))
    check_output(system, output)
    if signing is not None or manifest:
        # Signing wraps the format's own build; the manifest describes what that wrote.
        from hlimage import manifest as manifest_module
        from hlimage import trust

        def plain(system_: System, target: Path) -> BuildReport:
            return build(
                system_, output_format, target, replace=replace, size=size, manifest=False,
                prefix=prefix, grub_lib=grub_lib,
            )  # fmt: skip

        if signing is None:
            report = plain(system, output)
        else:
            report = trust.build_signed(system, output_format, output, signing, plain)
        if manifest:
            manifest_module.write(system, report)
        return report
    if output_format == "unified":
        from hlimage.outputs import unified

        return unified.build(system, output, replace=replace)
    if output_format == "esp":
        from hlimage.outputs import esp

        return esp.build(system, output)
    if output_format == "disk":
        from hlimage.outputs import disk

        return disk.build(system, output, size=size)
    if output_format == "grub":
        from hlimage.outputs import grub

        return grub.build_directory(system, output, prefix=prefix or "/")
    if output_format == "grub-standalone":
        from hlimage.outputs import grub

        return grub.build_standalone(system, output, lib=grub_lib)
    if output_format == "pxe":
        from hlimage.outputs import pxe

        return pxe.build(system, output, grub_lib=grub_lib)
    raise HlimageError(f"--format {output_format}: not implemented yet in this hlimage")


def inputs(system: System) -> list[tuple[str, Path]]:
    """Every file a build reads, with the key that names it."""
    named: list[tuple[str, Path | None]] = [("the description", system.source)]
    named += [(f"[xen] {key}", getattr(system.xen, key))
              for key in ("efi", "multiboot", "xsm", "ucode", "dtb", "sbat")]  # fmt: skip
    for domain in system.domains:
        label = f'[[domain]] "{domain.name}"'
        named.append((f"{label} kernel", domain.kernel))
        named += [(f"{label} initrd", path) for path in domain.initrd]
        named.append((f"{label} passthrough_dtb", domain.passthrough_dtb))
    return [(key, path) for key, path in named if path is not None]


def check_output(system: System, output: Path) -> None:
    """Refuse an output that is an input or holds one: replacing it whole would delete the
    inputs (an ESP built into the description's own directory, say)."""
    target = output.resolve()
    for key, path in inputs(system):
        source = path.resolve()
        if source == target:
            raise HlimageError(
                f"-o: is {key}, which the build reads; write the output elsewhere", where=output
            )
        if target in source.parents:
            raise HlimageError(
                f"-o: holds {key} ({path}), which replacing the directory would delete; write "
                "the output elsewhere",
                where=output,
            )


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
