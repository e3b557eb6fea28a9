"""`--format pxe`: a TFTP/HTTP root whose boot file a UEFI PXE or HTTP client loads, or with
`--loader uboot` or `fit` the TFTP root U-Boot's network boot reads boot.scr.uimg from.

The boot file is a unified xen.efi where the binding and the Xen can boot that way over the
network (xen/efi.py: Xen 4.22 and newer, and 4.21.2), else a one-file GRUB image with
everything in its memdisk.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hlimage.errors import HlimageError
from hlimage.model import Arch, System
from hlimage.outputs import esp, grub_standalone, registry, uboot, unified
from hlimage.plumbing.atomic import atomic_directory
from hlimage.plumbing.messages import note
from hlimage.plumbing.streams import copy_stream
from hlimage.report import Artifact, BuildReport
from hlimage.xen import binding, grub_entry, policy
from hlimage.xen.probe import probe_efi

CLIENT_ARCH = {Arch.X86_64: 7, Arch.ARM64: 11}  # DHCP option 93 (RFC 4578, IANA)


def boot_file_name(arch: Arch) -> str:
    return f"boot{arch.efi_suffix.lower()}.efi"


def readme(system: System, boot_file: str, how: str) -> str:
    arch = CLIENT_ARCH[system.arch]
    service = "x86-64_EFI" if system.arch is Arch.X86_64 else "ARM64_EFI"
    return f"""A network boot root made by hlimage for {system.name} ({system.arch.value}).

Boot file: {boot_file} ({how}). Serve the directory by TFTP or HTTP.

dnsmasq as DHCP proxy and TFTP server next to an existing DHCP server (replace the subnet):

  dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$PWD" \\
    --dhcp-range=192.0.2.0,proxy --dhcp-match=set:efi,option:client-arch,{arch} \\
    --pxe-service=tag:efi,{service},"hlimage",{boot_file}

UEFI HTTP boot: point the firmware (or DHCP option 67 with vendor class HTTPClient) at

  http://SERVER/PATH/{boot_file}

QEMU (user networking, no disk): -netdev user,id=n0,tftp=DIR,bootfile={boot_file}
  -device virtio-net-pci,netdev=n0,romfile=
"""


def _through_unified(system: System) -> bool:
    """Whether the boot file is a unified xen.efi rather than GRUB."""
    policy.validate_domains(system)
    # With its patch release: the fix is in 4.22 and 4.21.2.
    version = probe_efi(system.xen.efi).release if system.xen.efi is not None else None
    return binding.of(system).unified_over_network(system, version)


def _check_grub_route(system: System) -> None:
    if system.arch is Arch.X86_64 and system.xen.multiboot is None:
        raise HlimageError(
            "[xen] multiboot: a PXE tree for Xen before 4.22 (4.21.2) boots through GRUB, which "
            'loads Xen\'s ELF image; add multiboot = "xen.gz"',
            where=system.source,
        )


def plan(system: System) -> None:
    """Everything build does before it writes."""
    if _through_unified(system):
        unified.plan(system)
        return
    _check_grub_route(system)
    grub_entry.stanza(system)


def build(
    system: System, output: Path, *, grub_lib: Path | None = None, digests: bool = True
) -> BuildReport:
    boot_file = boot_file_name(system.arch)
    report = BuildReport("pxe", output)
    with atomic_directory(output) as temporary:
        if _through_unified(system):
            inner = unified.build(system, temporary / boot_file, digests=digests)
            how = "a unified xen.efi"
        else:
            _check_grub_route(system)
            inner = grub_standalone.build(
                system, temporary / boot_file, lib=grub_lib, digests=digests
            )
            how = "GRUB with Xen and every module in its memdisk"
            note(f"{boot_file}: {how} (xen.efi over the network needs Xen 4.22 or 4.21.2)")
        (temporary / "README.txt").write_text(readme(system, boot_file, how))
        boot = temporary / boot_file
        # Its digests were computed as it was written.
        written = inner.pe_images.get(boot_file)
        report.pe_images = dict(inner.pe_images)
        report.artifacts = [
            Artifact(
                boot_file, "boot", boot.stat().st_size, written.sha256 if written else None, how
            ),
            # What the boot file carries, named as inside it.
            *(replace(item, name=f"{boot_file}:{item.name}") for item in inner.artifacts),
        ]
    return report


UBOOT_SCRIPT = "boot.scr.uimg"
"""The one name U-Boot's default boot asks the TFTP server for (docs/uboot.md)."""


