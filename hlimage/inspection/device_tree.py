"""The domains a device tree describes: a hyperlaunch LCM or a dom0less host tree."""

from __future__ import annotations

from typing import Any

from hlimage.errors import FormatError
from hlimage.formats import fdt
from hlimage.formats.payload import Region

CAPABILITIES = {1: "control", 2: "hardware", 4: "xenstore"}
MODES = {0: "pvh", 1: "pv", 2: "hvm"}


def _caps(mask: int) -> list[str]:
    return [name for bit, name in CAPABILITIES.items() if mask & bit]


def _strings(node: fdt.Node, name: str) -> list[str]:
    value = node.get(name)
    if value is None:
        return []
    try:
        return fdt.as_strings(value)
    except FormatError:
        return []


def _u32(node: fdt.Node, name: str) -> int | None:
    value = node.get(name)
    try:
        return fdt.as_u32(value) if value is not None else None
    except FormatError:
        return None


def _module(node: fdt.Node) -> dict[str, Any]:
    compatible = _strings(node, "compatible")
    kind = next((c.split(",", 1)[1] for c in compatible if c != "multiboot,module"), "module")
    entry: dict[str, Any] = {"node": node.name, "kind": kind}
    for name in ("xen,uefi-binary", "bootargs"):
        if node.get(name) is not None:
            entry[name] = fdt.as_string(node.get(name) or b"\0")
    index = _u32(node, "module-index")
    if index is not None:
        entry["module-index"] = index
    if "@" in node.name and node.get("reg") is not None:
        # Loaded before Xen starts (U-Boot): the unit address is where.
        entry["address"] = "0x" + node.name.split("@", 1)[1]
    return entry


def _domain(node: fdt.Node) -> dict[str, Any]:
    entry: dict[str, Any] = {"name": node.name}
    memory = node.get("memory")
    if memory is not None and len(memory) == 8:
        entry["memory_kib"] = fdt.as_u64(memory)
    for name in ("cpus", "domid", "nr_spis"):
        value = _u32(node, name)
        if value is not None:
            entry[name] = value
    mode = _u32(node, "mode")
    if mode is not None:
        entry["mode"] = MODES.get(mode, str(mode))
    caps = _u32(node, "capabilities")
    if caps is not None:
        entry["capabilities"] = _caps(caps)
    for flag in ("vpl011", "direct-map"):
        if node.get(flag) is not None:
            entry[flag] = True
    for name in ("xen,enhanced", "passthrough", "llc-colors"):
        if node.get(name) is not None:
            entry[name] = fdt.as_string(node.get(name) or b"\0")
    entry["modules"] = [
        _module(child)
        for child in node.children
        if "multiboot,module" in _strings(child, "compatible")
    ]
    entry["summary"] = summary(entry)
    return entry


def summary(entry: dict[str, Any]) -> str:
    parts = []
    if "domid" in entry:
        parts.append(f"domid {entry['domid']}")
    if "mode" in entry:
        parts.append(entry["mode"])
    if "cpus" in entry:
        parts.append(f"{entry['cpus']} vCPU")
    if "memory_kib" in entry:
        parts.append(f"{entry['memory_kib'] // 1024} MiB")
    if entry.get("capabilities"):
        parts.append("caps " + "+".join(entry["capabilities"]))
    for module in entry.get("modules", []):
        where = (
            module.get("xen,uefi-binary")
            or module.get("address")
            or (f"module {module['module-index']}" if "module-index" in module else "?")
        )
        text = f"{module['kind']}={where}"
        if module.get("bootargs"):
            text += f" ({module['bootargs']})"
        parts.append(text)
    return ", ".join(parts)


def describe_tree(tree: fdt.DeviceTree) -> dict[str, Any]:
    hypervisor = tree.node("/chosen/hypervisor")
    chosen = tree.node("/chosen")
    if hypervisor is not None and "hypervisor,xen" in _strings(hypervisor, "compatible"):
        parent, kind = hypervisor, "hyperlaunch LCM"
    elif chosen is not None:
        parent, kind = chosen, "host device tree"
    else:
        return {"kind": "device tree", "domains": []}
    domains = [
        _domain(child) for child in parent.children if "xen,domain" in _strings(child, "compatible")
    ]
    result: dict[str, Any] = {"kind": kind, "domains": domains}
    if chosen is not None and parent is chosen:
        boot = [
            _module(c) for c in chosen.children if "multiboot,module" in _strings(c, "compatible")
        ]
        if boot:
            result["dom0_modules"] = boot
    return result


def describe_dtb(region: Region) -> dict[str, Any]:
    if region.length > 64 << 20:
        raise FormatError("device tree larger than 64 MiB")
    return describe_tree(fdt.parse(region.head(region.length)))
