"""Booting Xen on arm64 from U-Boot: where everything is loaded, and the host device tree.

U-Boot reads the boot script or the FIT to `scriptaddr` (0x40200000 on QEMU virt). Above it
this packs Xen, the host device tree and then every module, each 2 MiB aligned (the alignment
that was booted: uboot.md), inside the /memory of the host tree and outside its
/reserved-memory and /memreserve/ ranges, below the top of memory that U-Boot keeps for itself:
it relocates near the top of the first bank, and puts its copy of the device tree for Xen just
below that.

The host device tree is written offline with everything Xen reads from /chosen:
`xen,xen-bootargs`, `xen,dom0-bootargs`, dom0's module nodes with `reg` at their load
addresses, the XSM policy, and dom0less domains as `xen,domain` nodes whose module nodes have
`reg` in place of `xen,uefi-binary`. Dom0's nodes come first: Xen 4.20 boots no dom0 when a
domU's module node comes before its own and the two share a kernel, and domain ids follow the
order of the nodes. Every module has its own load address, so each domain has its own copy of
a kernel that several share.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from hlimage.errors import HlimageError
from hlimage.formats import align_up, fdt, linux
from hlimage.formats.payload import Region
from hlimage.model import Arch, System
from hlimage.planned import Role
from hlimage.xen import dom0less, efi
from hlimage.xen.modules import Module

SCRIPTADDR = 0x40200000
"""U-Boot's default `scriptaddr` on QEMU virt: where the script or FIT is read to."""
ALIGN = 2 << 20
UBOOT_RESERVE = 64 << 20
"""Top of the bank kept free. QEMU virt's U-Boot (2023.01, 2 GiB) relocates itself from about
0xbddb2000 up, 34 MiB below the top; loads below 0xbdd00000 were booted."""
SCRIPTADDR_KEY = "[uboot] scriptaddr"
RESERVE_KEY = "[uboot] reserve"
START_KEY = "[uboot] memory_start"
END_KEY = "[uboot] memory_end"
KEPT_LABEL = "kept for U-Boot"
DTB_KEY = "[xen] dtb"
XEN_KEY = "[xen] efi"
XSM_COMPATIBLE = "xen,xsm-policy"


@dataclass(frozen=True)
class Slot:
    """One thing in memory: what it is, where it is loaded and how many bytes it takes."""

    label: str
    address: int
    size: int
    module: Module | None = None

    @property
    def end(self) -> int:
        return self.address + self.size


@dataclass(frozen=True)
class MemoryPlan:
    bank: tuple[int, int]
    """The /memory range (address, size) everything is loaded in: the one holding scriptaddr."""
    limit: int
    """The first address left to U-Boot: the bank's end less its reserve."""
    script: Slot
    """The script or FIT at scriptaddr."""
    xen: Slot
    dtb: Slot
    modules: tuple[Slot, ...]
    """In the order of the modules given."""
    reserved: tuple[tuple[int, int], ...]
    """/reserved-memory and /memreserve/ ranges inside the bank, which nothing overlaps."""
    limit_label: str = KEPT_LABEL
    """What lies from `limit` to the bank's end: U-Boot's reserve, or what [uboot] memory_end
    leaves out."""

    def slot_of(self, module: Module) -> Slot:
        for slot in self.modules:
            if slot.module is module:
                return slot
        raise KeyError(module.name)

    @property
    def slots(self) -> tuple[Slot, ...]:
        return (self.script, self.xen, self.dtb, *self.modules)

    @property
    def end(self) -> int:
        return max(slot.end for slot in self.slots)


def scriptaddr_of(system: System) -> int:
    return SCRIPTADDR if system.uboot.scriptaddr is None else system.uboot.scriptaddr


def reserve_of(system: System) -> int:
    return UBOOT_RESERVE if system.uboot.reserve is None else system.uboot.reserve


def module_label(module: Module) -> str:
    owner = module.domain.name if module.domain is not None else "xen"
    return f"{owner} {module.role.value}"


