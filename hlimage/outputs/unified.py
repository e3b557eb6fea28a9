"""`--format unified`: one PE file, Xen with its config and modules as sections.

x86: sections are added to xen.efi itself. arm64: xen.efi's hand-written header has no room for
more section headers, so a new PE wraps the whole of it (docs/xen-boot-formats.md 4.5).
"""

from __future__ import annotations

from pathlib import Path

import pefile

from hlimage.atomic import atomic_file
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe
from hlimage.messages import note, warn
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.planned import PlannedFile
from hlimage.report import Artifact, BuildReport
from hlimage.xen import binding, efi, policy
from hlimage.xen.probe import XenEfi, probe_system_efi


def build(system: System, output: Path, *, replace: bool = False) -> BuildReport:
    xen, plan = sections(system)
    return write(system, xen, output, plan, replace=replace)


def plan(system: System) -> None:
    """Everything build does before it writes."""
    sections(system)


def sections(system: System) -> tuple[XenEfi, list[PlannedFile]]:
    """The probed Xen image and the sections to add, each input checked."""
    policy.validate_domains(system)
    xen = probe_system_efi(system)
    return xen, binding.of(system).unified_sections(system)


def write(
    system: System, xen: XenEfi, output: Path, plan: list[PlannedFile], *, replace: bool
) -> BuildReport:
    layout = efi.unified_layout(system.arch)
    names = {section.name for section in plan}
    present = [s.name for s in xen.image.sections if s.name in names]
    if present and (not replace or not layout.in_place):
        fix = "pass --replace to swap them" if layout.in_place else "give the plain one"
        raise HlimageError(
            f"[xen] efi: already has {', '.join(present)}; give a plain xen.efi, or {fix}",
            where=xen.path,
        )
    new = [pe.NewSection(s.name, s.payload, alignment=layout.module_align) for s in plan]
    with xen.path.open("rb") as source:
        try:
            if layout.in_place:

                def drop(section: pe.Section) -> bool:
                    return section.is_debug or (replace and section.name in names)

                writer = pe.PeWriter(source, xen.image, drop=drop)
                # Known sizes only: an estimate (of an initrd still to be recompressed) could
                # refuse an image that fits; the check after writing sees the real end.
                known = [(s.payload.exact_size or 0, layout.module_align) for s in plan]
                _check_load_limit(system, layout, writer.plan_rvas(known)[-1] + known[-1][0])
                _warn_before_writing(xen, plan)
                with atomic_file(output) as out:
                    result = writer.write(new, out)
                    _check_load_limit(system, layout, result.size_of_image)
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
                section.name, section.role.value, written.virtual_size, written.sha256,
                section.payload.label,
            )
        )  # fmt: skip
    return report


def _warn_before_writing(xen: XenEfi, plan: list[PlannedFile]) -> None:
    """Once the build is known to go ahead, so that a refused build prints only its error."""
    if xen.signed:
        warn(
            f"{xen.path}: its Authenticode signature is removed (adding sections breaks it); "
            "sign the output afterwards"
        )
    if xen.debug_sections:
        note(f"dropping {len(xen.debug_sections)} debug sections of {xen.path.name}")
    payload_total = sum(section.payload.size_bound() for section in plan)
    if payload_total > efi.LARGE_PAYLOAD:
        warn(
            f"payloads total {payload_total >> 20} MiB: firmware may load an image this large "
            "above 4 GiB, where Xen refuses to start; 256 MiB is known to boot"
        )


def _check_load_limit(system: System, layout: efi.UnifiedLayout, image_end: int) -> None:
    if layout.load_limit is not None and layout.min_load_base + image_end > layout.load_limit:
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


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, replace=options.replace)


registry.register(
    registry.OutputFormat(
        name="unified",
        summary="one PE file: Xen with dom0's kernel, initrd and xen.cfg inside",
        writes=registry.Writes.FILE,
        plan=plan,
        build=_build,
        example="xen-unified.efi",
        options=frozenset({"replace"}),
        signing=registry.Signing.OUTPUT,
        pe_images=registry.PeImages.OUTPUT,
    )
)
