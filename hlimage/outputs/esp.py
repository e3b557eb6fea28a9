"""`--format esp`: the tree a UEFI firmware boots from removable media.

EFI/BOOT/BOOTX64.EFI (or BOOTAA64.EFI) is Xen; Xen reads BOOTX64.cfg beside it (its own name
with .cfg), and every file the cfg and the device tree name sits in the same directory, since
Xen resolves them relative to itself. The same plan feeds the disk output.
"""

from __future__ import annotations

from pathlib import Path

from hlimage.errors import FormatError
from hlimage.formats import pe
from hlimage.formats.payload import BytesPayload, Payload, Region
from hlimage.model import Arch, System
from hlimage.outputs import registry
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing.atomic import atomic_directory
from hlimage.plumbing.streams import copy_stream
from hlimage.report import Artifact, BuildReport, PeDigests
from hlimage.xen import binding, efi, policy
from hlimage.xen import modules as boot_modules
from hlimage.xen.probe import XenEfi, probe_system_efi

BOOT_DIR = "EFI/BOOT"
DTB_NAME = "xen.dtb"


def efi_name(arch: Arch) -> str:
    return f"BOOT{arch.efi_suffix}.EFI"


def files(
    system: System,
    xen: XenEfi | None = None,
    *,
    directory: str = BOOT_DIR,
    xen_name: str | None = None,
) -> list[PlannedFile]:
    """The files of an ESP that boots the description, Xen first; names are paths from the
    ESP's root. `directory` and `xen_name` place Xen elsewhere than the firmware's
    EFI/BOOT/BOOT*.EFI, for a loader that starts it (outputs/chains.py); its cfg is named
    after it, as Xen looks for its own name with .cfg."""
    policy.validate_domains(system)
    xen = xen or probe_system_efi(system)
    modules = efi.exact_kernel_names(system, boot_modules.all_modules(system), xen.release)
    boot = binding.of(system).efi_boot(system, modules, xen.version, DTB_NAME)
    name = xen_name or efi_name(system.arch)
    cfg_name = name.rsplit(".", 1)[0] + ".cfg"
    planned = [
        PlannedFile(f"{directory}/{name}", Region(xen.path), Role.XEN),
        PlannedFile(
            f"{directory}/{cfg_name}", BytesPayload(boot.config.encode(), cfg_name), Role.CONFIG
        ),
    ]
    if boot.dtb is not None:
        planned.append(PlannedFile(f"{directory}/{DTB_NAME}", boot.dtb, Role.DTB))
    written = set()
    for module in modules:
        if module.name in written:
            continue  # one input used by several domains is one file
        written.add(module.name)
        planned.append(
            PlannedFile(
                f"{directory}/{module.name}", module.payload, module.role, module.domain,
                module.cmdline,
            )
        )  # fmt: skip
    return planned


def artifact(item: PlannedFile, size: int, sha256: str | None) -> Artifact:
    return Artifact(item.name, item.role.value, size, sha256, item.payload.label, item.domain_name)


def write_tree(
    files: list[PlannedFile], root: Path, report: BuildReport, *, digests: bool = True
) -> None:
    """Copy the files under `root`; their digests (and a PE file's Authenticode digest)
    computed on the way, for the report."""
    for item in files:
        target = root / item.name
        target.parent.mkdir(parents=True, exist_ok=True)
        ranges = authenticode_ranges(item.payload) if digests and is_pe_name(item.name) else None
        with target.open("wb") as out:
            result = copy_stream(item.payload, out, digest=digests, ranges=ranges)
        assert result.size is not None
        report.artifacts.append(artifact(item, result.size, result.sha256))
        if result.sha256 is not None and result.ranged_sha256 is not None:
            report.pe_images[item.name] = PeDigests(
                item.name, result.size, result.sha256, result.ranged_sha256
            )


def is_pe_name(name: str) -> bool:
    return name.lower().endswith(".efi")


def pe_signers(payload: Payload) -> tuple[str, ...]:
    """Who signed a PE file that is copied whole (a signed xen.efi), read from its
    certificate table."""
    from hlimage.secureboot.signers import signers

    path = _whole_file(payload)
    return () if path is None else tuple(signers(path))


def _whole_file(payload: Payload) -> Path | None:
    """The file a payload copies from its start: where its PE headers can be read."""
    plain = payload.plain()
    if not isinstance(plain, Region) or plain.offset:
        return None
    return plain.path


def authenticode_ranges(payload: Payload) -> tuple[tuple[int, int], ...] | None:
    """What the Authenticode hash of a PE file covers, read from its headers; None for a
    payload that is not a whole PE file."""
    from hlimage.formats import authenticode  # cryptography: only for builds that digest

    path = _whole_file(payload)
    if path is None:
        return None
    try:
        with path.open("rb") as stream:
            return authenticode.hash_layout(pe.parse(stream)).all_ranges
    except (FormatError, OSError):
        return None


def build(
    system: System,
    output: Path,
    *,
    digests: bool = True,
    options: registry.BuildOptions | None = None,
) -> BuildReport:
    """`options` may name a chain (--loader systemd-boot*, --shim, --unified):
    outputs/chains.py lays it out."""
    report = BuildReport("esp", output)
    if options is not None and registry.is_chain(options):
        from hlimage.outputs import chains

        with chains.files(system, options, output) as chain, atomic_directory(output) as temporary:
            write_tree(chain, temporary, report, digests=digests)
        return report
    planned = files(system)
    with atomic_directory(output) as temporary:
        write_tree(planned, temporary, report, digests=digests)
    return report


def config_text(system: System) -> str:
    """The BOOT*.cfg of the ESP (`hlimage efi-config`)."""
    config = next(f for f in files(system) if f.role is Role.CONFIG)
    return b"".join(config.payload.chunks()).decode("ascii")


def plan(system: System) -> None:
    files(system)


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, digests=options.digests, options=options)


registry.register(
    registry.OutputFormat(
        name="esp",
        summary="a directory UEFI firmware boots: EFI/BOOT/BOOT*.EFI and its files",
        writes=registry.Writes.DIRECTORY,
        plan=plan,
        build=_build,
        example="xen-esp",
        options=frozenset({"loader", "shim", "unified"}),
        loaders=registry.SYSTEMD_BOOT_LOADERS | {"uefi"},
        signing=registry.Signing.LOADER,
        pe_images=registry.PeImages.TREE,
    )
)
