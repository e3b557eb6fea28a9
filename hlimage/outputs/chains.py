"""ESP layouts in which another EFI program starts Xen: systemd-boot or shim (for esp, disk).

- `--loader systemd-boot`: systemd-boot as EFI/BOOT/BOOT*.EFI, a Type #1 entry
  loader/entries/NAME.conf whose `efi` line names EFI/NAME/xen.efi, and beside that xen.efi
  the esp format's cfg (xen.cfg: Xen finds it by its own name) and files.
- `--loader systemd-boot-uki`: systemd-boot, and the unified image (with `.osrel` and
  `.cmdline`) as EFI/Linux/NAME.efi, which systemd-boot lists as a Type #2 entry.
- `--shim PATH`: shim as EFI/BOOT/BOOT*.EFI (with its MokManager, mm*.efi, where one lies
  beside it), and Xen under the name shim starts, EFI/BOOT/grub*.efi, with its cfg
  grub*.cfg and the files. Xen gets the `.sbat` shim requires and a `.reloc` shim maps
  (xen/chainload.py). shim's fallback (fb*.efi) is left out: beside it, shim would run it to
  write boot entries instead of starting Xen.
- `--unified`: Xen is the unified image, alone: EFI/BOOT/BOOT*.EFI, or grub*.efi under
  `--shim`. One signature then covers xen.cfg, dom0's kernel and its initrd, which the plain
  layout leaves unsigned beside Xen.

loader/loader.conf boots the entry at once (`timeout 0`; a key held at start shows the menu).
With --key each EFI binary the chain starts that carries no signature is signed (a shim that
Microsoft signed keeps its signature), and under shim so is dom0's kernel, which Xen asks shim
to verify; the menu editor is then turned off, since Xen takes edited load options even from
a signed image.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import bls, pe
from hlimage.formats.payload import BytesPayload, Region
from hlimage.model import Arch, System
from hlimage.outputs import esp, registry, unified
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing.atomic import scratch_directory
from hlimage.plumbing.messages import note, warn
from hlimage.xen import chainload
from hlimage.xen.grub_entry import title
from hlimage.xen.probe import probe_system_efi

if TYPE_CHECKING:
    from hlimage.secureboot.trust import SigningKey

SYSTEMD_BOOT_DIR = Path("/usr/lib/systemd/boot/efi")
SYSTEMD_BOOT_ENV = "HLIMAGE_SYSTEMD_BOOT"
"""Names systemd-boot's EFI binary where it is not at SYSTEMD_BOOT_DIR (another architecture's)."""
LOADER_CONF = "loader/loader.conf"
ENTRIES_DIR = "loader/entries"
UKI_DIR = "EFI/Linux"
# What systemd-boot calls each architecture (its `architecture` key, its binary's name).
EFI_ARCH = {Arch.X86_64: "x64", Arch.ARM64: "aa64"}


def systemd_boot_binary(system: System) -> Path:
    name = f"systemd-boot{EFI_ARCH[system.arch]}.efi"
    given = os.environ.get(SYSTEMD_BOOT_ENV)
    path = Path(given) if given else SYSTEMD_BOOT_DIR / name
    if not path.is_file():
        where = f"{SYSTEMD_BOOT_ENV}={given}" if given else str(path)
        raise HlimageError(
            f"--loader: {where} is not a file; install systemd-boot's EFI binaries (Debian: "
            f"systemd-boot-efi) or name {name} in {SYSTEMD_BOOT_ENV}"
        )
    return path


def _pe_arch(path: Path, what: str, system: System) -> pe.PeImage:
    try:
        with path.open("rb") as stream:
            image = pe.parse(stream)
    except (FormatError, OSError) as error:
        raise HlimageError(
            f"{what}: not an EFI binary hlimage reads: {error}", where=path
        ) from None
    wanted = {Arch.X86_64: pe.MACHINE_AMD64, Arch.ARM64: pe.MACHINE_ARM64}[system.arch]
    if image.machine != wanted:
        raise HlimageError(
            f"{what}: an EFI binary for {image.machine_name}, but [image] arch is "
            f'"{system.arch.value}"; give the {system.arch.value} one',
            where=path,
        )
    return image


class _Signer:
    """Signs, into the scratch directory, what the chain starts and is not signed yet."""

    def __init__(self, key: SigningKey | None, scratch: Path) -> None:
        self.key = key
        self.scratch = scratch
        self.count = 0

    def __call__(self, path: Path, what: str) -> Path:
        if self.key is None:
            return path
        from hlimage.secureboot import trust

        with path.open("rb") as stream:
            if pe.parse(stream).signature is not None:
                note(f"{path}: already signed; kept as it is, not signed with --key")
                return path
        self.count += 1
        target = self.scratch / f"signed-{self.count}.efi"
        trust.sign_file(path, target, self.key)
        return target


def _entry_comments(system: System) -> list[str]:
    return [
        "Written by hlimage. systemd-boot passes the options line to Xen as its EFI load",
        "options: Xen takes the first word as its own name and the next as the xen.cfg",
        f'section to boot ("{chainload.load_options(system)}"). Options for Xen itself go after',
        'a "--" word; options written as for Linux would be misread.',
    ]


def _loader_conf(default: str, *, signed: bool) -> PlannedFile:
    fields = [("timeout", "0"), ("default", default)]
    comments = ["Written by hlimage: boots the entry at once; hold a key at start for the menu."]
    if signed:
        # Xen reads edited load options even from a signed image: no editing at the menu.
        fields.append(("editor", "no"))
    data = bls.key_value_file(fields, comments)
    return PlannedFile(LOADER_CONF, BytesPayload(data, "loader.conf"), Role.ENTRY)


def _type1_files(system: System, sign: _Signer, scratch: Path) -> list[PlannedFile]:
    loader = systemd_boot_binary(system)
    _pe_arch(loader, "systemd-boot", system)
    xen = probe_system_efi(system)
    directory = f"EFI/{system.name}"
    xen_name = chainload.IMAGE_NAME
    files = esp.files(system, xen, directory=directory, xen_name=xen_name)
    files[0] = PlannedFile(
        files[0].name, Region(sign(_prepared_xen(system, scratch), "Xen")), Role.XEN
    )
    entry_name = f"{system.name}.conf"
    entry = type1_entry(
        system, f"{directory}/{xen_name}", xen.version_text if xen.version else None
    )
    return [
        _boot_file(system, sign(loader, "systemd-boot")),
        _loader_conf(entry_name, signed=sign.key is not None),
        PlannedFile(f"{ENTRIES_DIR}/{entry_name}", BytesPayload(entry, entry_name), Role.ENTRY),
        *files,
    ]


def type1_entry(system: System, efi: str, version: str | None = None) -> bytes:
    """A Type #1 entry whose `efi` line names `efi` (from the ESP's root): xen.efi with its
    cfg beside it, or a unified image."""
    fields = [("title", title(system))]
    if version is not None:
        fields.append(("version", version))
    try:
        fields += [
            ("architecture", EFI_ARCH[system.arch]),
            ("efi", bls.efi_path(efi)),
            ("options", chainload.load_options(system)),
        ]
        return bls.key_value_file(fields, _entry_comments(system))
    except FormatError as error:
        raise HlimageError(f"{error}; change it", where=system.source) from None


def _boot_file(system: System, path: Path) -> PlannedFile:
    """What the firmware starts from removable media: EFI/BOOT/BOOTX64.EFI."""
    return PlannedFile(f"{esp.BOOT_DIR}/{esp.efi_name(system.arch)}", Region(path), Role.LOADER)


def _type2_files(system: System, sign: _Signer, scratch: Path) -> list[PlannedFile]:
    loader = systemd_boot_binary(system)
    _pe_arch(loader, "systemd-boot", system)
    image = scratch / "unified.efi"
    unified.build(system, image, digests=False, systemd_boot=True)
    name = f"{system.name}.efi"
    return [
        _boot_file(system, sign(loader, "systemd-boot")),
        _loader_conf(name, signed=sign.key is not None),
        PlannedFile(f"{UKI_DIR}/{name}", Region(sign(image, "the unified image")), Role.XEN),
    ]


def _prepared_xen(system: System, scratch: Path, *, shim: bool = False) -> Path:
    """xen.efi as a loader other than the firmware maps it: `.reloc` not discardable, and
    for shim a `.sbat` (xen/chainload.py); debug sections and the COFF symbol table, which
    nothing reads at boot, left out."""
    xen = probe_system_efi(system)
    added = chainload.sbat_section(system, xen, why="with --shim") if shim else None
    target = scratch / ("xen-for-shim.efi" if shim else "xen.efi")
    new = [] if added is None else [pe.NewSection(".sbat", added.payload)]
    with xen.path.open("rb") as source, target.open("w+b") as out:
        try:
            pe.PeWriter(
                source, xen.image, drop=lambda section: section.is_debug,
                characteristics=chainload.loaded_characteristics,
            ).write(new, out)  # fmt: skip
        except FormatError as error:
            raise HlimageError(f"[xen] efi: {error}", where=xen.path) from None
    if xen.signed:
        warn(f"{xen.path}: its signature is removed (the chain needs .reloc and .sbat changed)")
    return target


def _unified_image(system: System, sign: _Signer, scratch: Path, *, shim: bool) -> Path:
    """The unified image for --unified, signed where --key is given. Under shim it needs the
    `.sbat` shim requires, and dom0's kernel in it signed: Xen before 4.21 asks shim to
    verify even a kernel from its own `.kernel` section (xen-boot-formats.md §4)."""
    if shim:
        chainload.sbat_section(system, probe_system_efi(system), why="with --shim --unified")
        dom0 = system.hardware_domain
        if dom0 is not None:
            kernel = _signed_kernel(dom0.kernel, sign)
            if kernel != dom0.kernel:
                domains = tuple(
                    dataclasses.replace(d, kernel=kernel) if d is dom0 else d
                    for d in system.domains
                )
                system = dataclasses.replace(system, domains=domains)
    image = scratch / "unified.efi"
    unified.build(system, image, digests=False)
    return sign(image, "the unified image")


def _unified_files(system: System, sign: _Signer, scratch: Path) -> list[PlannedFile]:
    image = _unified_image(system, sign, scratch, shim=False)
    return [_boot_file(system, image)]


def _shim_files(
    system: System, shim: Path, sign: _Signer, scratch: Path, *, with_unified: bool = False
) -> list[PlannedFile]:
    suffix = EFI_ARCH[system.arch]
    _pe_arch(shim, "--shim", system)
    xen_name = f"grub{suffix}.efi"
    if with_unified:
        image = _unified_image(system, sign, scratch, shim=True)
        files = [PlannedFile(f"{esp.BOOT_DIR}/{xen_name}", Region(image), Role.XEN)]
    else:
        files = esp.files(system, directory=esp.BOOT_DIR, xen_name=xen_name)
        xen = _prepared_xen(system, scratch, shim=True)
        files[0] = PlannedFile(files[0].name, Region(sign(xen, "Xen")), Role.XEN)
        dom0 = system.hardware_domain
        for index, item in enumerate(files):
            if item.role is Role.KERNEL and item.domain is dom0 and dom0 is not None:
                files[index] = _dom0_kernel(item, sign)
    chain = [_boot_file(system, sign(shim, "shim"))]
    manager = shim.parent / f"mm{suffix}.efi"
    if manager.is_file():
        chain.append(PlannedFile(f"{esp.BOOT_DIR}/{manager.name}",
                                 Region(sign(manager, "MokManager")), Role.LOADER))  # fmt: skip
    return chain + files


def _dom0_kernel(item: PlannedFile, sign: _Signer) -> PlannedFile:
    """Xen asks shim to verify dom0's kernel ("Dom0 kernel image could not be verified")."""
    source = item.source
    if source is None:
        return item
    signed = _signed_kernel(source, sign)
    if signed == source:
        return item
    return PlannedFile(item.name, Region(signed), item.role, item.domain, item.cmdline)