def _host_tree(system: System) -> fdt.DeviceTree:
    if system.xen.dtb is None:
        raise HlimageError(
            f"{DTB_KEY}: needed for a U-Boot boot: the host device tree that U-Boot hands Xen, "
            "with the boot modules in /chosen (QEMU: -machine dumpdtb=FILE)",
            where=system.source,
        )
    return dom0less.host_tree(system)


def _root_cells(tree: fdt.DeviceTree, node: fdt.Node | None = None) -> tuple[int, int]:
    """#address-cells and #size-cells of a node's children (the devicetree spec's 2 and 1
    where absent)."""
    source = node if node is not None else tree.root
    address = source.get("#address-cells")
    size = source.get("#size-cells")
    return (
        fdt.as_u32(address) if address is not None else 2,
        fdt.as_u32(size) if size is not None else 1,
    )


def _ranges(value: bytes, cells: tuple[int, int]) -> list[tuple[int, int]]:
    address_cells, size_cells = cells
    words = fdt.as_cells(value)
    step = address_cells + size_cells
    if not step or len(words) % step:
        raise ValueError("reg is not whole (address, size) pairs")
    out = []
    for index in range(0, len(words), step):
        address = _join(words[index : index + address_cells])
        size = _join(words[index + address_cells : index + step])
        out.append((address, size))
    return out


def _join(words: Sequence[int]) -> int:
    value = 0
    for word in words:
        value = (value << 32) | word
    return value


def memory_banks(system: System, tree: fdt.DeviceTree) -> list[tuple[int, int]]:
    """The RAM ranges of the host tree's /memory nodes, lowest first."""
    cells = _root_cells(tree)
    banks: list[tuple[int, int]] = []
    for node in tree.root.children:
        kind = node.get("device_type")
        if kind is None or kind.rstrip(b"\0") != b"memory" or node.get("reg") is None:
            continue
        try:
            banks += _ranges(node.properties["reg"], cells)
        except (ValueError, HlimageError):
            raise HlimageError(
                f"{DTB_KEY}: /{node.name} has a reg that is not (address, size) pairs of "
                "the root's #address-cells and #size-cells; give a well-formed host tree",
                where=system.xen.dtb,
            ) from None
    if not banks:
        raise HlimageError(
            f"{DTB_KEY}: has no /memory node, so nothing says where RAM is; give the tree the "
            "machine boots with (QEMU: -machine dumpdtb=FILE)",
            where=system.xen.dtb,
        )
    return sorted(bank for bank in banks if bank[1])


def reserved_ranges(tree: fdt.DeviceTree) -> list[tuple[int, int]]:
    """/memreserve/ entries and /reserved-memory children with `reg`."""
    ranges = list(tree.reservations)
    parent = tree.node("/reserved-memory")
    if parent is not None:
        cells = _root_cells(tree, parent)
        for child in parent.children:
            reg = child.get("reg")
            if reg is not None:
                try:
                    ranges += _ranges(reg, cells)
                except (ValueError, HlimageError):
                    continue  # Linux skips such a node too; nothing to avoid but what it says
    return sorted(ranges)


def _xen_size(system: System) -> int:
    """Xen takes its Image header's image_size (with BSS) where booti puts it, if larger."""
    if system.xen.efi is None:
        raise HlimageError(f"{XEN_KEY}: missing; U-Boot's booti starts Xen's arm64 binary")
    region = Region(system.xen.efi)
    header = linux.parse_arm64(region.head(64))
    image_size = header.image_size if header is not None else 0
    return max(region.length, image_size)


def _module_sizes(modules: Sequence[Module], sizes: Sequence[int] | None) -> list[int]:
    if sizes is not None:
        if len(sizes) != len(modules):
            raise ValueError(f"{len(sizes)} sizes for {len(modules)} modules")
        return list(sizes)
    out = []
    for module in modules:
        exact = module.payload.exact_size
        if exact is None:
            # `reg` must say the module's exact length: a payload made at build time (an initrd
            # compressed with lz4) has to be written out first and its size passed in.
            raise ValueError(f"module {module.name} has no known size; pass sizes")
        out.append(exact)
    return out


