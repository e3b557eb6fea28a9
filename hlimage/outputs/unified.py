"""`--format unified`: one PE file, Xen with its config and modules as sections.

x86: sections are added to xen.efi itself. arm64: xen.efi's hand-written header has no room for
more section headers, so a new PE wraps the whole of it (docs/xen-boot-formats.md 4.5).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pefile

from hlimage.atomic import atomic_file
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe, sbat
from hlimage.messages import note, warn
from hlimage.model import Arch, System
from hlimage.payloads import article, initrd_payload, kernel_payload
from hlimage.report import Artifact, BuildReport
from hlimage.streams import BytesPayload, Payload, Region
from hlimage.xen import efi, policy
from hlimage.xen.probe import XenEfi, probe_efi

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
class SectionPlan:
    name: str
    role: str
    payload: Payload


def _require_efi(system: System) -> Path:
    if system.xen.efi is None:
        raise HlimageError(
            '[xen] efi: needed for this format; add efi = "path/to/xen.efi"', where=system.source
        )
    return system.xen.efi


def probe_xen_efi(system: System) -> XenEfi:
    xen = probe_efi(_require_efi(system))
    if xen.arch != system.arch.value:
        raise HlimageError(
            f"[xen] efi: {article(xen.arch)} Xen, but [image] arch is "
            f'"{system.arch.value}"; give the {system.arch.value} xen.efi',
            where=system.xen.efi,
        )
    return xen


def build(system: System, output: Path, *, replace: bool = False) -> BuildReport:
    xen, plan = sections(system)
    return write(system, xen, output, plan, replace=replace)


def check(system: System) -> None:
    """Everything build does before it writes."""
    sections(system)


def sections(system: System) -> tuple[XenEfi, list[SectionPlan]]:
    """The probed Xen image and the sections to add, each input checked."""
    policy.check_domains(system)
    xen = probe_xen_efi(system)
    if len(system.domains) != 1 or not system.domains[0].is_classic_dom0:
        if system.arch is Arch.X86_64:
            formats = "--format grub or grub-standalone (hyperlaunch)"
        else:
            formats = "--format esp or disk (domUs are loaded from files beside xen.efi)"
        raise HlimageError(
            f"[[domain]]: a unified image carries one domain, dom0, the description has "
            f"{len(system.domains)} domain(s) ({', '.join(d.name for d in system.domains)}); "
            f"use {formats}",
            where=system.source,
        )
    dom0 = system.domains[0]
    kernel = kernel_payload(system, dom0)
    config = efi.xen_config(system, dom0, efi.ModuleFiles(kernel=dom0.kernel.name))
    plan = [SectionPlan(".config", "config", BytesPayload(config.encode(), "xen.cfg"))]
    if system.arch is Arch.ARM64:
        if system.xen.dtb is not None:
            plan.append(SectionPlan(".dtb", "dtb", Region(system.xen.dtb)))
        else:
            warn(
                "[xen] dtb is not set: Xen will use the firmware's device tree; firmware that "
                "publishes only ACPI (EDK2 on QEMU's virt) leaves Xen without one and it hangs"
            )
    plan.append(SectionPlan(".kernel", "kernel", kernel))
    ramdisk = initrd_payload(system, dom0)
    if ramdisk is not None:
        plan.append(SectionPlan(".ramdisk", "ramdisk", ramdisk))
    if system.xen.xsm is not None:
        plan.append(SectionPlan(".xsm", "xsm", Region(system.xen.xsm)))
    if system.xen.ucode is not None:
        plan.append(SectionPlan(".ucode", "ucode", Region(system.xen.ucode)))
    if system.xen.sbat is not None:
        # Last, so that adding it leaves every other section where it was.
        try:
            data = sbat.section_data(sbat.read(system.xen.sbat))
        except FormatError as error:
            raise HlimageError(f"[xen] sbat: {error}", where=system.xen.sbat) from None
        plan.append(SectionPlan(".sbat", "sbat", BytesPayload(data, str(system.xen.sbat))))
    return xen, plan


def write(
    system: System, xen: XenEfi, output: Path, plan: list[SectionPlan], *, replace: bool
) -> BuildReport:
    names = {section.name for section in plan}
    present = [s.name for s in xen.image.sections if s.name in names]
    if present and (not replace or system.arch is Arch.ARM64):
        fix = "pass --replace to swap them" if system.arch is Arch.X86_64 else "give the plain one"
        raise HlimageError(
            f"[xen] efi: already has {', '.join(present)}; give a plain xen.efi, or {fix}",
            where=xen.path,
        )
    new = [pe.NewSection(s.name, s.payload, alignment=X86_MODULE_ALIGN) for s in plan]
    with xen.path.open("rb") as source:
        try:
            if system.arch is Arch.X86_64:

                def drop(section: pe.Section) -> bool:
                    return section.is_debug or (replace and section.name in names)

                writer = pe.PeWriter(source, xen.image, drop=drop)
                # Known sizes only: an estimate (of an initrd still to be recompressed) could
                # refuse an image that fits; the check after writing sees the real end.
                known = [(s.payload.exact_size or 0, X86_MODULE_ALIGN) for s in plan]
                _check_below_4g(system, writer.plan_rvas(known)[-1] + known[-1][0])
                _warn_before_writing(xen, plan)
                with atomic_file(output) as out:
                    result = writer.write(new, out)
                    _check_below_4g(system, result.size_of_image)
                    out.flush()
                    _self_check(out.name, result)
            else:
                _warn_before_writing(xen, plan)
                with atomic_file(output) as out:
                    result = pe.wrap_image(source, xen.image, new, out)
                    out.flush()
                    _self_check(out.name, result)
        except FormatError as error:
            raise HlimageError(f"[xen] efi: {error}", where=xen.path) from None
    report = BuildReport("unified", output)
    by_name = {s.name: s for s in result.sections}
    for section in plan:
        written = by_name[section.name]
        assert written.sha256 is not None
        report.artifacts.append(
            Artifact(
                section.name, section.role, written.virtual_size, written.sha256,
                section.payload.label,
            )
        )  # fmt: skip
    return report


def _warn_before_writing(xen: XenEfi, plan: list[SectionPlan]) -> None:
    """Once the build is known to go ahead, so that a refused build prints only its error."""
    if xen.signed:
        warn(
            f"{xen.path}: its Authenticode signature is removed (adding sections breaks it); "
            "sign the output afterwards"
        )
    if xen.debug_sections:
        note(f"dropping {len(xen.debug_sections)} debug sections of {xen.path.name}")
    payload_total = sum(section.payload.size_bound() for section in plan)
    if payload_total > LARGE_PAYLOAD:
        warn(
            f"payloads total {payload_total >> 20} MiB: firmware may load an image this large "
            "above 4 GiB, where Xen refuses to start; 256 MiB is known to boot"
        )


def _check_below_4g(system: System, image_end: int) -> None:
    if X86_MIN_LOAD_BASE + image_end > X86_LOAD_LIMIT:
        raise HlimageError(
            f"the image would span {image_end >> 20} MiB; Xen must end below 4 GiB when loaded "
            '("Xen must be loaded below 4Gb"), so make the payloads smaller (compress the '
            "initrd) or use --format esp",
            where=system.source,
        )


def _self_check(path: str, result: pe.WriteResult) -> None:
    """An independent parser must see the layout the writer meant (cheap: headers only)."""
    image = pefile.PE(path, fast_load=True)
    try:
        seen = [
            (s.Name.rstrip(b"\0").decode("ascii", "replace"), s.VirtualAddress, s.Misc_VirtualSize)
            for s in image.sections
        ]
        meant = [(s.name[:8], s.virtual_address, s.virtual_size) for s in result.sections]
        if seen != meant or image.OPTIONAL_HEADER.SizeOfImage != result.size_of_image:
            raise AssertionError(f"PE writer bug: pefile reads {seen}, meant {meant}")
    finally:
        image.close()
