"""The x86 hyperlaunch launch control module (LCM), as the unmerged v6 parser reads it
(docs/xen-boot-formats.md 2.3), not as the design document names things.

The LCM is multiboot2 module 0; every other module follows in the order of `module_order`, and
the domain nodes refer to them by `module-index`. No released Xen has the parser: a released
Xen takes module 0 as dom0's kernel and panics, so outputs that boot this chain refuse a Xen
image without it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hlimage.errors import HlimageError
from hlimage.formats import fdt
from hlimage.formats.grubcfg import words
from hlimage.formats.payload import BytesPayload, Region
from hlimage.model import Arch, Binding, Domain, Mode, System
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing.messages import warn
from hlimage.xen import modules as boot_modules
from hlimage.xen import policy
from hlimage.xen.binding import EfiBoot, XenBinding
from hlimage.xen.dom0less import capability_mask

if TYPE_CHECKING:
    from hlimage.xen.grub_entry import Layout, Stanza

LCM_INDEX = 0
# xen/arch/x86/include/asm/bootinfo.h: MAX_NR_BOOTMODS 63; the parser rejects idx >= 63.
MAX_BOOT_MODULES = 63
# The v6 series builds only the first domain (MAX_NR_BOOTDOMS 1).
MAX_DOMAINS = 1
DOMID_FIRST_RESERVED = 0x7FF0
MODE_PV = 1
MODE_PVH = 0


@dataclass(frozen=True)
class Chain:
    """The multiboot2 module chain: index 0 is the LCM, then `modules` from index 1."""

    modules: list[PlannedFile]

    def index(self, module: PlannedFile) -> int:
        return self.modules.index(module) + 1


def module_order(system: System) -> Chain:
    modules = boot_modules.all_modules(system)
    if len(modules) + 1 > MAX_BOOT_MODULES:
        raise HlimageError(
            f"[[domain]]: the hyperlaunch chain would have {len(modules) + 1} modules (the LCM "
            f"included); Xen takes at most {MAX_BOOT_MODULES}, so boot fewer domains or "
            "initrd parts",
            where=system.source,
        )
    return Chain(modules)


def domids(system: System) -> dict[str, int]:
    """0 for the hardware domain (the v6 parser builds only domid 0), then 1, 2, ..."""
    ids: dict[str, int] = {}
    next_id = 1
    for domain in system.domains:
        if domain.is_hardware_domain:
            ids[domain.name] = 0
        else:
            ids[domain.name] = next_id
            next_id += 1
    return ids


def _mode(domain: Domain) -> int:
    # PV by default: a PVH hardware domain needs an IOMMU, which plain q35 and much hardware
    # lack ("iommu must be enabled for PVH hardware domain").
    return MODE_PVH if domain.mode is Mode.PVH else MODE_PV


def lcm_tree(system: System, chain: Chain) -> fdt.DeviceTree:
    tree = fdt.DeviceTree()
    hypervisor = tree.ensure("/chosen/hypervisor")
    hypervisor.set("compatible", fdt.string("hypervisor,xen"))
    ids = domids(system)
    if len(system.domains) > MAX_DOMAINS:
        warn(
            f"the LCM describes {len(system.domains)} domains; the hyperlaunch parser posted "
            f"for Xen (v6) builds only the first {MAX_DOMAINS}"
        )
    for domain in system.domains:
        label = policy.domain_label(domain)
        if domain.memory is None:
            raise HlimageError(
                f'{label} memory: is missing; add memory = "512M"', where=system.source
            )
        node = fdt.Node(domain.name)
        node.set("compatible", fdt.string("xen,domain"))
        node.set("domid", fdt.u32(ids[domain.name]))
        node.set("mode", fdt.u32(_mode(domain)))
        node.set("capabilities", fdt.u32(capability_mask(domain)))
        node.set("memory", fdt.u64(domain.memory // 1024))
        if domain.vcpus is not None:
            node.set("cpus", fdt.u32(domain.vcpus))
        for module in chain.modules:
            if module.domain != domain:
                continue
            if module.role is Role.PASSTHROUGH_DTB:
                raise HlimageError(
                    f"{label} passthrough_dtb: an Arm setting; remove it", where=system.source
                )
            child = fdt.Node(module.role.value)
            compatible = "multiboot,kernel" if module.role is Role.KERNEL else "multiboot,ramdisk"
            child.set("compatible", fdt.strings([compatible, "multiboot,module"]))
            child.set("module-index", fdt.u32(chain.index(module)))
            if module.role is Role.KERNEL and module.cmdline:
                child.set("bootargs", fdt.string(module.cmdline))
            node.add_child(child)
        hypervisor.add_child(node)
    return tree


def launch_tree_of(system: System) -> bytes:
    """The LCM of the description (`hlimage lcm` on x86), with a warning when the Xen it names
    cannot parse it."""
    from hlimage.xen.probe import probe_multiboot

    tree = lcm_tree(system, module_order(system))
    if system.xen.multiboot is not None:
        xen = probe_multiboot(system.xen.multiboot)
        if not xen.has_hyperlaunch:
            warn(
                f"{system.xen.multiboot}: this Xen ({xen.version_text}) has no hyperlaunch "
                "parser and cannot boot this LCM; it would take it as dom0's kernel"
            )
    return tree.build()


def _efi_refusal(system: System, what: str, formats: str) -> str:
    """Why no EFI path carries the LCM: Xen's EFI loader takes its modules from xen.cfg or
    its own sections, and reads no device tree on x86."""
    if len(system.domains) > 1:
        return what.format(
            count=len(system.domains), names=", ".join(d.name for d in system.domains)
        )
    return (
        '[image] binding: "hyperlaunch" needs the LCM, which Xen reads only as multiboot2 '
        f'module 0; Xen\'s EFI loader cannot take it: use {formats}, or binding = "classic"'
    )


class HyperlaunchBinding(XenBinding):
    kind = Binding.HYPERLAUNCH

    def validate(self, system: System) -> None:
        policy.require_arch(system, Arch.X86_64, "hyperlaunch", "dom0less")

    def efi_boot(
        self,
        system: System,
        modules: list[PlannedFile],
        version: tuple[int, int] | None,
        dtb_name: str,
    ) -> EfiBoot:
        raise self.refuse(
            system,
            _efi_refusal(
                system,
                "[[domain]]: an x86 ESP boots one domain, dom0 (Xen's EFI loader has no device "
                "tree on x86); for several domains use --format grub or grub-standalone "
                "(hyperlaunch)",
                "--format grub or grub-standalone",
            ),
        )

    def unified_sections(self, system: System) -> list[PlannedFile]:
        raise self.refuse(
            system,
            _efi_refusal(
                system,
                "[[domain]]: a unified image carries one domain, dom0, the description has "
                "{count} domain(s) ({names}); use --format grub or grub-standalone (hyperlaunch)",
                "--format grub or grub-standalone",
            ),
        )

    def grub_stanza(self, system: System, layout: Layout, prelude: list[str]) -> Stanza:
        return multiboot2_stanza(system, layout, prelude)

    def launch_tree(self, system: System) -> bytes:
        return launch_tree_of(system)


BINDING = HyperlaunchBinding()


def multiboot2_stanza(system: System, layout: Layout, prelude: list[str]) -> Stanza:
    """Xen by multiboot2 with the LCM as module 0 and every domain's modules after it."""
    from hlimage.xen import grub_entry

    xen = grub_entry.probe_xen(system)
    assert system.xen.multiboot is not None
    paths = grub_entry.Paths(system, layout)
    entry = grub_entry.new_entry(system, prelude, "insmod multiboot2", "insmod gzio")
    entry.lines += grub_entry.EFI_PLATFORM_OPTIONS
    xen_path = paths.add_file(
        system.xen.multiboot.name, Region(system.xen.multiboot), Role.XEN,
        key="[xen] multiboot",
    )  # fmt: skip
    if not xen.has_hyperlaunch:
        raise HlimageError(
            f"[xen] multiboot: this Xen ({xen.version_text}) has no hyperlaunch parser (no "
            "released Xen has one): it would take the LCM as dom0's kernel and panic; use a "
            "Xen built with the hyperlaunch series, or describe one dom0 for a classic boot",
            where=system.xen.multiboot,
        )
    chain = module_order(system)
    lcm = lcm_tree(system, chain).build()
    xen_args = grub_entry.xen_cmdline(system, [])
    entry.lines.append(f"multiboot2 {xen_path} placeholder {words(xen_args)} ${{xen_rm_opts}}")
    lcm_payload = BytesPayload(lcm, grub_entry.LCM_NAME)
    if layout.in_place:
        if layout.lcm_path is None:
            raise HlimageError("--lcm: in place, the LCM needs a path; write it with hlimage lcm")
        lcm_word = paths.add_file(grub_entry.LCM_NAME, lcm_payload, Role.LCM, key="--lcm",
                                  source=layout.lcm_path)  # fmt: skip
    else:
        lcm_word = paths.add_file(grub_entry.LCM_NAME, lcm_payload, Role.LCM, key="lcm")
    entry.lines.append(f"module2 {lcm_word}")
    for module in chain.modules:
        word = paths.add_module(module)
        # Arguments on a module line would override the LCM's bootargs (the v6 parser reads
        # bootargs only when the loader's string is empty).
        unzip = "--nounzip " if module.role is Role.RAMDISK else ""
        entry.lines.append(f"module2 {unzip}{word}")
    return grub_entry.Stanza(entry, paths.files, lcm)