class _Packer:
    def __init__(self, start: int, limit: int, reserved: Sequence[tuple[int, int]]) -> None:
        self.next = start
        self.limit = limit
        self.reserved = reserved

    def place(self, size: int) -> int:
        address = align_up(self.next, ALIGN)
        moved = True
        while moved:
            moved = False
            for start, length in self.reserved:
                if address < start + length and start < address + max(size, 1):
                    address = align_up(start + length, ALIGN)
                    moved = True
        self.next = address + size
        return address


def plan(
    system: System,
    modules: Sequence[Module],
    *,
    script_size: int,
    module_sizes: Sequence[int] | None = None,
    scriptaddr: int | None = None,
    uboot_reserve: int | None = None,
    version: tuple[int, int] | None = None,
) -> MemoryPlan:
    """Load addresses for Xen, the host tree and every module, packed above the script.

    `script_size` is the size of what U-Boot reads to scriptaddr: the boot script, or the FIT
    that holds everything (whose size does not depend on the load addresses it carries while
    they stay below 4 GiB, so it can be measured with placeholder addresses first).
    `module_sizes` gives the modules' final sizes where a payload's is known only once it is
    written. Errors name the least memory that would be enough.
    """
    if system.arch is not Arch.ARM64:
        raise HlimageError(
            f"[image] arch: hlimage boots Xen from U-Boot on arm64 only (booti), not "
            f'"{system.arch.value}"; use a UEFI format (unified, esp, disk, pxe) or grub',
            where=system.source,
        )
    scriptaddr = scriptaddr_of(system) if scriptaddr is None else scriptaddr
    uboot_reserve = reserve_of(system) if uboot_reserve is None else uboot_reserve
    tree = _host_tree(system)
    sizes = _module_sizes(modules, module_sizes)
    banks = memory_banks(system, tree)
    bank = next((b for b in banks if b[0] <= scriptaddr < b[0] + b[1]), None)
    if bank is None:
        listed = ", ".join(f"0x{start:x}+0x{size:x}" for start, size in banks)
        raise HlimageError(
            f"{DTB_KEY}: U-Boot reads the boot script to 0x{scriptaddr:x}, which no /memory "
            f"range holds ({listed}); give the board's scriptaddr as {SCRIPTADDR_KEY}, or the "
            "host tree of the machine U-Boot runs on",
            where=system.xen.dtb,
        )
    bank_end = bank[0] + bank[1]
    if uboot_reserve >= bank_end - scriptaddr:
        raise HlimageError(
            f"{RESERVE_KEY}: {_mib(uboot_reserve)} MiB is all the RAM above U-Boot's scriptaddr "
            f"0x{scriptaddr:x} (the bank ends at 0x{bank_end:x}); give a smaller reserve",
            where=system.source,
        )
    limit, limit_label = bank_end - uboot_reserve, KEPT_LABEL
    window = system.uboot
    for key, value in ((START_KEY, window.memory_start), (END_KEY, window.memory_end)):
        if value is not None and not bank[0] <= value <= bank_end:
            raise HlimageError(
                f"{key}: 0x{value:x} is outside the RAM that holds U-Boot's scriptaddr "
                f"(0x{bank[0]:x}-0x{bank_end - 1:x} in {DTB_KEY}); give an address in it",
                where=system.source,
            )
    if window.memory_end is not None and window.memory_end < limit:
        limit, limit_label = window.memory_end, f"above {END_KEY}"
    # What the description reserves for domains and Xen's heap is off limits too: a module
    # loaded there would be overwritten, or Xen would refuse the overlap.
    reserved = tuple(
        (start, size)
        for start, size in sorted(reserved_ranges(tree) + dom0less.static_regions(system))
        if start < bank_end and start + size > bank[0]
    )
    script = Slot("boot script / FIT", scriptaddr, script_size)
    for start, size in reserved:
        if start < script.address + max(script.size, 1) and script.address < start + size:
            raise HlimageError(
                f"{DTB_KEY}: reserves 0x{start:x}-0x{start + size - 1:x}, where U-Boot reads the "
                f"boot script or FIT (from scriptaddr 0x{scriptaddr:x}); give the board's "
                f"scriptaddr as {SCRIPTADDR_KEY}, or fix the tree's /reserved-memory",
                where=system.xen.dtb,
            )
    # A domain's static memory is its RAM once Xen runs: nothing is loaded there either.
    static = tuple(
        (memory.address, memory.size) for domain in system.domains for memory in domain.static_mem
    )
    # Nothing goes below memory_start, nor over the script or FIT U-Boot is running from.
    first = max(scriptaddr + script_size, window.memory_start or 0)
    packer = _Packer(first, limit, tuple(sorted(reserved + static)))
    xen_size = _xen_size(system)
    xen = Slot("xen", packer.place(xen_size), xen_size)
    # The tree's size depends on the addresses only through its nodes' unit names: written with
    # the longest addresses the cells hold, it bounds the real one.
    widest = _widest_address(tree)
    probe = [Slot(module_label(m), widest, size, m) for m, size in zip(modules, sizes, strict=True)]
    bound = len(_tree_with(system, tree, probe, version).build())
    dtb = Slot("host device tree", packer.place(bound), bound)
    slots = []
    for module, size in zip(modules, sizes, strict=True):
        slots.append(Slot(module_label(module), packer.place(size), size, module))
    memory_plan = MemoryPlan(bank, limit, script, xen, dtb, tuple(slots), reserved, limit_label)
    _check_fits(system, memory_plan, scriptaddr, uboot_reserve)
    return memory_plan


