"""`--format esp`: the tree a UEFI firmware boots from removable media.

EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI) is Xen; Xen reads BOOTX64.cfg beside it (its own name
with .cfg), and every file the cfg and the device tree name sits in the same directory, since
Xen resolves them relative to itself. The same plan feeds the disk output.
"""

from __future__ import annotations

from pathlib import Path

from hlimage.atomic import atomic_directory
from hlimage.model import Arch, System
from hlimage.outputs import registry
from hlimage.planned import PlannedFile, Role
from hlimage.report import Artifact, BuildReport
from hlimage.streams import BytesPayload, Region, copy_stream
from hlimage.xen import binding, efi, policy
from hlimage.xen import modules as boot_modules
from hlimage.xen.probe import XenEfi, probe_system_efi

BOOT_DIR = "EFI/BOOT"
DTB_NAME = "xen.dtb"


def efi_name(arch: Arch) -> str:
    return f"BOOT{arch.efi_suffix}.EFI"


def files(system: System, xen: XenEfi | None = None) -> list[PlannedFile]:
    """The files of an ESP that boots the description, Xen first; names are paths from the
    ESP's root."""
    policy.validate_domains(system)
    xen = xen or probe_system_efi(system)
    modules = efi.exact_kernel_names(system, boot_modules.all_modules(system), xen.release)
    boot = binding.of(system).efi_boot(system, modules, xen.version, DTB_NAME)
    name = efi_name(system.arch)
    cfg_name = name.rsplit(".", 1)[0] + ".cfg"
    planned = [
        PlannedFile(f"{BOOT_DIR}/{name}", Region(xen.path), Role.XEN),
        PlannedFile(
            f"{BOOT_DIR}/{cfg_name}", BytesPayload(boot.config.encode(), cfg_name), Role.CONFIG
        ),
    ]
    if boot.dtb is not None:
        planned.append(PlannedFile(f"{BOOT_DIR}/{DTB_NAME}", boot.dtb, Role.DTB))
    written = set()
    for module in modules:
        if module.name in written:
            continue  # one input used by several domains is one file
        written.add(module.name)
        planned.append(
            PlannedFile(
                f"{BOOT_DIR}/{module.name}", module.payload, module.role, module.domain,
                module.cmdline,
            )
        )  # fmt: skip
    return planned


def artifact(item: PlannedFile, size: int, sha256: str) -> Artifact:
    return Artifact(item.name, item.role.value, size, sha256, item.payload.label, item.domain_name)


def write_tree(files: list[PlannedFile], root: Path) -> list[Artifact]:
    artifacts = []
    for item in files:
        target = root / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as out:
            result = copy_stream(item.payload, out)
        artifacts.append(artifact(item, result.size, result.sha256))
    return artifacts


def build(system: System, output: Path) -> BuildReport:
    planned = files(system)
    report = BuildReport("esp", output)
    with atomic_directory(output) as temporary:
        report.artifacts = write_tree(planned, temporary)
    return report


def config_text(system: System) -> str:
    """The BOOT*.cfg of the ESP (`hlimage efi-config`)."""
    config = next(f for f in files(system) if f.role is Role.CONFIG)
    return b"".join(config.payload.chunks()).decode("ascii")


def plan(system: System) -> None:
    files(system)


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output)


registry.register(
    registry.OutputFormat(
        name="esp",
        summary="a directory UEFI firmware boots: EFI/BOOT/BOOT*.EFI and its files",
        writes=registry.Writes.DIRECTORY,
        plan=plan,
        build=_build,
        example="xen-esp",
        signing=registry.Signing.LOADER,
        pe_images=registry.PeImages.TREE,
    )
)
