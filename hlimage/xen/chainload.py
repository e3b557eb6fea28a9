"""What Xen's EFI loader needs when another EFI program starts it: systemd-boot or shim.

Load options (xen/common/efi/boot.c, get_argv, the same in 4.17 and 4.20): a loader that
passes a NUL-terminated UCS-2 string gives Xen "a plain command line, as usually passed by the
EFI shell". Xen takes its first word as the image's own name, a later word starting with `-`
or `/` as a loader option (`-cfg=FILE`, `-basevideo`, `-mapbs`), any other word as the
xen.cfg section to boot (the last one wins), and what follows a `--` word as options appended
to Xen's command line after the section's `options=`. The image name then leads Xen's command
line, and Xen's setup (cmdline_cook) strips that first word again. So options meant for Xen
cannot be passed the way a Linux kernel's are: a line `console=com1 dom0_mem=1G` would make
`console=com1` the image name and `dom0_mem=1G` the name of a section that does not exist,
and Xen would boot with no options from the cfg at all. systemd-boot 252 passes a Type #1
entry's `options` lines, or a Type #2 image's `.cmdline`, exactly so (boot.c, image_start:
`LoadOptions` the string, `LoadOptionsSize` its size with the NUL). hlimage therefore writes
`xen.efi SECTION`: the image name, then the section the cfg's `default=` names anyway, which
keeps Xen's reading the same when a user appends `-- OPTION` at the boot menu.

Xen reads no `.cmdline` section itself; the one hlimage writes is read by systemd-boot as the
options it passes, and under Secure Boot it also makes systemd-boot refuse to edit them at the
menu (Xen, unlike Linux's stub, would take edited options from a signed image).

shim (16.1, pe.c handle_image) loads the next stage itself instead of through the firmware:
it applies the base relocations from the file, but copies no section marked discardable, and
Xen's x86 `.reloc` is marked so. Xen reads that same table again from memory to move itself
(efi_arch_relocate_image, from __base_relocs_start): left zero, the walk reads past the table
and Xen stops right after its first line with "Unsupported relocation type" (seen under
Debian's shim 16.1 and Xen 4.17, the firmware then falling through to its setup UI). hlimage
clears the flag on `.reloc`, so that every loader maps it; firmware loaders map discardable
sections anyway, so nothing else changes. shim also refuses a next stage without a `.sbat`
section.
"""

from __future__ import annotations

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import bls, pe, sbat
from hlimage.formats.payload import BytesPayload
from hlimage.model import System
from hlimage.planned import PlannedFile, Role
from hlimage.xen import efi
from hlimage.xen.grub_entry import title
from hlimage.xen.probe import XenEfi

IMAGE_NAME = "xen.efi"
"""The first word of the load options: Xen's own name, which it strips again."""


def load_options(system: System) -> str:
    """What a loader passes Xen: its image name, then the xen.cfg section to boot."""
    return f"{IMAGE_NAME} {efi.section_name(system)}"


def os_release(system: System, xen: XenEfi) -> bytes:
    """The `.osrel` systemd-boot lists a unified image by (PRETTY_NAME is the menu title)."""
    fields = [("NAME", "Xen"), ("ID", "xen"), ("PRETTY_NAME", title(system))]
    if xen.version is not None:
        fields.append(("VERSION_ID", xen.version_text))
    fields.append(("IMAGE_ID", system.name))
    try:
        return bls.os_release(fields)
    except FormatError as error:
        raise HlimageError(
            f"[image] title: {error}; change the title", where=system.source
        ) from None


def systemd_boot_sections(system: System, xen: XenEfi) -> list[PlannedFile]:
    """`.osrel`, without which systemd-boot skips a PE file in EFI/Linux/, and `.cmdline`."""
    options = load_options(system).encode("ascii")
    return [
        PlannedFile(".osrel", BytesPayload(os_release(system, xen), "os-release"), Role.OS_RELEASE),
        PlannedFile(".cmdline", BytesPayload(options, "load options"), Role.LOAD_OPTIONS),
    ]


def loaded_characteristics(section: pe.Section) -> int:
    """A section's flags with `.reloc` no longer discardable (see the module's text)."""
    if section.name == ".reloc":
        return section.characteristics & ~pe.SCN_MEM_DISCARDABLE
    return section.characteristics


def sbat_section(system: System, xen: XenEfi, *, why: str) -> PlannedFile | None:
    """The `.sbat` for an image shim starts: from [xen] sbat, or None where xen.efi has one
    (and [xen] sbat is not set); an error where neither has it."""
    if system.xen.sbat is None:
        if xen.image.section(".sbat") is not None:
            return None
        raise HlimageError(
            f"[xen] sbat: needed {why}: shim refuses to start an image without a .sbat "
            'section and this xen.efi has none; add sbat = "sbat.csv" (uefi/sbat.csv is a '
            "template)",
            where=system.source,
        )
    try:
        data = sbat.section_data(sbat.read(system.xen.sbat))
    except FormatError as error:
        raise HlimageError(f"[xen] sbat: {error}", where=system.xen.sbat) from None
    return PlannedFile(".sbat", BytesPayload(data, str(system.xen.sbat)), Role.SBAT)
