"""GRUB menu entries that boot Xen: the grammar the bindings share (docs/xen-boot-formats.md
5.2-5.4, and GRUB's 20_linux_xen): `placeholder` as argv0, initrds with --nounzip, the real
initrd first, `no-real-mode edd=off` on EFI platforms. Which lines an entry has is the
binding's to say (classic.py, hyperlaunch.py); `stanza` asks it.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt
from hlimage.formats.grubcfg import MenuEntry, quote, words
from hlimage.formats.payload import Payload
from hlimage.model import Arch, Binding, System
from hlimage.planned import PlannedFile, Role
from hlimage.xen import binding, policy
from hlimage.xen.probe import XenImage, probe_efi, probe_multiboot

LCM_NAME = "lcm.dtb"
DTB_NAME = "host.dtb"
EFI_PLATFORM_OPTIONS = [
    'if [ "$grub_platform" = "pc" -o "$grub_platform" = "" ]; then',
    "\txen_rm_opts=",
    "else",
    '\txen_rm_opts="no-real-mode edd=off"',
    "fi",
]


@dataclass(frozen=True)
class Layout:
    """Where the entry finds its files.

    Copy mode (the default): every file sits directly under `prefix`, as `hlimage build
    --format grub` writes them. In-place mode: inputs are used where they are, their paths
    made relative to `relative_to` and put under `prefix` (a distribution's /boot); only
    generated files (the LCM) are named by the caller.
    """

    prefix: str = "/"
    in_place: bool = False
    relative_to: Path = Path("/")
    lcm_path: Path | None = None


@dataclass
class Stanza:
    entry: MenuEntry
    files: list[PlannedFile] = field(default_factory=list)
    """What copy mode writes under the prefix, named as the entry names them."""
    lcm: bytes | None = None
    """The hyperlaunch LCM the entry loads as module 0, if any."""


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return "/" + name
    return posixpath.join(prefix if prefix.endswith(("/", ")")) else prefix + "/", name)


class Paths:
    """The words an entry uses for its files, and the files copy mode writes."""

    def __init__(self, system: System, layout: Layout) -> None:
        self.system = system
        self.layout = layout
        self.files: list[PlannedFile] = []
        self.names: set[str] = set()

    def add(self, planned: PlannedFile, *, key: str, source: Path | None = None) -> str:
        """`source`: the file in-place mode points at, when it is not the payload's own."""
        if self.layout.in_place:
            source = source or planned.source
            if source is None:
                raise HlimageError(
                    f"{key}: generated content (a joined or recompressed initrd) has no file to "
                    "point GRUB at in place; use hlimage build --format grub, which writes it",
                    where=self.system.source,
                )
            try:
                relative = source.resolve().relative_to(self.layout.relative_to.resolve())
            except ValueError:
                raise HlimageError(
                    f"{key}: {source} is not under {self.layout.relative_to}, where GRUB looks; "
                    "move it there",
                    where=self.system.source,
                ) from None
            return quote(_join(self.layout.prefix, relative.as_posix()))
        if planned.name not in self.names:
            self.names.add(planned.name)
            self.files.append(planned)
        return quote(_join(self.layout.prefix, planned.name))

    def add_file(self, name: str, payload: Payload, role: Role, *, key: str,
                 source: Path | None = None) -> str:  # fmt: skip
        return self.add(PlannedFile(name, payload, role), key=key, source=source)

    def add_module(self, module: PlannedFile) -> str:
        return self.add(module, key=module_key(module))


def title(system: System) -> str:
    if system.title:
        return system.title
    kind = " hyperlaunch" if binding.resolve(system) is Binding.HYPERLAUNCH else ""
    return f"Xen{kind} ({system.name})"


def entry_id(system: System) -> str:
    return f"hlimage-{system.name}"


def new_entry(system: System, prelude: list[str], *commands: str) -> MenuEntry:
    return MenuEntry(title(system), entry_id(system), [*prelude, *commands])


def stanza(
    system: System, layout: Layout | None = None, prelude: list[str] | None = None
) -> Stanza:
    """The menu entry that boots the description, from its binding."""
    policy.validate_domains(system)
    return binding.of(system).grub_stanza(system, layout or Layout(), prelude or [])


def probe_xen(system: System) -> XenImage:
    """The Xen image GRUB loads: the multiboot2 ELF on x86, xen.efi on arm64."""
    if system.arch is Arch.X86_64:
        if system.xen.multiboot is None:
            raise HlimageError(
                "[xen] multiboot: needed for GRUB on x86 (multiboot2 loads the ELF image); add "
                'multiboot = "xen.gz"',
                where=system.source,
            )
        return probe_multiboot(system.xen.multiboot)
    if system.xen.efi is None:
        raise HlimageError(
            "[xen] efi: needed for GRUB on arm64 (xen_hypervisor loads xen.efi); "
            'add efi = "xen.efi"',
            where=system.source,
        )
    return probe_efi(system.xen.efi)


def xen_cmdline(system: System, dom0_options: list[str]) -> str:
    return " ".join(part for part in [system.xen.cmdline, *dom0_options] if part)


def module_lines(
    paths: Paths, modules: list[PlannedFile], command: str, *, kernel_argv0: str = ""
) -> list[str]:
    """One load command per module: the kernel with its command line, initrds not unpacked
    (Xen and Linux want them as they are), the rest plain."""
    lines = []
    for module in modules:
        word = paths.add_module(module)
        if module.role is Role.KERNEL:
            lines.append(f"{command} {word} {kernel_argv0}{words(module.cmdline)}".rstrip())
        elif module.role is Role.RAMDISK:
            lines.append(f"{command} --nounzip {word}")
        else:
            lines.append(f"{command} {word}")
    return lines


def module_key(module: PlannedFile) -> str:
    if module.domain is None:
        return f"[xen] {module.role.value}"
    key = {Role.KERNEL: "kernel", Role.RAMDISK: "initrd", Role.PASSTHROUGH_DTB: "passthrough_dtb"}
    return f"{policy.domain_label(module.domain)} {key[module.role]}"


def check_dtb(system: System) -> None:
    assert system.xen.dtb is not None
    try:
        fdt.parse(system.xen.dtb.read_bytes())
    except (FormatError, OSError) as error:
        raise HlimageError(
            f"[xen] dtb: {error}; give a device tree blob", where=system.xen.dtb
        ) from None
