"""The Arm dom0less binding: domains as `xen,domain` nodes under /chosen of the host device
tree (docs/misc/arm/device-tree/booting.txt; docs/xen-boot-formats.md 3.2-3.4).

On UEFI, module nodes name their files with `xen,uefi-binary`; Xen's EFI stub reads them from
xen.efi's directory and writes `reg` itself. A classic dom0 (all capabilities) comes through
xen.cfg instead, so that the same ESP also carries its command line.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt
from hlimage.formats.payload import BytesPayload
from hlimage.model import Arch, Binding, Capability, Domain, System
from hlimage.planned import PlannedFile, Role
from hlimage.xen import efi, policy
from hlimage.xen.binding import EfiBoot, XenBinding

if TYPE_CHECKING:
    from hlimage.xen.grub_entry import Layout, Stanza

CAPABILITY_BITS = {Capability.CONTROL: 1, Capability.HARDWARE: 2, Capability.XENSTORE: 4}
# Two cells each: Xen's EFI stub writes each module's `reg` with the domain node's cells, and
# RAM above 4 GiB would not fit in one.
ADDRESS_CELLS = 2
SIZE_CELLS = 2
XEN_KEY = "[xen] efi"


def capability_mask(domain: Domain) -> int:
    return sum(CAPABILITY_BITS[c] for c in domain.capabilities)


def host_tree(system: System) -> fdt.DeviceTree:
    if system.xen.dtb is None:
        raise HlimageError(
            "[xen] dtb: needed for dom0less domains: the host device tree the domain nodes are "
            "added to (QEMU: -machine dumpdtb=FILE)",
            where=system.source,
        )
    try:
        return fdt.parse(system.xen.dtb.read_bytes())
    except FormatError as error:
        raise HlimageError(
            f"[xen] dtb: {error}; give a device tree blob", where=system.xen.dtb
        ) from None
    except OSError as error:
        raise HlimageError(
            f"[xen] dtb: cannot read: {error.strerror}", where=system.xen.dtb
        ) from None


def dt_domains(system: System) -> list[Domain]:
    """The domains that become device-tree nodes: every one but a classic dom0."""
    return [d for d in system.domains if not d.is_classic_dom0]


def _cells(address: int, size: int) -> bytes:
    return fdt.cells(address >> 32, address & 0xFFFFFFFF, size >> 32, size & 0xFFFFFFFF)


ModuleLocator = Callable[[PlannedFile, fdt.Node], None]
"""Says where a module node's file is: sets the property that locates it, and may rename the
node (a node with `reg` takes its address as unit name)."""


def uefi_binary(module: PlannedFile, node: fdt.Node) -> None:
    """UEFI: Xen's EFI stub reads the file from xen.efi's directory and writes `reg` itself."""
    node.set("xen,uefi-binary", fdt.string(module.name))


def add_domains(
    system: System,
    tree: fdt.DeviceTree,
    modules: list[PlannedFile],
    version: tuple[int, int] | None,
    locate: ModuleLocator | None = None,
) -> None:
    """Add a `xen,domain` node per domain to /chosen, modules located by `locate` (by
    `xen,uefi-binary` when not given)."""
    chosen = tree.ensure("/chosen")
    domains = dt_domains(system)
    if domains:
        policy.require_release(system, version, "dom0less", "[[domain]]", xen_key=XEN_KEY)
        if locate is None:
            policy.require_release(
                system, version, "xen,uefi-binary", "[[domain]]", xen_key=XEN_KEY
            )
    for domain in domains:
        policy.validate_dom0less_domain(system, domain)
        label = policy.domain_label(domain)
        if chosen.child(domain.name) is not None:
            raise HlimageError(
                f"{label} name: [xen] dtb already has a /chosen/{domain.name} node; rename the "
                "domain or remove the node",
                where=system.source,
            )
        assert domain.memory is not None and domain.vcpus is not None
        node = fdt.Node(domain.name)
        node.set("compatible", fdt.string("xen,domain"))
        node.set("#address-cells", fdt.u32(ADDRESS_CELLS))
        node.set("#size-cells", fdt.u32(SIZE_CELLS))
        node.set("memory", fdt.u64(domain.memory // 1024))
        node.set("cpus", fdt.u32(domain.vcpus))
        if domain.capabilities:
            policy.require_release(
                system, version, "capabilities", f"{label} capabilities", xen_key=XEN_KEY
            )
            node.set("capabilities", fdt.u32(capability_mask(domain)))
        if domain.vpl011:
            node.set("vpl011", fdt.empty())
        if domain.enhanced is not None:
            policy.require_release(
                system, version, "xen,enhanced", f"{label} enhanced", xen_key=XEN_KEY
            )
            node.set("xen,enhanced", fdt.string(domain.enhanced))
        if domain.passthrough is not None:
            node.set("passthrough", fdt.string(domain.passthrough))
        if domain.nr_spis is not None:
            node.set("nr_spis", fdt.u32(domain.nr_spis))
        if domain.static_mem:
            node.set(
                "xen,static-mem",
                b"".join(_cells(r.address, r.size) for r in domain.static_mem),
            )
        if domain.direct_map:
            node.set("direct-map", fdt.empty())
        if domain.colors is not None:
            policy.require_release(
                system, version, "llc-colors", f"{label} colors", xen_key=XEN_KEY
            )
            node.set("llc-colors", fdt.string(domain.colors))
        if domain.cpupool is not None:
            node.set("domain-cpupool", fdt.u32(_cpupool_phandle(system, tree, domain)))
        for module in modules:
            if module.domain == domain:
                node.add_child(_module_node(module, locate or uefi_binary))
        chosen.add_child(node)


MODULE_COMPATIBLE = {
    Role.KERNEL: ("kernel", "multiboot,kernel"),
    Role.RAMDISK: ("ramdisk", "multiboot,ramdisk"),
    Role.PASSTHROUGH_DTB: ("device-tree", "multiboot,device-tree"),
}


def _module_node(module: PlannedFile, locate: ModuleLocator) -> fdt.Node:
    name, compatible = MODULE_COMPATIBLE[module.role]
    node = fdt.Node(name)
    node.set("compatible", fdt.strings([compatible, "multiboot,module"]))
    locate(module, node)
    if module.role is Role.KERNEL and module.cmdline:
        node.set("bootargs", fdt.string(module.cmdline))
    return node


def _cpupool_phandle(system: System, tree: fdt.DeviceTree, domain: Domain) -> int:
    """`cpupool` names a `xen,cpupool` node under /chosen of the host device tree."""
    chosen = tree.ensure("/chosen")
    pool = chosen.child(domain.cpupool or "")
    compatible = fdt.as_strings(pool.get("compatible") or b"\0") if pool is not None else []
    if pool is None or "xen,cpupool" not in compatible:
        raise HlimageError(
            f"{policy.domain_label(domain)} cpupool: [xen] dtb has no /chosen/{domain.cpupool} "
            'node with compatible "xen,cpupool"; add the pool to the host device tree',
            where=system.source,
        )
    existing = pool.get("phandle")
    if existing is not None:
        return fdt.as_u32(existing)
    handle = tree.allocate_phandle()
    pool.set("phandle", fdt.u32(handle))
    return handle


def classic_dom0(system: System) -> Domain | None:
    """The dom0 that comes through xen.cfg rather than a device-tree node."""
    return next((d for d in system.domains if d.is_classic_dom0), None)


def launch_tree_of(system: System) -> bytes:
    """The host device tree with a node per dom0less domain (`hlimage lcm` on arm64)."""
    from hlimage.xen import modules as boot_modules
    from hlimage.xen.probe import probe_efi

    version = probe_efi(system.xen.efi).version if system.xen.efi is not None else None
    tree = host_tree(system)
    add_domains(system, tree, boot_modules.all_modules(system), version)
    return tree.build()


class Dom0lessBinding(XenBinding):
    kind = Binding.DOM0LESS

    def validate(self, system: System) -> None:
        policy.require_arch(system, Arch.ARM64, "dom0less", "hyperlaunch")

    def efi_boot(
        self,
        system: System,
        modules: list[PlannedFile],
        version: tuple[int, int] | None,
        dtb_name: str,
    ) -> EfiBoot:
        dom0 = classic_dom0(system)
        if not dt_domains(system):
            from hlimage.xen.classic import host_dtb_boot

            return host_dtb_boot(system, dom0, modules, dtb_name)
        tree = host_tree(system)
        add_domains(system, tree, modules, version)
        config = efi.esp_config(system, dom0, modules, dtb_name)
        return EfiBoot(config, BytesPayload(tree.build(), dtb_name))

    def unified_sections(self, system: System) -> list[PlannedFile]:
        dom0 = classic_dom0(system)
        if dt_domains(system) or dom0 is None:
            raise self.refuse(
                system,
                f"[[domain]]: a unified image carries one domain, dom0, the description has "
                f"{len(system.domains)} domain(s) ({', '.join(d.name for d in system.domains)}); "
                "use --format esp or disk (domUs are loaded from files beside xen.efi)",
            )
        return efi.unified_sections(system, dom0)

    def grub_stanza(self, system: System, layout: Layout, prelude: list[str]) -> Stanza:
        from hlimage.xen import classic, grub_entry

        grub_entry.probe_xen(system)
        if dt_domains(system):
            raise self.refuse(
                system,
                "[[domain]]: GRUB on arm64 boots dom0 only (xen_module cannot describe dom0less "
                "domUs); use --format esp or disk for several domains",
            )
        return classic.xen_boot_stanza(system, layout, prelude)

    def launch_tree(self, system: System) -> bytes:
        return launch_tree_of(system)


BINDING = Dom0lessBinding()
