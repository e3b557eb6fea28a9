"""The x86 hyperlaunch launch control module (LCM), as the unmerged v6 parser reads it
(docs/xen-boot-formats.md 2.3), not as the design document names things.

The LCM is multiboot2 module 0; every other module follows in the order of `module_order`, and
the domain nodes refer to them by `module-index`. No released Xen has the parser: a released
Xen takes module 0 as dom0's kernel and panics, so outputs that boot this chain refuse a Xen
image without it.
"""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.errors import HlimageError
from hlimage.formats import fdt
from hlimage.messages import warn
from hlimage.model import Domain, Mode, System
from hlimage.xen import modules as boot_modules
from hlimage.xen import policy
from hlimage.xen.dom0less import capability_mask
from hlimage.xen.modules import Module

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

    modules: list[Module]

    def index(self, module: Module) -> int:
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
            if module.role == boot_modules.PASSTHROUGH_DTB:
                raise HlimageError(
                    f"{label} passthrough_dtb: an Arm setting; remove it", where=system.source
                )
            child = fdt.Node(module.role)
            compatible = (
                "multiboot,kernel" if module.role == boot_modules.KERNEL else "multiboot,ramdisk"
            )
            child.set("compatible", fdt.strings([compatible, "multiboot,module"]))
            child.set("module-index", fdt.u32(chain.index(module)))
            if module.role == boot_modules.KERNEL and module.cmdline:
                child.set("bootargs", fdt.string(module.cmdline))
            node.add_child(child)
        hypervisor.add_child(node)
    return tree
