"""`--format unified`: one PE file, Xen with its config and modules as sections.

x86: sections are added to xen.efi itself. arm64: xen.efi's hand-written header has no room for
more section headers, so a new PE wraps the whole of it (docs/xen-boot-formats.md 4.5).
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import BinaryIO

import pefile

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.planned import PlannedFile
from hlimage.plumbing import streams
from hlimage.plumbing.atomic import atomic_file
from hlimage.plumbing.messages import note, warn
from hlimage.report import Artifact, BuildReport, PeDigests
from hlimage.xen import binding, chainload, efi, policy
from hlimage.xen.probe import XenEfi, probe_system_efi


def build(
    system: System,
    output: Path,
    *,
    replace: bool = False,
    digests: bool = True,
    systemd_boot: bool = False,
) -> BuildReport:
    """`systemd_boot`: with the `.osrel` and `.cmdline` systemd-boot lists the image by when
    it lies in EFI/Linux/ (a Type #2 entry)."""
    xen, plan = sections(system, systemd_boot=systemd_boot)
    return write(system, xen, output, plan, replace=replace, digests=digests)


def plan(system: System) -> None:
    """Everything build does before it writes."""
    sections(system)


def sections(system: System, *, systemd_boot: bool = False) -> tuple[XenEfi, list[PlannedFile]]:
    """The probed Xen image and the sections to add, each input checked."""
    policy.validate_domains(system)
    xen = probe_system_efi(system)
    planned = binding.of(system).unified_sections(system)
    if systemd_boot:
        # Before .sbat, which stays last.
        at = next((i for i, s in enumerate(planned) if s.name == ".sbat"), len(planned))
        planned[at:at] = chainload.systemd_boot_sections(system, xen)
    return xen, planned


def write(
    system: System,
    xen: XenEfi,
    output: Path,
    plan: list[PlannedFile],
    *,
    replace: bool,
    digests: bool = True,
) -> BuildReport:
    """Write the image. With `digests`, every digest the manifest prints (each section's
    payload, the image's sha256 and Authenticode digest) is computed on the one pass that
    writes it: the headers go first then, so a payload whose size is known only once produced
    is spooled first."""
    layout = efi.unified_layout(system.arch)
    names = {section.name for section in plan}
    present = [s.name for s in xen.image.sections if s.name in names]
    if present and (not replace or not layout.in_place):
        fix = "pass --replace to swap them" if layout.in_place else "give the plain one"
        raise HlimageError(
            f"[xen] efi: already has {', '.join(present)}; give a plain xen.efi, or {fix}",
            where=xen.path,
        )
    with contextlib.ExitStack() as stack:
        payloads = [s.payload for s in plan]
        if digests:
            payloads = stack.enter_context(streams.sized(payloads, output))
        tracked = [streams.Tracked(payload, digest=digests) for payload in payloads]
        new = [
            pe.NewSection(s.name, payload, alignment=layout.module_align)
            for s, payload in zip(plan, tracked, strict=True)
        ]
        with xen.path.open("rb") as source:
            try:
                written, result = _write_image(
                    system, xen, source, output, new, layout, names, digests=digests
                )
            except FormatError as error:
                raise HlimageError(f"[xen] efi: {error}", where=xen.path) from None
    report = BuildReport("unified", output)
    for section, copied in zip(plan, tracked, strict=True):
        assert copied.size is not None
        report.artifacts.append(
            Artifact(
                section.name, section.role.value, copied.size, copied.sha256,
                section.payload.label,
            )
        )  # fmt: skip
    if "sha256" in written and "authenticode_sha256" in written:
        report.pe_images[output.name] = PeDigests(
            output.name, result.file_size, written["sha256"], written["authenticode_sha256"]
        )
    return report


def _write_image(
    system: System,
    xen: XenEfi,
    source: BinaryIO,
    output: Path,
    new: list[pe.NewSection],
    layout: efi.UnifiedLayout,
    names: set[str],
    *,
    digests: bool,
) -> tuple[dict[str, str], pe.WriteResult]:
    """`names`: the sections `new` adds, which replace any of the same name in xen.efi."""
    with atomic_file(output) as raw:
        out = streams.Watched(raw, whole=digests)

        def before_data(headers: bytes, file_size: int) -> None:
            # Here, not at the top: authenticode brings in cryptography (0.1 s), which a build
            # that computes no digests (--no-manifest) need not pay.
            from hlimage.formats import authenticode

            image = pe.parse_headers(headers, file_size)
            out.add_ranged("authenticode_sha256", authenticode.hash_layout(image).all_ranges)

        hook = before_data if digests else None
        try:
            if layout.in_place:

                def drop(section: pe.Section) -> bool:
                    return section.is_debug or section.name in names

                writer = pe.PeWriter(
                    source, xen.image, drop=drop,
                    characteristics=chainload.loaded_characteristics,
                )  # fmt: skip
                # Known sizes only: an estimate (of an initrd still to be recompressed) could
                # refuse an image that fits; the check after writing sees the real end.
                known = [(s.payload.exact_size or 0, layout.module_align) for s in new]
                _check_load_limit(system, layout, writer.plan_rvas(known)[-1] + known[-1][0])
                _warn_before_writing(xen, new)
                result = writer.write(new, out.as_binary(), before_data=hook)
                _check_load_limit(system, layout, result.size_of_image)
            else:
                _warn_before_writing(xen, new)
                result = pe.wrap_image(source, xen.image, new, out.as_binary(), before_data=hook)
            written = out.digests() if digests else {}
        finally:
            out.abandon()
        out.flush()
        _self_check(raw.name, result)
    return written, result


def _warn_before_writing(xen: XenEfi, plan: list[pe.NewSection]) -> None:
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
    return build(
        system, output, replace=options.replace, digests=options.digests,
        systemd_boot=options.loader in registry.SYSTEMD_BOOT_LOADERS,
    )  # fmt: skip


registry.register(
    registry.OutputFormat(
        name="unified",
        summary="one PE file: Xen with dom0's kernel, initrd and xen.cfg inside",
        writes=registry.Writes.FILE,
        plan=plan,
        build=_build,
        example="xen-unified.efi",
        options=frozenset({"replace", "loader"}),
        loaders=registry.SYSTEMD_BOOT_LOADERS | {"uefi"},
        signing=registry.Signing.OUTPUT,
        pe_images=registry.PeImages.OUTPUT,
    )
)
