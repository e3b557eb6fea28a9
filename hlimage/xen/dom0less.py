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
from hlimage.model import Arch, Binding, Capability, Domain, SharedMemory, ShmRole, System
from hlimage.planned import PlannedFile, Role
from hlimage.xen import efi, policy
from hlimage.xen import host_tree as host
from hlimage.xen.binding import EfiBoot, XenBinding

if TYPE_CHECKING:
    from hlimage.xen.grub_entry import Layout, Stanza
    from hlimage.xen.probe import BuildConfig, XenEfi

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


def _probed(system: System) -> XenEfi | None:
    """The named xen.efi, for its patch release and build configuration (None: no xen.efi,
    so nothing is refused for want of either)."""
    from hlimage.xen.probe import probe_efi

    if system.xen.efi is None:
        return None
    try:
        return probe_efi(system.xen.efi)
    except HlimageError:
        # The outputs probe xen.efi themselves and say what is wrong with it; the tree alone
        # only loses what it would refuse for the build options.
        return None


def _release(version: tuple[int, int] | None, xen: XenEfi | None) -> tuple[int, ...] | None:
    if xen is not None and version is not None and xen.version == version:
        return xen.release
    return version


def static_regions(system: System) -> list[tuple[int, int]]:
    """Host memory the description gives away at boot (static memory, the static heap, shared
    memory at a host address), which nothing else may be loaded into."""
    regions = [(r.address, r.size) for r in system.xen.static_heap]
    for domain in system.domains:
        regions += [(r.address, r.size) for r in domain.static_mem]
        regions += [(s.host, s.size) for s in domain.shared_mem if s.host is not None]
    return sorted(set(regions))


def needs_tree_changes(system: System) -> bool:
    """Whether the host tree Xen gets differs from [xen] dtb: a node per dom0less domain, or
    what the description puts in /chosen (static heap, cpupools, dom0's shared memory and
    event channels)."""
    dom0 = classic_dom0(system)
    return bool(
        dt_domains(system)
        or system.xen.static_heap
        or system.cpupools
        or (dom0 is not None and (dom0.shared_mem or dom0.event_channels))
    )


def add_domains(
    system: System,
    tree: fdt.DeviceTree,
    modules: list[PlannedFile],
    version: tuple[int, int] | None,
    locate: ModuleLocator | None = None,
) -> None:
    """Add a `xen,domain` node per domain to /chosen, modules located by `locate` (by
    `xen,uefi-binary` when not given), and what the description puts in /chosen itself."""
    xen = _probed(system)
    writer = _Writer(system, tree, _release(version, xen), xen.build_config if xen else None)
    domains = dt_domains(system)
    if domains:
        writer.require("dom0less", "[[domain]]")
        if locate is None:
            writer.require("xen,uefi-binary", "[[domain]]")
    writer.check_system()
    writer.chosen_properties()
    writer.cpupools()
    nodes: dict[str, fdt.Node] = {}
    for domain in domains:
        node = writer.domain_node(domain)
        for module in modules:
            if module.domain == domain:
                node.add_child(_module_node(module, locate or uefi_binary))
        nodes[domain.name] = writer.chosen.add_child(node)
    dom0 = classic_dom0(system)
    if dom0 is not None:
        nodes[dom0.name] = writer.chosen
    # In the tree before these: their nodes get phandles, allocated above every one in it.
    writer.shared_memory(nodes)
    writer.event_channels(nodes)


