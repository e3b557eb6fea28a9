"""What a host device tree says that Xen acts on: cells, RAM, reserved ranges, CPUs, IOMMUs.

Xen's early parser (xen/common/device-tree/bootfdt.c, device_tree_for_each_node) gives a node
without #address-cells or #size-cells its parent's values, and the root 2 and 1; a property is
read with the cells of its node's parent. The helpers here read them the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from hlimage.formats import fdt

# xen/include/xen/bootfdt.h: DT_ROOT_NODE_ADDR_CELLS_DEFAULT, DT_ROOT_NODE_SIZE_CELLS_DEFAULT.
ROOT_CELLS = (2, 1)


@dataclass(frozen=True)
class Cells:
    address: int
    size: int

    def encode(self, *pairs: tuple[int, int]) -> bytes:
        """(address, size) pairs in these cells; ValueError when one does not fit."""
        words: list[int] = []
        for address, size in pairs:
            words += _split(address, self.address) + _split(size, self.size)
        return fdt.cells(*words)

    def fits(self, address: int, size: int) -> bool:
        return address < 1 << (32 * self.address) and size < 1 << (32 * self.size)

    def decode(self, value: bytes) -> list[tuple[int, int]]:
        """(address, size) pairs; ValueError unless the value holds whole pairs."""
        if len(value) % 4:
            raise ValueError("not whole cells")
        words = fdt.as_cells(value)
        step = self.address + self.size
        if not step or len(words) % step:
            raise ValueError("not whole (address, size) pairs")
        return [
            (_join(words[i : i + self.address]), _join(words[i + self.address : i + step]))
            for i in range(0, len(words), step)
        ]


def _split(value: int, count: int) -> list[int]:
    if value >= 1 << (32 * count):
        raise ValueError(f"0x{value:x} does not fit in {count} cell(s)")
    return [(value >> (32 * index)) & 0xFFFFFFFF for index in reversed(range(count))]


def _join(words: Sequence[int]) -> int:
    value = 0
    for word in words:
        value = (value << 32) | word
    return value


def own_cells(node: fdt.Node, inherited: Cells) -> Cells:
    """The cells a node gives its children and properties of them, as Xen's early parser
    reads them: its own #address-cells/#size-cells, else what it inherited."""
    address = node.get("#address-cells")
    size = node.get("#size-cells")
    return Cells(
        fdt.as_u32(address) if address is not None else inherited.address,
        fdt.as_u32(size) if size is not None else inherited.size,
    )


def root_cells(tree: fdt.DeviceTree) -> Cells:
    return own_cells(tree.root, Cells(*ROOT_CELLS))


def chosen_cells(tree: fdt.DeviceTree) -> Cells:
    """What a `xen,domain` node's `xen,static-mem` and /chosen's shared-memory nodes are read
    with (process_domain_node gets its parent's cells)."""
    chosen = tree.node("/chosen")
    cells = root_cells(tree)
    return own_cells(chosen, cells) if chosen is not None else cells


def _is_available(node: fdt.Node) -> bool:
    status = node.get("status")
    return status is None or status.rstrip(b"\0") in (b"okay", b"ok")


def memory_banks(tree: fdt.DeviceTree) -> list[tuple[int, int]]:
    """RAM as the /memory nodes say (device_type "memory" at depth 1), lowest first; ranges
    whose reg cannot be read are left out."""
    cells = root_cells(tree)
    banks: list[tuple[int, int]] = []
    for node in tree.root.children:
        kind = node.get("device_type")
        reg = node.get("reg")
        if kind is None or kind.rstrip(b"\0") != b"memory" or reg is None:
            continue
        if not _is_available(node):
            continue
        try:
            banks += cells.decode(reg)
        except ValueError:
            continue
    return sorted(bank for bank in banks if bank[1])


def reserved_ranges(tree: fdt.DeviceTree) -> list[tuple[int, int]]:
    """/memreserve/ entries and /reserved-memory children with `reg`."""
    ranges = list(tree.reservations)
    parent = tree.node("/reserved-memory")
    if parent is not None:
        cells = own_cells(parent, root_cells(tree))
        for child in parent.children:
            reg = child.get("reg")
            if reg is not None:
                try:
                    ranges += cells.decode(reg)
                except ValueError:
                    continue  # Linux skips such a node too; nothing to avoid but what it says
    return sorted(ranges)


def cpu_nodes(tree: fdt.DeviceTree) -> list[fdt.Node]:
    """/cpus children with device_type "cpu", in tree order (Xen numbers its logical CPUs
    from the boot CPU, in this order on the usual trees)."""
    cpus = tree.node("/cpus")
    if cpus is None:
        return []
    return [
        node
        for node in cpus.children
        if (node.get("device_type") or b"").rstrip(b"\0") == b"cpu" and _is_available(node)
    ]


# The IOMMU drivers Xen has on Arm (xen/drivers/passthrough/arm/), by the compatible strings
# they match, and the Kconfig option that builds each.
IOMMU_DRIVERS = {
    "arm,smmu-v1": "CONFIG_ARM_SMMU",
    "arm,smmu-v2": "CONFIG_ARM_SMMU",
    "arm,mmu-400": "CONFIG_ARM_SMMU",
    "arm,mmu-401": "CONFIG_ARM_SMMU",
    "arm,mmu-500": "CONFIG_ARM_SMMU",
    "cavium,smmu-v2": "CONFIG_ARM_SMMU",
    "arm,smmu-v3": "CONFIG_ARM_SMMU_V3",
    "renesas,ipmmu-vmsa": "CONFIG_IPMMU_VMSA",
}


@dataclass(frozen=True)
class Iommu:
    path: str
    compatible: tuple[str, ...]

    @property
    def symbols(self) -> set[str]:
        """The Kconfig options of the drivers that would take it (empty: not one Xen knows
        by name, e.g. a vendor's own)."""
        found = {IOMMU_DRIVERS[c] for c in self.compatible if c in IOMMU_DRIVERS}
        if any(c.startswith("renesas,ipmmu-r8a") for c in self.compatible):
            found.add("CONFIG_IPMMU_VMSA")
        return found


def iommus(tree: fdt.DeviceTree) -> list[Iommu]:
    """Enabled nodes that provide an IOMMU (they carry #iommu-cells)."""
    found = []
    for path, node in tree.walk():
        if node.get("#iommu-cells") is None or not _is_available(node):
            continue
        raw = node.get("compatible") or b""
        compatible = tuple(raw.rstrip(b"\0").decode("utf-8", "replace").split("\0"))
        found.append(Iommu(path, compatible))
    return found