def uboot_readme(system: System, how: str) -> str:
    return f"""A U-Boot network boot root made by hlimage for {system.name} ({system.arch.value}).

Boot script: {UBOOT_SCRIPT} ({how}). Serve the directory by TFTP: U-Boot's default boot
(distro boot's dhcp target) asks the DHCP server for an address and then the TFTP server for
{UBOOT_SCRIPT}, which it runs. The file names the DHCP server gives are not used.

dnsmasq as DHCP proxy and TFTP server next to an existing DHCP server (replace the subnet):

  dnsmasq --no-daemon --port=0 --enable-tftp --tftp-root="$PWD" --dhcp-range=192.0.2.0,proxy

From a U-Boot prompt: dhcp; tftpboot ${{scriptaddr}} {UBOOT_SCRIPT}; source ${{scriptaddr}}
(with devtype=dhcp set first for a script that loads files: setenv devtype dhcp).

QEMU (user networking, no disk): -netdev user,id=n0,tftp=DIR -device virtio-net-pci,netdev=n0
"""


def build_uboot(
    system: System, output: Path, loader: str, signing: Any = None, *, digests: bool = True
) -> BuildReport:
    """A TFTP root that U-Boot boots: the uboot tree, or the FIT as boot.scr.uimg."""
    report = BuildReport("pxe", output)
    if loader == "fit":
        from hlimage.formats.fit import FitPayload
        from hlimage.outputs import fit as fit_output

        signer = fit_output.signer_of(signing)
        how = "a FIT with Xen, its device tree, every module and the script that boots them"
        with (
            uboot.spooled(uboot.modules(system), output) as sized,
            atomic_directory(output) as temporary,
        ):
            planned = fit_output.boot(system, sized, signer=signer)
            payload = FitPayload(planned.fit, signer, label=UBOOT_SCRIPT)
            with (temporary / UBOOT_SCRIPT).open("wb") as out:
                result = copy_stream(payload, out, digest=digests)
            (temporary / "README.txt").write_text(uboot_readme(system, how))
            assert payload.result is not None and result.size is not None
            report.artifacts = [
                Artifact(UBOOT_SCRIPT, "boot", result.size, result.sha256, how),
                *fit_output.artifacts(planned, payload.result.sha256, prefix=f"{UBOOT_SCRIPT}:"),
            ]
        return report
    how = "a U-Boot script that loads the files beside it over TFTP"
    with uboot.planned_files(system, output) as planned_tree, atomic_directory(output) as temporary:
        esp.write_tree(planned_tree.files, temporary, report, digests=digests)
        (temporary / "README.txt").write_text(uboot_readme(system, how))
    return report


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    if options.loader in ("uboot", "fit"):
        if options.grub_lib is not None:
            raise HlimageError(
                f"--grub-lib: --loader {options.loader} boots without GRUB; drop --grub-lib"
            )
        return build_uboot(system, output, options.loader, options.signing, digests=options.digests)
    return build(system, output, grub_lib=options.grub_lib, digests=options.digests)


registry.register(
    registry.OutputFormat(
        name="pxe",
        summary="a TFTP/HTTP root with the boot file a PXE or UEFI HTTP client loads",
        writes=registry.Writes.DIRECTORY,
        plan=plan,
        build=_build,
        pe_images=registry.PeImages.TREE,
        example="xen-pxe",
        options=frozenset({"grub_lib", "loader"}),
        loaders=registry.UBOOT_LOADERS,
    )
)
