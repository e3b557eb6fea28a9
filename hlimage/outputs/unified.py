"""`--format unified`: one PE file, Xen with its config and modules as sections."""

from __future__ import annotations

from pathlib import Path

import pefile

from hlimage.atomic import atomic_file
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe
from hlimage.messages import note, warn
from hlimage.model import Arch, System
from hlimage.payloads import initrd_payload, kernel_payload
from hlimage.report import Artifact, BuildReport
from hlimage.streams import BytesPayload, Payload, Region
from hlimage.xen import efi, policy
from hlimage.xen.probe import XenEfi, probe_efi

# Xen passes EFI modules to its x86 entry in page frames: a module's address must be 4 KiB
# aligned or its low bits are lost (xen-boot-formats.md 4.3).
X86_MODULE_ALIGN = 0x1000
# Xen refuses to start unless the whole image ends below 4 GiB, loaded at a 2 MiB boundary.
X86_LOAD_LIMIT = 1 << 32
X86_MIN_LOAD_BASE = 2 << 20
# Payloads above this boot in QEMU; ~1 GiB does not (qemu-boot.md): firmware loads the image
# above 4 GiB, or Xen runs out of boot memory moving the ramdisk.
LARGE_PAYLOAD = 256 << 20


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
            f'[xen] efi: a {xen.arch} Xen, but [image] arch is "{system.arch.value}"; give the '
            f"{system.arch.value} xen.efi",
            where=system.xen.efi,
        )
    return xen


def build(system: System, output: Path, *, replace: bool = False) -> BuildReport:
    policy.check_domains(system)
    xen = probe_xen_efi(system)
    if system.arch is Arch.ARM64:
        raise HlimageError(
            "--format unified for arm64 is not built yet; use --format esp", where=system.source
        )
    if len(system.domains) != 1:
        raise HlimageError(
            f"[[domain]]: an x86 unified image carries one domain (dom0), the description has "
            f"{len(system.domains)}; use --format grub or grub-standalone (hyperlaunch) for "
            "several domains",
            where=system.source,
        )
    dom0 = system.domains[0]
    sections: list[tuple[str, str, Payload, str]] = []  # (section, role, payload, key)
    kernel = kernel_payload(system, dom0)
    config = efi.xen_config(system, dom0, efi.ModuleFiles(kernel=dom0.kernel.name))
    sections.append((".config", "config", BytesPayload(config.encode(), "xen.cfg"), "xen.cfg"))
    sections.append((".kernel", "kernel", kernel, "kernel"))
    ramdisk = initrd_payload(system, dom0)
    if ramdisk is not None:
        sections.append((".ramdisk", "ramdisk", ramdisk, "initrd"))
    if system.xen.xsm is not None:
        sections.append((".xsm", "xsm", Region(system.xen.xsm), "[xen] xsm"))
    if system.xen.ucode is not None:
        sections.append((".ucode", "ucode", Region(system.xen.ucode), "[xen] ucode"))
    return write(system, xen, output, sections, replace=replace, alignment=X86_MODULE_ALIGN)


def write(
    system: System,
    xen: XenEfi,
    output: Path,
    sections: list[tuple[str, str, Payload, str]],
    *,
    replace: bool,
    alignment: int,
) -> BuildReport:
    names = {name for name, _, _, _ in sections}
    present = [name for name in xen.payload_sections if name in names]
    if present and not replace:
        raise HlimageError(
            f"[xen] efi: already has {', '.join(present)}; give a plain xen.efi, or pass "
            "--replace to swap them",
            where=xen.path,
        )
    if xen.signed:
        warn(
            f"{xen.path}: its Authenticode signature is removed (adding sections breaks it); "
            "sign the output afterwards"
        )
    if xen.debug_sections:
        note(f"dropping {len(xen.debug_sections)} debug sections of {xen.path.name}")

    def drop(section: pe.Section) -> bool:
        return section.is_debug or (replace and section.name in names)

    payload_total = sum(payload.size_bound() for _, _, payload, _ in sections)
    if payload_total > LARGE_PAYLOAD:
        warn(
            f"payloads total {payload_total >> 20} MiB: firmware may load an image this large "
            "above 4 GiB, where Xen refuses to start; 256 MiB is known to boot"
        )
    with xen.path.open("rb") as source:
        writer = pe.PeWriter(source, xen.image, drop=drop)
        rvas = writer.plan_rvas(
            [(payload.size_bound(), alignment) for _, _, payload, _ in sections]
        )
        if system.arch is Arch.X86_64:
            _check_below_4g(system, rvas[-1] + sections[-1][2].size_bound(), xen)
        try:
            with atomic_file(output) as out:
                result = writer.write(
                    [
                        pe.NewSection(name, payload, alignment=alignment)
                        for name, _, payload, _ in sections
                    ],
                    out,
                )
                if system.arch is Arch.X86_64:
                    _check_below_4g(system, result.size_of_image, xen)
                out.flush()
                _self_check(out.name, result)
        except FormatError as error:
            raise HlimageError(f"[xen] efi: {error}", where=xen.path) from None
    report = BuildReport("unified", output)
    by_name = {s.name: s for s in result.sections}
    for name, role, payload, _ in sections:
        written = by_name[name]
        assert written.sha256 is not None
        report.artifacts.append(
            Artifact(name, role, written.virtual_size, written.sha256, payload.label)
        )
    return report


def _check_below_4g(system: System, image_end: int, xen: XenEfi) -> None:
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
