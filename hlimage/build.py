"""One entry point for every output format: description in, output (and report) out."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from hlimage.errors import HlimageError
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.outputs.registry import BuildOptions
from hlimage.report import BuildReport

if TYPE_CHECKING:
    from hlimage.secureboot.trust import SigningKey


def build(
    system: System,
    output_format: str,
    output: Path,
    options: BuildOptions | None = None,
    *,
    signing: SigningKey | None = None,
    manifest: bool = True,
) -> BuildReport:
    options = dataclasses.replace(options or BuildOptions(), digests=manifest)
    chosen = registry.get(output_format)
    registry.refuse_options(chosen, options)
    registry.refuse_loader(chosen, options)
    chosen = registry.with_options(chosen, options)
    registry.refuse_arch(chosen, system)
    if output.name in ("", ".", ".."):
        # `-o .`: the directory by its own name, for the manifest beside it and the temporaries.
        output = Path(os.path.abspath(output))
    check_output(system, output)
    if signing is None:
        report = chosen.build(system, output, options)
    else:
        # Signing wraps the format's own build.
        from hlimage.secureboot import trust

        def plain(system_: System, target: Path, key: SigningKey | None = None) -> BuildReport:
            # A key is passed only to a format that signs its own output (Signing.SELF).
            given = options if key is None else replace(options, signing=key)
            return chosen.build(system_, target, given)

        report = trust.build_signed(system, chosen, output, signing, plain)
    if manifest:
        from hlimage import manifest as manifest_module

        manifest_module.write(system, report)
    return report


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

        policy.validate_domains(system)
        dom0 = system.hardware_domain
        files = efi.ModuleFiles(kernel=dom0.kernel.name if dom0 else "kernel")
        return efi.xen_config(system, dom0, files).render()
    from hlimage.outputs import esp

    return esp.config_text(system)


def lcm(system: System) -> bytes:
    """The device tree that tells Xen which domains to build: the hyperlaunch LCM on x86,
    the host device tree with dom0less domain nodes on arm64."""
    from hlimage.xen import binding, policy

    policy.validate_domains(system)
    return binding.of(system).launch_tree(system)
