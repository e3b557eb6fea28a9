"""`--format esp`: the tree a UEFI firmware boots from removable media.

EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI) is Xen; Xen reads BOOTX64.cfg beside it (its own name
with .cfg), and every file the cfg and the device tree name sits in the same directory, since
Xen resolves them relative to itself. The same plan feeds the disk and PXE outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hlimage.atomic import atomic_directory
from hlimage.errors import HlimageError
from hlimage.model import Arch, Binding, System
from hlimage.outputs.unified import probe_xen_efi
from hlimage.report import Artifact, BuildReport
from hlimage.streams import BytesPayload, Payload, Region, copy_stream
from hlimage.xen import dom0less, efi, policy
from hlimage.xen import modules as boot_modules
from hlimage.xen.probe import XenEfi

BOOT_DIR = "EFI/BOOT"
DTB_NAME = "xen.dtb"


@dataclass(frozen=True)
class EspFile:
    path: str
    """Relative to the ESP root, with '/' separators."""
    payload: Payload
    role: str
    domain: str | None = None


def efi_name(arch: Arch) -> str:
    return f"BOOT{arch.efi_suffix}.EFI"


def plan(system: System, xen: XenEfi | None = None) -> list[EspFile]:
    """The files of an ESP that boots the description, Xen first."""
    policy.check_domains(system)
    xen = xen or probe_xen_efi(system)
    binding = system.resolved_binding
    if system.arch is Arch.X86_64 and binding is not Binding.CLASSIC:
        raise HlimageError(
            "[[domain]]: an x86 ESP boots one domain, dom0 (Xen's EFI loader has no device tree "
            "on x86); for several domains use --format grub or grub-standalone (hyperlaunch)",
            where=system.source,
        )
    dom0 = next((d for d in system.domains if d.is_classic_dom0), None)
    modules = boot_modules.all_modules(system)
    files: list[EspFile] = []
    dtb_name = None
    if system.arch is Arch.ARM64:
        if dom0less.dt_domains(system):
            tree = dom0less.host_tree(system)
            dom0less.add_domains(system, tree, modules, xen.version)
            files.append(
                EspFile(f"{BOOT_DIR}/{DTB_NAME}", BytesPayload(tree.build(), DTB_NAME), "dtb")
            )
            dtb_name = DTB_NAME
        elif system.xen.dtb is not None:
            files.append(EspFile(f"{BOOT_DIR}/{DTB_NAME}", Region(system.xen.dtb), "dtb"))
            dtb_name = DTB_NAME
    kernel = boot_modules.find(modules, boot_modules.KERNEL, dom0) if dom0 else None
    ramdisk = boot_modules.find(modules, boot_modules.RAMDISK, dom0) if dom0 else None
    xsm = boot_modules.find(modules, boot_modules.XSM)
    ucode = boot_modules.find(modules, boot_modules.UCODE)
    config = efi.xen_config(
        system,
        dom0,
        efi.ModuleFiles(
            kernel=kernel.file_name if kernel else "kernel",
            ramdisk=ramdisk.file_name if ramdisk else None,
            xsm=xsm.file_name if xsm else None,
            ucode=ucode.file_name if ucode else None,
            dtb=dtb_name,
        ),
    )
    name = efi_name(system.arch)
    files.insert(0, EspFile(f"{BOOT_DIR}/{name}", Region(xen.path), "xen"))
    cfg_name = name.rsplit(".", 1)[0] + ".cfg"
    files.insert(
        1, EspFile(f"{BOOT_DIR}/{cfg_name}", BytesPayload(config.encode(), cfg_name), "config")
    )
    written = set()
    for module in modules:
        if module.file_name in written:
            continue  # one input used by several domains is one file
        written.add(module.file_name)
        files.append(
            EspFile(
                f"{BOOT_DIR}/{module.file_name}",
                module.payload,
                module.role,
                module.domain.name if module.domain else None,
            )
        )
    return files


def write_tree(files: list[EspFile], root: Path) -> list[Artifact]:
    artifacts = []
    for item in files:
        target = root / item.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            result = copy_stream(item.payload, out)
        artifacts.append(
            Artifact(
                item.path, item.role, result.size, result.sha256, item.payload.label, item.domain
            )
        )
    return artifacts


def build(system: System, output: Path) -> BuildReport:
    files = plan(system)
    report = BuildReport("esp", output)
    with atomic_directory(output) as temporary:
        report.artifacts = write_tree(files, temporary)
    return report