def _signed_kernel(source: Path, sign: _Signer) -> Path:
    """dom0's kernel as shim will verify it: signed with --key where it carries no
    signature; as it is (with a warning) where it cannot be."""
    try:
        with source.open("rb") as stream:
            image = pe.parse(stream)
    except (FormatError, OSError):
        warn(f"{source}: not a PE image, so not signable; under Secure Boot shim refuses it")
        return source
    if image.signature is None and sign.key is None:
        warn(
            f"{source}: dom0's kernel is not signed; under Secure Boot Xen asks shim to verify "
            "it and stops: sign it, or give --key"
        )
    return sign(source, "dom0's kernel")


@contextlib.contextmanager
def files(
    system: System, options: registry.BuildOptions, output: Path
) -> Iterator[list[PlannedFile]]:
    """The ESP's files for the chain the options name; what they make (a unified image, a
    changed or signed copy) lives in a scratch directory beside `output` until the caller is
    done with them."""
    with scratch_directory(output) as scratch:
        sign = _Signer(options.signing, scratch)
        if options.shim is not None:
            yield _shim_files(system, options.shim, sign, scratch, with_unified=options.unified)
        elif options.unified:
            yield _unified_files(system, sign, scratch)
        elif options.loader == "systemd-boot-uki":
            yield _type2_files(system, sign, scratch)
        elif options.loader == "systemd-boot":
            yield _type1_files(system, sign, scratch)
        else:
            raise AssertionError(f"not a chain: {options}")
