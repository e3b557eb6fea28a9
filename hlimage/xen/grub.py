"""GRUB menu entries that boot a description: multiboot2 on x86 (classic or hyperlaunch),
xen_hypervisor / xen_module on arm64 (dom0 only). docs/xen-boot-formats.md 5.2-5.4 and GRUB's
20_linux_xen are the grammar: `placeholder` as argv0, initrds with --nounzip, the real initrd
first, `no-real-mode edd=off` on EFI platforms.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt
from hlimage.formats.grubcfg import MenuEntry, quote, words
from hlimage.model import Arch, Binding, System
from hlimage.streams import BytesPayload, Payload, Region
from hlimage.xen import hyperlaunch, policy
from hlimage.xen import modules as boot_modules
from hlimage.xen.modules import Module
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
class GrubFile:
    name: str
    """Path below the prefix (a bare file name in copy mode)."""
    payload: Payload
    role: str
    domain: str | None = None
    source: Path | None = None
    """The input file itself, where one is used as is."""


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
    files: list[GrubFile]
    lcm: bytes | None = None
    """The hyperlaunch LCM the entry loads as module 0, if any."""


def _join(prefix: str, name: str) -> str:
    if not prefix:
        return "/" + name
    return posixpath.join(prefix if prefix.endswith(("/", ")")) else prefix + "/", name)


class _Paths:
    def __init__(self, system: System, layout: Layout) -> None:
        self.system = system
        self.layout = layout
        self.files: list[GrubFile] = []
        self.names: set[str] = set()

    def add(self, name: str, payload: Payload, role: str, *, key: str, domain: str | None = None,
            source: Path | None = None) -> str:  # fmt: skip
        if self.layout.in_place:
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
        if name not in self.names:
            self.names.add(name)
            self.files.append(GrubFile(name, payload, role, domain, source))
        return quote(_join(self.layout.prefix, name))

    def add_module(self, module: Module, key: str) -> str:
        source = (
            module.payload.path
            if isinstance(module.payload, Region) and module.payload.offset == 0
            else None
        )
        return self.add(
            module.file_name, module.payload, module.role, key=key,
            domain=module.domain.name if module.domain else None, source=source,
        )  # fmt: skip


def title(system: System) -> str:
    if system.title:
        return system.title
    kind = " hyperlaunch" if system.resolved_binding is Binding.HYPERLAUNCH else ""
    return f"Xen{kind} ({system.name})"


def entry_id(system: System) -> str:
    return f"hlimage-{system.name}"


def stanza(
    system: System, layout: Layout | None = None, prelude: list[str] | None = None
) -> Stanza:
    layout = layout or Layout()
    policy.check_domains(system)
    if system.arch is Arch.X86_64:
        return _x86(system, layout, prelude or [])
    return _arm64(system, layout, prelude or [])


def probe_xen(system: System) -> XenImage:
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


def _xen_cmdline(system: System, dom0_options: list[str]) -> str:
    return " ".join(part for part in [system.xen.cmdline, *dom0_options] if part)


def _x86(system: System, layout: Layout, prelude: list[str]) -> Stanza:
    xen = probe_xen(system)
    assert system.xen.multiboot is not None
    paths = _Paths(system, layout)
    entry = MenuEntry(
        title(system), entry_id(system), [*prelude, "insmod multiboot2", "insmod gzio"]
    )
    entry.lines += EFI_PLATFORM_OPTIONS
    xen_path = paths.add(
        system.xen.multiboot.name, Region(system.xen.multiboot), "xen", key="[xen] multiboot",
        source=system.xen.multiboot,
    )  # fmt: skip
    binding = system.resolved_binding
    if binding is Binding.HYPERLAUNCH:
        if not xen.has_hyperlaunch:
            raise HlimageError(
                f"[xen] multiboot: this Xen ({xen.version_text}) has no hyperlaunch parser (no "
                "released Xen has one): it would take the LCM as dom0's kernel and panic; use a "
                "Xen built with the hyperlaunch series, or describe one dom0 for a classic boot",
                where=system.xen.multiboot,
            )
        chain = hyperlaunch.module_order(system)
        lcm = hyperlaunch.lcm_tree(system, chain).build()
        xen_args = _xen_cmdline(system, [])
        entry.lines.append(f"multiboot2 {xen_path} placeholder {words(xen_args)} ${{xen_rm_opts}}")
        if layout.in_place:
            if layout.lcm_path is None:
                raise HlimageError(
                    "--lcm: in place, the LCM needs a path; write it with hlimage lcm"
                )
            lcm_word = paths.add(LCM_NAME, BytesPayload(lcm, LCM_NAME), "lcm", key="--lcm",
                                 source=layout.lcm_path)  # fmt: skip
        else:
            lcm_word = paths.add(LCM_NAME, BytesPayload(lcm, LCM_NAME), "lcm", key="lcm")
        entry.lines.append(f"module2 {lcm_word}")
        for module in chain.modules:
            word = paths.add_module(module, _module_key(module))
            # Arguments on a module line would override the LCM's bootargs (the v6 parser
            # reads bootargs only when the loader's string is empty).
            unzip = "--nounzip " if module.role == boot_modules.RAMDISK else ""
            entry.lines.append(f"module2 {unzip}{word}")
        return Stanza(entry, paths.files, lcm)

    dom0 = system.domains[0]
    modules = boot_modules.all_modules(system)
    options = policy.dom0_xen_options(system, dom0)
    ucode = boot_modules.find(modules, boot_modules.UCODE)
    if ucode is not None and "ucode" not in policy.cmdline_options(system.xen.cmdline):
        options.append("ucode=-1")  # the microcode module is the last one
    xen_args = _xen_cmdline(system, options)
    entry.lines.append(f"multiboot2 {xen_path} placeholder {words(xen_args)} ${{xen_rm_opts}}")
    entry.lines += _module_lines(paths, modules, "module2", kernel_argv0="placeholder ")
    return Stanza(entry, paths.files)


def _module_lines(
    paths: _Paths, modules: list[Module], command: str, *, kernel_argv0: str = ""
) -> list[str]:
    """One load command per module: the kernel with its command line, initrds not unpacked
    (Xen and Linux want them as they are), the rest plain."""
    lines = []
    for module in modules:
        word = paths.add_module(module, _module_key(module))
        if module.role == boot_modules.KERNEL:
            lines.append(f"{command} {word} {kernel_argv0}{words(module.cmdline)}".rstrip())
        elif module.role == boot_modules.RAMDISK:
            lines.append(f"{command} --nounzip {word}")
        else:
            lines.append(f"{command} {word}")
    return lines


def _module_key(module: Module) -> str:
    if module.domain is None:
        return f"[xen] {module.role}"
    key = {"kernel": "kernel", "ramdisk": "initrd", "device-tree": "passthrough_dtb"}[module.role]
    return f"{policy.domain_label(module.domain)} {key}"


def _arm64(system: System, layout: Layout, prelude: list[str]) -> Stanza:
    probe_xen(system)
    assert system.xen.efi is not None
    if len(system.domains) != 1 or not system.domains[0].is_classic_dom0:
        raise HlimageError(
            "[[domain]]: GRUB on arm64 boots dom0 only (xen_module cannot describe dom0less "
            "domUs); use --format esp or disk for several domains",
            where=system.source,
        )
    dom0 = system.domains[0]
    paths = _Paths(system, layout)
    entry = MenuEntry(title(system), entry_id(system), [*prelude, "insmod xen_boot"])
    if system.xen.dtb is not None:
        _check_dtb(system)
        # Under firmware that publishes only ACPI, Xen has no device tree without this line.
        dtb = paths.add(DTB_NAME, Region(system.xen.dtb), "dtb", key="[xen] dtb",
                        source=system.xen.dtb)  # fmt: skip
        entry.lines.append(f"devicetree {dtb}")
    xen_path = paths.add(
        "xen.efi", Region(system.xen.efi), "xen", key="[xen] efi", source=system.xen.efi
    )
    xen_args = _xen_cmdline(system, policy.dom0_xen_options(system, dom0))
    entry.lines.append(f"xen_hypervisor {xen_path} {words(xen_args)}".rstrip())
    entry.lines += _module_lines(paths, boot_modules.all_modules(system), "xen_module")
    return Stanza(entry, paths.files)


def _check_dtb(system: System) -> None:
    assert system.xen.dtb is not None
    try:
        fdt.parse(system.xen.dtb.read_bytes())
    except (FormatError, OSError) as error:
        raise HlimageError(
            f"[xen] dtb: {error}; give a device tree blob", where=system.xen.dtb
        ) from None
