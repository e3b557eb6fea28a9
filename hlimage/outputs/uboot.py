"""`--format uboot`: a directory from which U-Boot boots Xen, on a disk or over TFTP.

Copy it to the first (FAT) partition of an SD card or USB stick, or serve it as a TFTP root:
U-Boot's default boot finds boot.scr.uimg or boot.scr there and runs it with no key pressed
(docs/uboot.md). The script loads Xen, the host device tree and every module at the addresses
of the memory plan (xen/uboot.py), then runs `booti`. The tree's /chosen is written here,
offline, so the script edits nothing at boot. Both script images are written by hlimage
itself (formats/uimage.py): no mkimage is needed.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import uimage
from hlimage.formats.payload import BytesPayload, Region
from hlimage.model import Arch, System
from hlimage.outputs import esp, registry
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing import streams
from hlimage.plumbing.atomic import atomic_directory
from hlimage.report import BuildReport
from hlimage.source_date import source_date_epoch
from hlimage.xen import modules as boot_modules
from hlimage.xen import policy, uboot
from hlimage.xen.modules import Module
from hlimage.xen.probe import probe_system_efi

XEN_FILE = "xen"
DTB_FILE = "xen.dtb"
SCRIPT_FILES = ("boot.scr.uimg", "boot.scr")
"""U-Boot's default boot tries boot.scr.uimg, then boot.scr, on a disk; over the network it
asks only for boot.scr.uimg."""
OWN_FILES = (*SCRIPT_FILES, XEN_FILE, DTB_FILE)


@dataclass(frozen=True)
class UBootBoot:
    memory_plan: uboot.MemoryPlan
    files: list[PlannedFile]
    """Every file of the tree, named from its root: the scripts, Xen, the DTB, the modules."""


def modules(system: System) -> list[Module]:
    """The modules, in the order they are loaded, named so as not to clash with the tree's
    own files."""
    policy.validate_domains(system)
    return boot_modules.all_modules(system, reserved=OWN_FILES)


def xen_version(system: System) -> tuple[int, int] | None:
    return probe_system_efi(system).version


def measured_sizes(found: Sequence[Module]) -> list[int]:
    """Each module's size; a payload made at build time (an initrd recompressed to LZ4) is
    made once and counted, not kept (what `hlimage check` does, writing nothing)."""
    sizes = []
    for module in found:
        exact = module.payload.exact_size
        if exact is None:
            exact = sum(len(chunk) for chunk in module.payload.chunks())
        sizes.append(exact)
    return sizes


@contextlib.contextmanager
def spooled(found: Sequence[Module], output: Path) -> Iterator[list[Module]]:
    """The modules with sizes known: one whose size is known only once it is made is written
    to a file beside the output first (the device tree's `reg` states every size)."""
    with streams.sized([module.payload for module in found], output) as payloads:
        yield [
            module if payload is module.payload else replace(module, payload=payload)
            for module, payload in zip(found, payloads, strict=True)
        ]


def script_image(text: str) -> bytes:
    try:
        return uimage.script_image(
            text.encode("ascii"), name=uboot.SCRIPT_NAME, timestamp=source_date_epoch()
        )
    except (FormatError, UnicodeEncodeError) as error:
        raise HlimageError(f"the U-Boot boot script: {error}") from None


def boot(system: System, found: Sequence[Module], sizes: Sequence[int] | None = None) -> UBootBoot:
    """The memory plan and every file of the tree for modules of known size (`sizes`, or
    their payloads' own)."""
    version = xen_version(system)
    assert system.xen.efi is not None  # probe_system_efi says so otherwise
    names = [module.name for module in found]
    # The script names the addresses, and the plan places Xen above the script: the script's
    # size is found by trying, and its slot only ever grows, so this ends.
    script_size = 0
    while True:
        memory_plan = uboot.plan(
            system, found, script_size=script_size, module_sizes=sizes, version=version
        )
        text = uboot.directory_script(system, memory_plan, XEN_FILE, DTB_FILE, names)
        image = script_image(text)
        if len(image) <= script_size:
            break
        script_size = len(image)
    dtb = uboot.host_tree(system, memory_plan, version).build()
    files = [
        *(PlannedFile(name, BytesPayload(image, name), Role.CONFIG) for name in SCRIPT_FILES),
        PlannedFile(XEN_FILE, Region(system.xen.efi), Role.XEN),
        PlannedFile(DTB_FILE, BytesPayload(dtb, DTB_FILE), Role.DTB),
    ]
    written = set()
    for module in found:
        if module.name in written:
            continue  # one input used by several domains: one file, loaded once for each
        written.add(module.name)
        files.append(module)
    return UBootBoot(memory_plan, files)


def plan(system: System) -> list[str]:
    """Everything build does before it writes; the memory map, for `hlimage check`."""
    found = modules(system)
    return uboot.summary(boot(system, found, measured_sizes(found)).memory_plan)


@contextlib.contextmanager
def planned_files(system: System, output: Path) -> Iterator[UBootBoot]:
    """The tree's files, ready to be written while the context lasts (for the disk and PXE
    outputs too, which carry the tree)."""
    with spooled(modules(system), output) as sized:
        yield boot(system, sized)


def build(system: System, output: Path, *, digests: bool = True) -> BuildReport:
    report = BuildReport("uboot", output)
    with planned_files(system, output) as planned, atomic_directory(output) as temporary:
        esp.write_tree(planned.files, temporary, report, digests=digests)
    return report


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, digests=options.digests)


registry.register(
    registry.OutputFormat(
        name="uboot",
        summary="a directory U-Boot boots Xen from (boot.scr, Xen, its DTB, the modules), "
        "for a FAT partition or a TFTP root",
        writes=registry.Writes.DIRECTORY,
        plan=plan,
        build=_build,
        example="xen-uboot",
        unsigned_because="boots through a U-Boot script, which U-Boot does not verify",
        arches=frozenset({Arch.ARM64}),
    )
)