def _widest_address(tree: fdt.DeviceTree) -> int:
    chosen = tree.node("/chosen")
    address_cells, _ = _chosen_cells(chosen)
    return (1 << (32 * address_cells)) - ALIGN


def _check_fits(system: System, memory_plan: MemoryPlan, scriptaddr: int, reserve: int) -> None:
    bank_start, bank_size = memory_plan.bank
    end = memory_plan.end
    if end <= memory_plan.limit:
        return
    needed = align_up(end + reserve - bank_start, 1 << 20)
    if memory_plan.limit_label != KEPT_LABEL and end <= bank_start + bank_size - reserve:
        raise HlimageError(
            f"{END_KEY}: Xen, the device tree and the modules need memory from "
            f"0x{scriptaddr:x} to 0x{end:x}, past memory_end 0x{memory_plan.limit:x}; give "
            f'memory_end = "0x{align_up(end, 1 << 20):x}" or more, or smaller modules',
            where=system.source,
        )
    raise HlimageError(
        f"{DTB_KEY}: Xen, the device tree and the modules need memory from 0x{scriptaddr:x} to "
        f"0x{end:x}, but the RAM at 0x{bank_start:x} is {_mib(bank_size)} MiB and U-Boot keeps "
        f"its top {_mib(reserve)} MiB ({RESERVE_KEY}); give the machine at least "
        f"{_mib(needed)} MiB of memory (QEMU: -m {_mib(needed)}M) or smaller modules",
        where=system.source,
    )