class _Writer:
    """Writes the description into a host tree, refusing first what Xen would not boot."""

    def __init__(
        self,
        system: System,
        tree: fdt.DeviceTree,
        release: tuple[int, ...] | None,
        config: BuildConfig | None,
    ) -> None:
        self.system = system
        self.tree = tree
        self.release = release
        self.config = config
        self.chosen = tree.ensure("/chosen")
        self.pool_phandles: dict[str, int] = {}

    def fail(self, message: str) -> HlimageError:
        return HlimageError(message, where=self.system.source)

    def require(self, feature: str, key: str) -> None:
        policy.require_release(self.system, self.release, feature, key, xen_key=XEN_KEY)

    def require_build(self, feature: str, key: str, domain: str = "") -> None:
        policy.require_build_option(
            self.system, self.config, self.release, feature, key, domain=domain
        )

    # --- Checks over the whole description --------------------------------------------------

    def check_system(self) -> None:
        # What the named Xen cannot read at all is the first thing to say.
        for domain in dt_domains(self.system):
            if domain.capabilities:
                self.require("capabilities", f"{policy.domain_label(domain)} capabilities")
        dom0 = classic_dom0(self.system)
        if dom0 is not None:
            for key in policy.NODE_ONLY_KEYS:
                if getattr(dom0, key) not in (None, False, ()):
                    raise self.fail(
                        f"{policy.domain_label(dom0)} {key}: a classic dom0 comes through "
                        "xen.cfg and has no xen,domain node to carry it; remove it (Xen's "
                        "command line sets some of these for dom0: dom0_sve=, dom0-llc-colors=, "
                        "dom0_vcpus_pin)"
                    )
        self._check_xenstore()
        self._check_llc_colouring()
        self._check_memory()

    def _check_xenstore(self) -> None:
        """Xen builds xenstore pages for a domain with xen,enhanced "enabled" or "legacy", and
        panics at boot without a domain to run xenstored."""
        system = self.system
        for domain in dt_domains(system):
            if domain.enhanced is not None:
                self.require("xen,enhanced", f"{policy.domain_label(domain)} enhanced")
            if domain.enhanced == "legacy":
                self.require('xen,enhanced "legacy"', f"{policy.domain_label(domain)} enhanced")
        wanting = [d for d in dt_domains(system) if d.enhanced in policy.XENSTORE_ENHANCED]
        if not wanting or classic_dom0(system) is not None:
            return
        names = ", ".join(f'"{d.name}"' for d in wanting)
        release = self.release
        if release is not None and tuple(release[:2]) < policy.FIRST_RELEASE["capabilities"]:
            raise self.fail(
                f"[[domain]] enhanced: {names} ask for xenstore, which Xen {release[0]}."
                f'{release[1]} gives only beside a dom0 (it panics "At the moment, Xenstore '
                'support requires dom0 to be present"); add a dom0, or use enhanced = '
                '"no-xenstore"'
            )
        if not any(Capability.XENSTORE in d.capabilities for d in system.domains):
            raise self.fail(
                f"[[domain]] enhanced: {names} ask for xenstore, but no domain has the "
                '"xenstore" capability (Xen panics "xenstore requested, but xenstore domain not '
                'present"); give one domain capabilities = [..., "xenstore"] and run xenstored '
                'there, or use enhanced = "no-xenstore"'
            )

    def _check_llc_colouring(self) -> None:
        system = self.system
        coloured = [d for d in dt_domains(system) if d.colors is not None]
        for domain in coloured:
            self.require("llc-colors", f"{policy.domain_label(domain)} colors")
            self.require_build("llc-colors", f"{policy.domain_label(domain)} colors")
        if system.xen.colors is not None:
            self.require("xen-llc-colors", "[xen] colors")
            self.require_build("xen-llc-colors", "[xen] colors")
        if not coloured and system.xen.colors is None:
            return
        options = policy.cmdline_options(system.xen.cmdline)
        switch = options.get("llc_coloring")
        enabled = (switch is not None and switch in policy.XEN_TRUE) or (
            "llc_size" in options
            and "llc_nr_ways" in options
            and (switch is None or switch not in policy.XEN_FALSE)
        )
        key = f"{policy.domain_label(coloured[0])} colors" if coloured else "[xen] colors"
        if not enabled:
            what = (
                "Xen panics \"'llc-colors' found, but LLC coloring is disabled\""
                if coloured
                else "Xen ignores xen-llc-colors"
            )
            raise self.fail(
                f"{key}: LLC colouring is off unless Xen's command line turns it on ({what}); "
                "add llc-coloring=on to [xen] cmdline"
            )
        static = [d for d in dt_domains(system) if d.static_mem]
        if static:
            raise self.fail(
                f"{policy.domain_label(static[0])} static_mem: with LLC colouring on, Xen panics "
                '"LLC coloring and static memory are incompatible"; remove one of them'
            )

    def _check_memory(self) -> None:
        """Static memory, the static heap and shared memory at a host address are reserved at
        boot: each must lie in RAM, and none may overlap another or the host tree's reserved
        ranges (Xen: "Region: ... overlapping with bank", then "Early FDT parsing failed")."""
        system = self.system
        regions: list[tuple[int, int, str]] = []
        for index, heap in enumerate(system.xen.static_heap):
            regions.append((heap.address, heap.size, f"[xen] static_heap[{index}]"))
        seen_shm: dict[str, tuple[int | None, int, str]] = {}
        for domain in system.domains:
            label = policy.domain_label(domain)
            if domain.static_mem and not domain.is_classic_dom0:
                self.require("xen,static-mem", f"{label} static_mem")
                if domain.direct_map:
                    self.require("direct-map", f"{label} direct_map")
                    self.require_build("direct-map", f"{label} direct_map", domain.name)
                self.require_build("xen,static-mem", f"{label} static_mem", domain.name)
            if domain.shared_mem:
                self.require("xen,shared-mem", f"{label} shared_mem")
                self.require_build("xen,shared-mem", f"{label} shared_mem")
            for index, bank in enumerate(domain.static_mem):
                regions.append((bank.address, bank.size, f"{label} static_mem[{index}]"))
            for index, shm in enumerate(domain.shared_mem):
                key = f"{label} shared_mem[{index}]"
                earlier = seen_shm.get(shm.id)
                if earlier is None:
                    seen_shm[shm.id] = (shm.host, shm.size, key)
                    if shm.host is not None:
                        regions.append((shm.host, shm.size, key))
                elif earlier[:2] != (shm.host, shm.size):
                    raise self.fail(
                        f'{key}: region "{shm.id}" is at host {_where(shm.host)}, {shm.size:#x} '
                        f"bytes, but {earlier[2]} says {_where(earlier[0])}, {earlier[1]:#x} "
                        f'bytes (Xen: "xen,shm-id {shm.id} does not match for all the nodes '
                        'using the same region"); give every domain the same host and size'
                    )
        banks = host.memory_banks(self.tree)
        for address, length, key in regions:
            end = address + length
            if banks and not any(s <= address and end <= s + n for s, n in banks):
                listed = ", ".join(f"0x{s:x}-0x{s + n - 1:x}" for s, n in banks)
                raise self.fail(
                    f"{key}: 0x{address:x}-0x{end - 1:x} is not inside the RAM that [xen] dtb's "
                    f"/memory describes ({listed}); Xen cannot take memory that is not there "
                    '("Failed to allocate requested static memory"): move it into RAM'
                )
        reserved = [
            (start, size, "[xen] dtb's reserved memory")
            for start, size in host.reserved_ranges(self.tree)
        ]
        ours = [(start, size, key, True) for start, size, key in regions]
        theirs = [(start, size, key, False) for start, size, key in reserved]
        ordered = sorted(ours + theirs)
        for index, (a_start, a_size, a_key, a_ours) in enumerate(ordered):
            for b_start, b_size, b_key, b_ours in ordered[index + 1 :]:
                if b_start >= a_start + a_size:
                    break
                first, second = (a_key, b_key) if a_ours else (b_key, a_key)
                if not (a_ours or b_ours):
                    continue
                end = min(a_start + a_size, b_start + b_size) - 1
                raise self.fail(
                    f"{first}: overlaps {second} at 0x{b_start:x}-0x{end:x} (Xen panics "
                    '"Early FDT parsing failed" on overlapping reserved memory); give each '
                    "range memory of its own"
                )

    # --- /chosen ------------------------------------------------------------------------

    def chosen_cells(self) -> host.Cells:
        """The cells /chosen gives `xen,static-mem` and its own shared-memory nodes, set when
        the host tree has none as Xen's EFI stub and the U-Boot path set them (2 and 2), so
        that what is written here is read back the same way on every path."""
        for key in ("#address-cells", "#size-cells"):
            if self.chosen.get(key) is None:
                self.chosen.set(key, fdt.u32(2))
        return host.chosen_cells(self.tree)

    def chosen_properties(self) -> None:
        heap = self.system.xen.static_heap
        if not heap:
            return
        self.require("xen,static-heap", "[xen] static_heap")
        for index, bank in enumerate(heap):
            # booting.txt: "Note that at least a 64KB alignment is required."
            if bank.address % HEAP_ALIGN or bank.size % HEAP_ALIGN:
                raise self.fail(
                    f"[xen] static_heap[{index}]: 0x{bank.address:x} ({bank.size:#x} bytes) is "
                    "not 64 KiB aligned; Xen needs the static heap aligned to 64 KiB"
                )
        # With a static heap, Xen's heap is that memory only: every domain without static
        # memory is allocated from it (VERIFIED-RUN, 4.22: a 64 MiB heap and a 512 MiB dom0
        # panic "Failed to allocate requested dom0 memory").
        wanted = sum(
            d.memory for d in self.system.domains if not d.static_mem and d.memory is not None
        )
        heap_size = sum(bank.size for bank in heap)
        if wanted > heap_size:
            raise self.fail(
                f"[xen] static_heap: {heap_size >> 20} MiB, but the domains without static_mem "
                f"need {wanted >> 20} MiB of it, and Xen allocates them from the static heap "
                'alone (it panics "Failed to allocate requested dom0 memory", or fails to build '
                "the domU); give the heap more memory than the domains together"
            )
        # Read with the root's cells (process_chosen_node gets /chosen's parent's).
        value = self._encode(
            host.root_cells(self.tree),
            [(bank.address, bank.size) for bank in heap],
            "[xen] static_heap",
            "the root's",
        )
        self.chosen.set("xen,static-heap", value)

    def _encode(
        self, cells: host.Cells, pairs: list[tuple[int, int]], key: str, whose: str
    ) -> bytes:
        try:
            return cells.encode(*pairs)
        except ValueError:
            raise self.fail(
                f"{key}: does not fit in {whose} #address-cells/#size-cells ({cells.address}, "
                f"{cells.size}) in [xen] dtb, which Xen reads it with; raise them to 2 in the "
                "host tree"
            ) from None

    def cpupools(self) -> None:
        system = self.system
        if system.cpupools:
            self.require("xen,cpupool", "[[cpupool]]")
            self.require_build("xen,cpupool", "[[cpupool]]")
        cpus = {node.name: node for node in host.cpu_nodes(self.tree)}
        for pool in system.cpupools:
            label = f'[[cpupool]] "{pool.name}"'
            if self.chosen.child(pool.name) is not None:
                raise self.fail(
                    f"{label} name: [xen] dtb already has a /chosen/{pool.name} node; rename the "
                    "pool or remove the node"
                )
            if pool.scheduler is not None and self.config is not None:
                symbol = f"CONFIG_SCHED_{pool.scheduler.upper()}"
                if not self.config.enabled(symbol):
                    raise self.fail(
                        f"{label} scheduler: the Xen image was built without {symbol} "
                        f'({self.config.source}): Xen panics "Scheduler {pool.scheduler} does '
                        'not exists!"; pick a scheduler it has, or leave the key out'
                    )
            handles = []
            for cpu in pool.cpus:
                node = cpus.get(cpu)
                if node is None:
                    known = ", ".join(cpus) or "none"
                    raise self.fail(
                        f'{label} cpus: [xen] dtb has no CPU node /cpus/{cpu} (device_type "cpu"; '
                        f"it has {known}); name CPU nodes of the host tree"
                    )
                handles.append(_phandle_of(self.tree, node))
            node = self.chosen.add_child(fdt.Node(pool.name))
            node.set("compatible", fdt.string("xen,cpupool"))
            node.set("cpupool-cpus", fdt.cells(*handles))
            if pool.scheduler is not None:
                node.set("cpupool-sched", fdt.string(pool.scheduler))
            self.pool_phandles[pool.name] = _phandle_of(self.tree, node)

    # --- One domain ---------------------------------------------------------------------

    def domain_node(self, domain: Domain) -> fdt.Node:
        policy.validate_dom0less_domain(self.system, domain)
        label = policy.domain_label(domain)
        if self.chosen.child(domain.name) is not None:
            raise self.fail(
                f"{label} name: [xen] dtb already has a /chosen/{domain.name} node; rename the "
                "domain or remove the node"
            )
        assert domain.memory is not None and domain.vcpus is not None
        node = fdt.Node(domain.name)
        node.set("compatible", fdt.string("xen,domain"))
        node.set("#address-cells", fdt.u32(ADDRESS_CELLS))
        node.set("#size-cells", fdt.u32(SIZE_CELLS))
        node.set("memory", fdt.u64(domain.memory // 1024))
        node.set("cpus", fdt.u32(domain.vcpus))
        if domain.capabilities:
            self.require("capabilities", f"{label} capabilities")
            node.set("capabilities", fdt.u32(capability_mask(domain)))
        if domain.is_hardware_domain and not domain.direct_map:
            self._check_iommu(domain)
        if domain.vpl011:
            node.set("vpl011", fdt.empty())
        if domain.enhanced is not None:
            self.require("xen,enhanced", f"{label} enhanced")
            if domain.enhanced == "legacy":
                self.require('xen,enhanced "legacy"', f"{label} enhanced")
            node.set("xen,enhanced", fdt.string(domain.enhanced))
        if domain.passthrough is not None:
            self.require("passthrough", f"{label} passthrough")
            node.set("passthrough", fdt.string(domain.passthrough))
        if domain.nr_spis is not None:
            node.set("nr_spis", fdt.u32(domain.nr_spis))
        if domain.static_mem:
            self._static_memory(domain, node)
        if domain.direct_map:
            node.set("direct-map", fdt.empty())
        if domain.colors is not None:
            self.require("llc-colors", f"{label} colors")
            self.require_build("llc-colors", f"{label} colors")
            node.set("llc-colors", fdt.string(domain.colors))
        if domain.cpupool is not None:
            node.set("domain-cpupool", fdt.u32(self._cpupool_phandle(domain)))
        for key in ("max_grant_version", "max_grant_frames", "max_maptrack_frames"):
            value = getattr(domain, key)
            if value is not None:
                self.require(key, f"{label} {key}")
                node.set(key, fdt.u32(value))
        if domain.max_grant_version is not None and domain.max_grant_version > ARM_GRANT_VERSION:
            raise self.fail(
                f"{label} max_grant_version: Xen on Arm has grant tables of version "
                f"{ARM_GRANT_VERSION} only (GNTTAB_MAX_VERSION), and panics creating a domain "
                'that asks for more ("Error creating domain"); use 1'
            )
        if domain.sve is not None:
            self.require("sve", f"{label} sve")
            self.require_build("sve", f"{label} sve")
            node.set("sve", fdt.u32(domain.sve))
        if domain.trap_unmapped_accesses is not None:
            self.require("trap-unmapped-accesses", f"{label} trap_unmapped_accesses")
            node.set("trap-unmapped-accesses", fdt.u32(int(domain.trap_unmapped_accesses)))
        if domain.sci_type is not None:
            self.require("xen,sci_type", f"{label} sci_type")
            if domain.sci_type != "none":
                self.require_build("xen,sci_type", f"{label} sci_type")
            node.set("xen,sci_type", fdt.string(domain.sci_type))
        if domain.vcpu_affinity:
            self.require("xen,vcpu", f"{label} vcpu_affinity")
            self._vcpus(domain, node)
        return node

    def _static_memory(self, domain: Domain, node: fdt.Node) -> None:
        label = policy.domain_label(domain)
        self.require("xen,static-mem", f"{label} static_mem")
        if domain.direct_map:
            self.require("direct-map", f"{label} direct_map")
            self.require_build("direct-map", f"{label} direct_map", domain.name)
        self.require_build("xen,static-mem", f"{label} static_mem", domain.name)
        total = sum(bank.size for bank in domain.static_mem)
        if total != domain.memory:
            raise self.fail(
                f"{label} static_mem: {total:#x} bytes in all, but memory is {domain.memory:#x} "
                '(Xen prints: Size of "memory" property doesn\'t match up with the sum-up of '
                '"xen,static-mem", and panics "Failed to allocate requested static memory"); make '
                "memory the banks' sum"
            )
        for index, bank in enumerate(domain.static_mem):
            if bank.address % PAGE or bank.size % PAGE:
                raise self.fail(
                    f"{label} static_mem[{index}]: 0x{bank.address:x} ({bank.size:#x} bytes) is "
                    "not 4 KiB aligned; Xen takes static memory in whole pages"
                )
        value = self._encode(
            self.chosen_cells(),
            [(bank.address, bank.size) for bank in domain.static_mem],
            f"{label} static_mem",
            "/chosen's",
        )
        node.set("xen,static-mem", value)

    def _check_iommu(self, domain: Domain) -> None:
        """A hardware domain built from a node reaches its devices through the IOMMU unless it
        is direct-mapped (dom0less-bindings.c, 4.21 and newer)."""
        label = policy.domain_label(domain)
        panic = '(Xen panics "non-direct mapped hardware domain requires iommu")'
        fix = (
            "give Xen an IOMMU it drives (with stage-2 translation: QEMU 7.2's -machine "
            "virt,iommu=smmuv3 has stage 1 only, and Xen's SMMUv3 driver turns it down), or make "
            "the domain direct-mapped (static_mem and direct_map = true), or boot a classic dom0"
        )
        options = policy.cmdline_options(self.system.xen.cmdline)
        if "iommu" in options and options["iommu"] in policy.XEN_FALSE:
            raise self.fail(
                f"{label} capabilities: [xen] cmdline turns the IOMMU off (iommu=) and the "
                f"hardware domain is not direct-mapped {panic}; {fix}"
            )
        found = host.iommus(self.tree)
        if not found:
            raise self.fail(
                f"{label} capabilities: a hardware domain that is not direct-mapped needs an "
                f"IOMMU, and [xen] dtb has none {panic}; {fix}"
            )
        if self.config is None:
            return
        config = self.config
        if not any(not i.symbols or any(config.enabled(s) for s in i.symbols) for i in found):
            wanted = " or ".join(sorted({s for iommu in found for s in iommu.symbols}))
            raise self.fail(
                f"{label} capabilities: [xen] dtb's IOMMU ({found[0].path}, "
                f"{', '.join(found[0].compatible)}) needs {wanted}, which the Xen image was "
                f"built without ({config.source}) {panic}; {fix}"
            )

    def _vcpus(self, domain: Domain, node: fdt.Node) -> None:
        label = policy.domain_label(domain)
        assert domain.vcpus is not None
        if len(domain.vcpu_affinity) > domain.vcpus:
            raise self.fail(
                f"{label} vcpu_affinity: {len(domain.vcpu_affinity)} entries for {domain.vcpus} "
                f'vCPU(s) (Xen panics "Invalid vcpu_id {domain.vcpus} for domain {domain.name}, '
                f'max_vcpus={domain.vcpus}"); give one entry per vCPU'
            )
        host_cpus = len(host.cpu_nodes(self.tree))
        for index, affinity in enumerate(domain.vcpu_affinity):
            highest = max(int(n) for part in affinity.split(",") for n in part.split("-"))
            if host_cpus and highest >= host_cpus:
                raise self.fail(
                    f"{label} vcpu_affinity[{index}]: pCPU {highest}, but [xen] dtb has "
                    f'{host_cpus} CPU(s) (Xen panics "Invalid pCPU {highest} for domain '
                    f'{domain.name}"); name CPUs from 0 to {host_cpus - 1}'
                )
            vcpu = fdt.Node(f"vcpu{index}")
            vcpu.set("compatible", fdt.string("xen,vcpu"))
            vcpu.set("id", fdt.u32(index))
            vcpu.set("hard-affinity", fdt.string(affinity))
            node.add_child(vcpu)

    def _cpupool_phandle(self, domain: Domain) -> int:
        """`cpupool` names a [[cpupool]] of the description, or a `xen,cpupool` node already
        under /chosen of the host device tree."""
        name = domain.cpupool or ""
        label = policy.domain_label(domain)
        self.require("xen,cpupool", f"{label} cpupool")
        if name in self.pool_phandles:
            return self.pool_phandles[name]
        pool = self.chosen.child(name)
        compatible = fdt.as_strings(pool.get("compatible") or b"\0") if pool is not None else []
        if pool is None or "xen,cpupool" not in compatible:
            raise self.fail(
                f'{label} cpupool: no [[cpupool]] is named "{name}" and [xen] dtb has no '
                f'/chosen/{name} node with compatible "xen,cpupool"; describe the pool in a '
                "[[cpupool]] table, or add it to the host device tree"
            )
        self.require_build("xen,cpupool", f"{label} cpupool")
        return _phandle_of(self.tree, pool)

    # --- Between domains ----------------------------------------------------------------

    def shared_memory(self, nodes: dict[str, fdt.Node]) -> None:
        """One `xen,domain-shared-memory-v1` node per region a domain maps, under its node (a
        classic dom0's under /chosen), read with its parent's cells (static-shmem.c)."""
        owners: dict[str, str] = {}
        for domain in self.system.domains:
            if not domain.shared_mem:
                continue
            label = policy.domain_label(domain)
            self.require("xen,shared-mem", f"{label} shared_mem")
            self.require_build("xen,shared-mem", f"{label} shared_mem")
            parent = nodes[domain.name]
            if parent is self.chosen:
                cells = self.chosen_cells()
            else:
                cells = host.own_cells(parent, host.chosen_cells(self.tree))
            ids: set[str] = set()
            for index, shm in enumerate(domain.shared_mem):
                key = f"{label} shared_mem[{index}]"
                if shm.id in ids:
                    raise self.fail(
                        f'{key}: region "{shm.id}" is mapped twice by this domain; map it once'
                    )
                ids.add(shm.id)
                self._check_shm(domain, shm, key, owners)
                if shm.host is not None:
                    # <host guest size>: the host address takes address cells as well.
                    value = self._encode(
                        host.Cells(cells.address, cells.address),
                        [(shm.host, shm.guest)],
                        key,
                        "its parent's",
                    ) + self._encode(host.Cells(0, cells.size), [(0, shm.size)], key,
                                     "its parent's")  # fmt: skip
                else:
                    value = self._encode(cells, [(shm.guest, shm.size)], key, "its parent's")
                child = fdt.Node(_free_name(parent, f"shm-{_node_word(shm.id)}"))
                child.set("compatible", fdt.string("xen,domain-shared-memory-v1"))
                child.set("xen,shm-id", fdt.string(shm.id))
                child.set("xen,shared-mem", value)
                if shm.role is not None:
                    child.set("role", fdt.string(shm.role.value))
                parent.add_child(child)

    def _check_shm(
        self, domain: Domain, shm: SharedMemory, key: str, owners: dict[str, str]
    ) -> None:
        if shm.host is None:
            self.require("xen,shared-mem without a host address", f"{key}.host")
            if domain.direct_map:
                raise self.fail(
                    f'{key}.host: is missing, and the domain is direct-mapped (Xen: "host and '
                    'guest physical address must be supplied for direct-mapped domains"); give '
                    "host = guest"
                )
        elif domain.direct_map and shm.host != shm.guest:
            raise self.fail(
                f"{key}: host 0x{shm.host:x} and guest 0x{shm.guest:x} differ in a "
                'direct-mapped domain (Xen: "physical address ... and guest address ... are not '
                'direct-mapped"); give host = guest'
            )
        if shm.role is ShmRole.OWNER:
            if shm.id in owners:
                raise self.fail(
                    f'{key}.role: region "{shm.id}" has an owner already, "{owners[shm.id]}"; a '
                    "region has one owner, and the other domains borrow it"
                )
            owners[shm.id] = domain.name

    def event_channels(self, nodes: dict[str, fdt.Node]) -> None:
        """Both ends of each channel, each pointing at the other by phandle (static-evtchn.c:
        `xen,evtchn = <local-port &remote-end>`, compatible "xen,evtchn-v1")."""
        ends: dict[tuple[str, int], str] = {}
        pending = []
        for domain in self.system.domains:
            label = policy.domain_label(domain)
            for index, channel in enumerate(domain.event_channels):
                key = f"{label} event_channels[{index}]"
                self.require("xen,evtchn", key)
                self.require_build("xen,evtchn", key)
                peer = self.system.domain(channel.peer)
                assert peer is not None  # config checked the name
                sides = ((domain, channel.port, "port"), (peer, channel.peer_port, "peer_port"))
                for owner, port, field in sides:
                    limit = _evtchn_limit(owner)
                    if port > limit:
                        raise self.fail(
                            f'{key}.{field}: port {port} of "{owner.name}", but Xen gives a domU '
                            f'ports up to {limit} (max_evtchn_port) and panics "Could not set up '
                            'domains evtchn"; use a lower port'
                        )
                    if (owner.name, port) in ends:
                        raise self.fail(
                            f'{key}.{field}: port {port} of "{owner.name}" is taken by '
                            f'{ends[(owner.name, port)]} too (Xen panics "Could not set up '
                            'domains evtchn"); give each channel its own port'
                        )
                    ends[(owner.name, port)] = key
                pending.append((domain, channel.port, peer, channel.peer_port))
        for domain, port, peer, peer_port in pending:
            local = nodes[domain.name].add_child(
                fdt.Node(_free_name(nodes[domain.name], f"evtchn-{port}"))
            )
            remote = nodes[peer.name].add_child(
                fdt.Node(_free_name(nodes[peer.name], f"evtchn-{peer_port}"))
            )
            for node in (local, remote):
                node.set("compatible", fdt.string("xen,evtchn-v1"))
            local_handle = _phandle_of(self.tree, local)
            remote_handle = _phandle_of(self.tree, remote)
            local.set("xen,evtchn", fdt.cells(port, remote_handle))
            remote.set("xen,evtchn", fdt.cells(peer_port, local_handle))


HEAP_ALIGN = 64 << 10
PAGE = 4096
# xen/arch/arm/include/asm/grant_table.h: GNTTAB_MAX_VERSION 1.
ARM_GRANT_VERSION = 1
# dom0less-bindings.c: a domU's max_evtchn_port is 1023; the hardware and xenstore domains,
# and a classic dom0, have no limit below the 2-level ABI's.
DOMU_EVTCHN_PORTS = 1023


def _evtchn_limit(domain: Domain) -> int:
    from hlimage.config import MAX_EVTCHN_PORT

    if domain.is_classic_dom0 or domain.capabilities & {Capability.HARDWARE, Capability.XENSTORE}:
        return MAX_EVTCHN_PORT
    return DOMU_EVTCHN_PORTS


def _where(host: int | None) -> str:
    return "chosen by Xen" if host is None else f"0x{host:x}"


def _node_word(text: str) -> str:
    """A node name's characters (the devicetree spec's set) from free text."""
    return "".join(c if c.isalnum() or c in ",._+-" else "_" for c in text) or "x"


def _free_name(parent: fdt.Node, name: str) -> str:
    candidate, number = name, 2
    while parent.child(candidate) is not None:
        candidate = f"{name}-{number}"
        number += 1
    return candidate


def _phandle_of(tree: fdt.DeviceTree, node: fdt.Node) -> int:
    """The node's phandle, given one above every one in the tree if it has none (so a node
    must be in the tree before the next one is given its phandle)."""
    existing = node.get("phandle")
    if existing is not None:
        return fdt.as_u32(existing)
    handle = tree.allocate_phandle()
    node.set("phandle", fdt.u32(handle))
    return handle


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

            return host_dtb_boot(system, dom0, modules, dtb_name, version)
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
