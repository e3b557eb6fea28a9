"""The classic binding: one domain, dom0, with every capability.

Xen's EFI loader takes dom0 from xen.cfg (an ESP, or the unified image's `.config`); GRUB
loads it as the first module after Xen (multiboot2 on x86, xen_module on arm64).
"""

from __future__ import annotations

from hlimage.formats.grubcfg import words
from hlimage.formats.payload import Region
from hlimage.model import Arch, Binding, Domain, System
from hlimage.planned import PlannedFile, Role
from hlimage.xen import efi, grub_entry, policy
from hlimage.xen import modules as boot_modules
from hlimage.xen.binding import EfiBoot, XenBinding
from hlimage.xen.grub_entry import Layout, Paths, Stanza


def dom0_of(system: System) -> Domain:
    return system.domains[0]


class ClassicBinding(XenBinding):
    kind = Binding.CLASSIC

    def validate(self, system: System) -> None:
        if len(system.domains) != 1:
            raise self.refuse(
                system,
                f'[image] binding: "classic" carries one domain, the description has '
                f'{len(system.domains)}; use binding = "auto" or remove domains',
            )
        if not system.domains[0].is_classic_dom0:
            raise self.refuse(
                system,
                f"{policy.domain_label(system.domains[0])} capabilities: a classic boot's one "
                'domain is dom0 with all of "control", "hardware", "xenstore"',
            )

    def efi_boot(
        self,
        system: System,
        modules: list[PlannedFile],
        version: tuple[int, int] | None,
        dtb_name: str,
    ) -> EfiBoot:
        return host_dtb_boot(system, dom0_of(system), modules, dtb_name)

    def unified_sections(self, system: System) -> list[PlannedFile]:
        return efi.unified_sections(system, dom0_of(system))

    def grub_stanza(self, system: System, layout: Layout, prelude: list[str]) -> Stanza:
        if system.arch is Arch.X86_64:
            return multiboot2_stanza(system, layout, prelude)
        return xen_boot_stanza(system, layout, prelude)

    def unified_over_network(self, system: System, version: tuple[int, int] | None) -> bool:
        return efi.loads_unified_over_network(system.arch, version)

    def launch_tree(self, system: System) -> bytes:
        # `hlimage lcm` of a one-domain description: the tree Xen would read for it, the LCM
        # on x86 and the host tree (no domain nodes: dom0 comes by xen.cfg) on arm64.
        if system.arch is Arch.X86_64:
            from hlimage.xen import hyperlaunch

            return hyperlaunch.launch_tree_of(system)
        from hlimage.xen import dom0less

        return dom0less.launch_tree_of(system)


BINDING = ClassicBinding()


def host_dtb_boot(
    system: System, dom0: Domain | None, modules: list[PlannedFile], dtb_name: str
) -> EfiBoot:
    """xen.cfg for dom0, with the description's host device tree beside it (arm64)."""
    dtb = Region(system.xen.dtb) if system.xen.dtb is not None else None
    config = efi.esp_config(system, dom0, modules, dtb_name if dtb is not None else None)
    return EfiBoot(config, dtb)


def multiboot2_stanza(system: System, layout: Layout, prelude: list[str]) -> Stanza:
    """x86: Xen by multiboot2, dom0's kernel as the first module, then its initrd, then Xen's
    own modules (XSM, microcode)."""
    grub_entry.probe_xen(system)
    assert system.xen.multiboot is not None
    paths = Paths(system, layout)
    entry = grub_entry.new_entry(system, prelude, "insmod multiboot2", "insmod gzio")
    entry.lines += grub_entry.EFI_PLATFORM_OPTIONS
    xen_path = paths.add_file(
        system.xen.multiboot.name, Region(system.xen.multiboot), Role.XEN,
        key="[xen] multiboot",
    )  # fmt: skip
    dom0 = dom0_of(system)
    modules = boot_modules.all_modules(system)
    options = policy.dom0_xen_options(system, dom0)
    ucode = boot_modules.find(modules, Role.UCODE)
    if ucode is not None and "ucode" not in policy.cmdline_options(system.xen.cmdline):
        options.append("ucode=-1")  # the microcode module is the last one
    xen_args = grub_entry.xen_cmdline(system, options)
    entry.lines.append(f"multiboot2 {xen_path} placeholder {words(xen_args)} ${{xen_rm_opts}}")
    entry.lines += grub_entry.module_lines(paths, modules, "module2", kernel_argv0="placeholder ")
    return Stanza(entry, paths.files)


def xen_boot_stanza(system: System, layout: Layout, prelude: list[str]) -> Stanza:
    """arm64: xen_hypervisor loads xen.efi, xen_module each of dom0's modules."""
    grub_entry.probe_xen(system)
    assert system.xen.efi is not None
    dom0 = dom0_of(system)
    paths = Paths(system, layout)
    entry = grub_entry.new_entry(system, prelude, "insmod xen_boot")
    if system.xen.dtb is not None:
        grub_entry.check_dtb(system)
        # Under firmware that publishes only ACPI, Xen has no device tree without this line.
        dtb = paths.add_file(grub_entry.DTB_NAME, Region(system.xen.dtb), Role.DTB, key="[xen] dtb")
        entry.lines.append(f"devicetree {dtb}")
    xen_path = paths.add_file("xen.efi", Region(system.xen.efi), Role.XEN, key="[xen] efi")
    xen_args = grub_entry.xen_cmdline(system, policy.dom0_xen_options(system, dom0))
    entry.lines.append(f"xen_hypervisor {xen_path} {words(xen_args)}".rstrip())
    entry.lines += grub_entry.module_lines(paths, boot_modules.all_modules(system), "xen_module")
    return Stanza(entry, paths.files)