def _mib(size: int) -> int:
    return -(-size // (1 << 20))


def _chosen_cells(chosen: fdt.Node | None) -> tuple[int, int]:
    """The cells of /chosen's module nodes: its own, or two and two (RAM above 4 GiB)."""
    if chosen is None:
        return dom0less.ADDRESS_CELLS, dom0less.SIZE_CELLS
    address = chosen.get("#address-cells")
    size = chosen.get("#size-cells")
    return (
        fdt.as_u32(address) if address is not None else dom0less.ADDRESS_CELLS,
        fdt.as_u32(size) if size is not None else dom0less.SIZE_CELLS,
    )


def _reg(address: int, size: int, cells: tuple[int, int], label: str, system: System) -> bytes:
    words: list[int] = []
    for value, count in ((address, cells[0]), (size, cells[1])):
        if value >= 1 << (32 * count):
            raise HlimageError(
                f"{DTB_KEY}: {label} at 0x{address:x} (0x{size:x} bytes) does not fit in "
                f"/chosen's #address-cells/#size-cells ({cells[0]}, {cells[1]}); set them to 2",
                where=system.xen.dtb,
            )
        words += [(value >> (32 * index)) & 0xFFFFFFFF for index in reversed(range(count))]
    return fdt.cells(*words)


def host_tree(
    system: System, memory_plan: MemoryPlan, version: tuple[int, int] | None = None
) -> fdt.DeviceTree:
    """The host device tree for `booti XEN - DTB`: [xen] dtb with the boot in /chosen."""
    tree = _host_tree(system)
    built = _tree_with(system, tree, list(memory_plan.modules), version)
    size = len(built.build())
    if size > memory_plan.dtb.size:
        raise AssertionError(f"host tree of {size} bytes over its bound {memory_plan.dtb.size}")
    return built


def _tree_with(
    system: System,
    tree: fdt.DeviceTree,
    slots: Sequence[Slot],
    version: tuple[int, int] | None,
) -> fdt.DeviceTree:
    tree = fdt.parse(tree.build())  # a copy: the probe and the real tree start alike
    chosen = tree.ensure("/chosen")
    for key in ("#address-cells", "#size-cells"):
        if chosen.get(key) is None:
            chosen.set(key, fdt.u32(2))
    cells = _chosen_cells(chosen)
    by_module = {id(slot.module): slot for slot in slots if slot.module is not None}
    modules = [slot.module for slot in slots if slot.module is not None]
    classic = [d for d in system.domains if d.is_classic_dom0]
    dom0 = classic[0] if classic else None

    def located(module: Module, node: fdt.Node) -> None:
        slot = by_module[id(module)]
        node.set("reg", _reg(slot.address, slot.size, cells, slot.label, system))
        node.name = f"{node.name}@{slot.address:x}"

    chosen.set("xen,xen-bootargs", fdt.string(efi.xen_options(system, dom0)))
    if dom0 is not None:
        chosen.set("xen,dom0-bootargs", fdt.string(dom0.cmdline))
    # Dom0's nodes and Xen's own first (see the module docstring), then the domUs.
    first = [m for m in modules if m.domain is None or m.domain == dom0]
    for module in first:
        compatible = {
            Role.KERNEL: "multiboot,kernel",
            Role.RAMDISK: "multiboot,ramdisk",
            Role.XSM: XSM_COMPATIBLE,
        }.get(module.role)
        if compatible is None:
            raise HlimageError(
                f"{module_label(module)}: U-Boot boots of Xen on arm64 have no place for it",
                where=system.source,
            )
        node = fdt.Node(f"{module.domain.name if module.domain else 'xen'}-{module.role.value}")
        node.set("compatible", fdt.strings([compatible, "multiboot,module"]))
        located(module, node)
        if chosen.child(node.name) is not None:
            raise HlimageError(
                f"{DTB_KEY}: already has a /chosen/{node.name} node; remove it from the tree",
                where=system.xen.dtb,
            )
        chosen.add_child(node)
    dom0less.add_domains(system, tree, modules, version, located)
    return tree


def summary(memory_plan: MemoryPlan) -> list[str]:
    """The memory map, one line per range, lowest first (for check and inspect to print)."""
    bank_start, bank_size = memory_plan.bank
    rows: list[tuple[int, int, str]] = [
        (slot.address, slot.end, slot.label) for slot in memory_plan.slots
    ]
    rows += [(start, start + size, "reserved (host tree)") for start, size in memory_plan.reserved]
    if memory_plan.limit < bank_start + bank_size:
        rows.append((memory_plan.limit, bank_start + bank_size, memory_plan.limit_label))
    lines = [f"RAM 0x{bank_start:x}-0x{bank_start + bank_size - 1:x} ({_mib(bank_size)} MiB)"]
    for start, end, label in sorted(rows):
        size = end - start
        lines.append(
            f"  0x{start:010x}-0x{max(end, start + 1) - 1:010x}  {_human(size):>10}  {label}"
        )
    return lines


def _human(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} B"


# --- The boot script ---------------------------------------------------------------------------

SCRIPT_NAME = "hlimage Xen boot"
"""The script image's name (`mkimage -l` shows it)."""
PARAMETERS_TAG = "# hlimage-uboot:"
"""A comment line carrying the plan's scriptaddr and reserve, for `hlimage inspect`."""
FAILED_VARIABLE = "hlimage_failed"


@dataclass(frozen=True)
class ScriptLoad:
    address: int
    file: str


def _header(system: System, memory_plan: MemoryPlan, how: Sequence[str]) -> list[str]:
    reserve = memory_plan.bank[0] + memory_plan.bank[1] - memory_plan.limit
    lines = [f"# Boots Xen ({system.name}), written by hlimage.", *how]
    window = "" if memory_plan.limit_label == KEPT_LABEL else " window=memory_end"
    lines.append(
        f"{PARAMETERS_TAG} scriptaddr=0x{memory_plan.script.address:x} reserve=0x{reserve:x}"
        f"{window}"
    )
    lines.append("# Memory map:")
    lines += [f"#   {line}" for line in summary(memory_plan)]
    return lines


def directory_script(
    system: System,
    memory_plan: MemoryPlan,
    xen_file: str,
    dtb_file: str,
    module_files: Sequence[str],
) -> str:
    """The script of the U-Boot tree: load every file where the plan puts it, from the disk
    partition or the TFTP server U-Boot's default boot found the script on, then booti.

    Distro boot sets devtype, devnum, distro_bootpart and prefix on a disk, and devtype=dhcp
    after it read the script over the network (docs/uboot.md). A file that several domains
    share is read once and copied in memory (each domain has its own copy: see the module's
    docstring). A load that fails leaves booti unrun: Xen would start on whatever the memory
    held.
    """
    if len(module_files) != len(memory_plan.modules):
        raise ValueError(f"{len(module_files)} file names for {len(memory_plan.modules)} modules")
    slots = [memory_plan.xen, memory_plan.dtb, *memory_plan.modules]
    names = [xen_file, dtb_file, *module_files]
    loads: list[tuple[int, str]] = []
    copies: list[tuple[int, int, int]] = []
    first: dict[str, Slot] = {}
    for slot, name in zip(slots, names, strict=True):
        if not name or not name.isascii() or any(c.isspace() or c in "${}\"';\\#" for c in name):
            raise HlimageError(f"{name!r}: a file name U-Boot's shell cannot take; rename it")
        if name in first:
            copies.append((first[name].address, slot.address, first[name].size))
            continue
        first[name] = slot
        loads.append((slot.address, name))
    how = [
        "# U-Boot's default boot runs it from a disk's first partition (boot.scr) or over",
        "# TFTP (boot.scr.uimg). From a U-Boot prompt, say where the files are first:",
        "#   setenv devtype mmc; setenv devnum 0; setenv distro_bootpart 1",
        "#   load mmc 0:1 ${scriptaddr} boot.scr; source ${scriptaddr}",
    ]
    failed = f"|| setenv {FAILED_VARIABLE}"
    lines = _header(system, memory_plan, how)
    lines.append(f"setenv {FAILED_VARIABLE}")
    lines.append('if test "${devtype}" = "dhcp"; then')
    lines.append('\techo "hlimage: loading Xen and its modules over TFTP"')
    lines += [f"\ttftpboot 0x{address:x} {name} {failed} {name}" for address, name in loads]
    lines.append('elif test -n "${devtype}"; then')
    lines.append('\ttest -n "${distro_bootpart}" || setenv distro_bootpart 1')
    lines.append('\ttest -n "${prefix}" || setenv prefix /')
    lines.append(
        '\techo "hlimage: loading Xen and its modules from ${devtype} ${devnum}:${distro_bootpart}"'
    )
    device = "${devtype} ${devnum}:${distro_bootpart}"
    lines += [
        f"\tload {device} 0x{address:x} ${{prefix}}{name} {failed} {name}"
        for address, name in loads
    ]
    lines.append("else")
    lines.append(f'\tsetenv {FAILED_VARIABLE} "devtype (set devtype and devnum first)"')
    lines.append("fi")
    lines.append(f'if test -n "${{{FAILED_VARIABLE}}}"; then')
    lines.append(f'\techo "hlimage: could not load ${{{FAILED_VARIABLE}}}; Xen not started"')
    lines.append("else")
    lines += [f"\tcp.b 0x{source:x} 0x{target:x} 0x{size:x}" for source, target, size in copies]
    lines.append(f"\tbooti 0x{memory_plan.xen.address:x} - 0x{memory_plan.dtb.address:x}")
    lines.append("fi")
    return "\n".join(lines) + "\n"


def fit_script(system: System, memory_plan: MemoryPlan) -> str:
    """The script inside a FIT (its /images/default): U-Boot's default boot reads the FIT to
    scriptaddr and `source` runs this, which boots the FIT's default configuration."""
    how = [
        "# This FIT is its own boot script: U-Boot's default boot reads it to scriptaddr",
        "# (as boot.scr from a disk, boot.scr.uimg over TFTP) and runs this. From a prompt:",
        "#   load mmc 0:1 ${scriptaddr} boot.scr; bootm ${scriptaddr}",
    ]
    lines = _header(system, memory_plan, how)
    lines.append("bootm ${scriptaddr}")
    return "\n".join(lines) + "\n"


_PARAMETERS = re.compile(
    rf"^{re.escape(PARAMETERS_TAG)} scriptaddr=(0x[0-9a-f]+) reserve=(0x[0-9a-f]+)"
    r"( window=memory_end)?$",
    re.M,
)
_LOAD = re.compile(
    r"^\s*load \$\{devtype\} \$\{devnum\}:\$\{distro_bootpart\} (0x[0-9a-f]+) \$\{prefix\}(\S+)",
    re.M,
)
_TFTP = re.compile(r"^\s*tftpboot (0x[0-9a-f]+) (\S+)", re.M)
_COPY = re.compile(r"^\s*cp\.b (0x[0-9a-f]+) (0x[0-9a-f]+) (0x[0-9a-f]+)\s*$", re.M)
_BOOTI = re.compile(r"^\s*booti (0x[0-9a-f]+) - (0x[0-9a-f]+)\s*$", re.M)


@dataclass(frozen=True)
class ParsedScript:
    """What `hlimage inspect` reads back from a script hlimage wrote."""

    scriptaddr: int | None
    reserve: int | None
    """Bytes from the end of the load window to the end of the bank."""
    window_end: bool
    """Whether [uboot] memory_end, not U-Boot's reserve, ended the load window."""
    loads: tuple[ScriptLoad, ...]
    """The files the disk branch loads (the TFTP branch loads the same)."""
    tftp_loads: tuple[ScriptLoad, ...]
    copies: tuple[tuple[int, int, int], ...]
    """(source, target, size) of each file copied in memory once loaded."""
    xen: int | None
    dtb: int | None


def parse_script(text: str) -> ParsedScript:
    parameters = _PARAMETERS.search(text)
    booti = _BOOTI.search(text)
    return ParsedScript(
        scriptaddr=int(parameters[1], 16) if parameters else None,
        reserve=int(parameters[2], 16) if parameters else None,
        window_end=bool(parameters and parameters[3]),
        loads=tuple(ScriptLoad(int(match[1], 16), match[2]) for match in _LOAD.finditer(text)),
        tftp_loads=tuple(ScriptLoad(int(match[1], 16), match[2]) for match in _TFTP.finditer(text)),
        copies=tuple(
            (int(match[1], 16), int(match[2], 16), int(match[3], 16))
            for match in _COPY.finditer(text)
        ),
        xen=int(booti[1], 16) if booti else None,
        dtb=int(booti[2], 16) if booti else None,
    )
