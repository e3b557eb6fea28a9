"""What a U-Boot boot holds: a script image, a FIT, or a tree with boot.scr (a directory or a
disk's partition), and the memory map read back from it.

The map is rebuilt from the output alone, so that it shows what U-Boot will do: the addresses
the script loads to (or the FIT's `load` properties), each file's size, the host tree's RAM and
reserved ranges, and the scriptaddr and reserve the build planned with (a comment line of the
script). Overlaps and loads outside the RAM U-Boot leaves free are listed as problems.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterable
from typing import Any

from hlimage.errors import FormatError
from hlimage.formats import fdt, linux, uimage
from hlimage.formats.payload import Region
from hlimage.inspection.device_tree import describe_dtb
from hlimage.xen import uboot

UIMAGE_MAGIC = uimage.MAGIC.to_bytes(4, "big")
SCRIPT_NAMES = ("boot.scr.uimg", "boot.scr")
"""The names U-Boot's default boot looks for, in its order."""
# A script is a few KiB; a file that says it is larger is not read whole.
MAX_SCRIPT_BYTES = 1 << 20
INLINE_LIMIT = 1 << 16
Lookup = Callable[[str], Region | None]


def is_uimage(head: bytes) -> bool:
    return head[:4] == UIMAGE_MAGIC


def describe_uimage(region: Region) -> dict[str, Any]:
    """A legacy uImage's header, and a script image's text."""
    if region.length > MAX_SCRIPT_BYTES + uimage.HEADER_SIZE:
        raise FormatError(f"a {region.length}-byte uImage: hlimage reads script images only")
    image = uimage.parse(region.head(region.length))
    result: dict[str, Any] = {
        "type": "uimage",
        "name": image.name,
        "image_type": image.type_name,
        "arch": image.arch_name,
        "timestamp": image.timestamp,
        "size": len(image.data),
    }
    if image.type == uimage.TYPES["script"]:
        result["script"] = image.script().decode("ascii", "replace")
    return result


def _label_by_address(tree: fdt.DeviceTree | None) -> dict[int, str]:
    """Module labels ("dom0 kernel", "guest1 ramdisk") by the address their `reg` names."""
    found: dict[int, str] = {}
    chosen = tree.node("/chosen") if tree is not None else None
    if chosen is None:
        return found

    def cells(node: fdt.Node) -> tuple[int, int]:
        address = node.get("#address-cells")
        size = node.get("#size-cells")
        return (fdt.as_u32(address) if address else 2, fdt.as_u32(size) if size else 1)

    def add(node: fdt.Node, parent: fdt.Node, owner: str | None) -> None:
        reg = node.get("reg")
        if reg is None:
            return
        try:
            address_cells, _ = cells(parent)
            words = fdt.as_cells(reg)
        except FormatError:
            return
        address = 0
        for word in words[:address_cells]:
            address = (address << 32) | word
        base = node.name.split("@", 1)[0]
        found[address] = f"{owner} {base}" if owner else base.replace("-", " ", 1)

    for child in chosen.children:
        compatible = child.get("compatible") or b""
        if b"xen,domain" in compatible:
            for module in child.children:
                add(module, child, child.name)
        elif b"multiboot,module" in compatible:
            add(child, chosen, None)
    return found


def _ram(tree: fdt.DeviceTree | None, scriptaddr: int) -> tuple[int, int] | None:
    if tree is None:
        return None
    for node in tree.root.children:
        kind = node.get("device_type")
        reg = node.get("reg")
        if kind is None or kind.rstrip(b"\0") != b"memory" or reg is None:
            continue
        try:
            address_cells = fdt.as_u32(tree.root.get("#address-cells") or fdt.u32(2))
            size_cells = fdt.as_u32(tree.root.get("#size-cells") or fdt.u32(1))
            words = fdt.as_cells(reg)
        except FormatError:
            continue
        step = address_cells + size_cells
        for index in range(0, len(words) - step + 1, step):
            start = _join(words[index : index + address_cells])
            size = _join(words[index + address_cells : index + step])
            if start <= scriptaddr < start + size:
                return start, size
    return None


def _join(words: Iterable[int]) -> int:
    value = 0
    for word in words:
        value = (value << 32) | word
    return value


def memory_map(
    script: str,
    script_size: int,
    tree: fdt.DeviceTree | None,
    xen: uboot.Slot | None,
    dtb: uboot.Slot | None,
    modules: list[uboot.Slot],
) -> dict[str, Any]:
    """The memory map (xen/uboot.summary's lines) of what a script or FIT loads, and what is
    wrong with it."""
    parsed = uboot.parse_script(script)
    scriptaddr = parsed.scriptaddr if parsed.scriptaddr is not None else uboot.SCRIPTADDR
    bank = _ram(tree, scriptaddr)
    problems: list[str] = []
    if bank is None:
        return {
            "lines": [],
            "problems": [f"no /memory range of the host tree holds 0x{scriptaddr:x}"],
        }
    bank_end = bank[0] + bank[1]
    limit = bank_end - (parsed.reserve or 0)
    reserved = tuple(
        (start, size)
        for start, size in uboot.reserved_ranges(tree)  # type: ignore[arg-type]
        if start < bank_end and start + size > bank[0]
    )
    script_slot = uboot.Slot("boot script / FIT", scriptaddr, script_size)
    missing = uboot.Slot("(missing)", scriptaddr, 0)
    label = f"above {uboot.END_KEY}" if parsed.window_end else uboot.KEPT_LABEL
    plan = uboot.MemoryPlan(
        bank, limit, script_slot, xen or missing, dtb or missing, tuple(modules), reserved, label
    )
    slots = [slot for slot in plan.slots if slot.size]
    for first, second in itertools.combinations(slots, 2):
        if first.address < second.end and second.address < first.end:
            problems.append(f"{first.label} and {second.label} overlap")
    for slot in slots:
        if slot.end > limit:
            problems.append(
                f"{slot.label} ends at 0x{slot.end:x}, in the top of RAM U-Boot keeps (from "
                f"0x{limit:x})"
            )
        for start, size in reserved:
            if slot.address < start + size and start < slot.end:
                problems.append(f"{slot.label} overlaps reserved memory at 0x{start:x}")
    if xen is None:
        problems.append("the script runs no booti")
    return {"lines": uboot.summary(plan), "problems": problems}


def _xen_size(head: bytes, length: int) -> int:
    """Where booti or bootm puts Xen it takes its Image header's image_size, BSS included."""
    header = linux.parse_arm64(head)
    return max(length, header.image_size if header is not None else 0)


def _tree_of(region: Region | None) -> fdt.DeviceTree | None:
    if region is None or region.length > 16 << 20:
        return None
    try:
        return fdt.parse(region.head(region.length))
    except FormatError:
        return None


def describe_script_tree(script_region: Region, lookup: Lookup) -> dict[str, Any]:
    """A boot script hlimage wrote and the files beside it (found by `lookup`)."""
    described = describe_uimage(script_region)
    text = described.get("script", "")
    parsed = uboot.parse_script(text)
    dtb_name = next((load.file for load in parsed.loads if load.address == parsed.dtb), None)
    dtb_region = lookup(dtb_name) if dtb_name is not None else None
    tree = _tree_of(dtb_region)
    labels = _label_by_address(tree)
    xen = dtb = None
    modules: list[uboot.Slot] = []
    problems: list[str] = []
    loaded: dict[str, uboot.Slot] = {}
    for load in parsed.loads:
        region = lookup(load.file)
        if region is None:
            problems.append(f"the script loads {load.file}, which is not there")
            continue
        if load.address == parsed.xen:
            xen = uboot.Slot("xen", load.address, _xen_size(region.head(64), region.length))
            slot = xen
        elif load.address == parsed.dtb:
            dtb = slot = uboot.Slot("host device tree", load.address, region.length)
        else:
            slot = uboot.Slot(labels.get(load.address, load.file), load.address, region.length)
            modules.append(slot)
        loaded[load.file] = slot
    by_address = {slot.address: slot for slot in loaded.values()}
    for source, target, size in parsed.copies:
        origin = by_address.get(source)
        label = labels.get(target, origin.label if origin else f"copy of 0x{source:x}")
        modules.append(uboot.Slot(label, target, size))
    mapped = memory_map(
        text, script_region.length, tree, xen, dtb, sorted(modules, key=lambda s: s.address)
    )
    mapped["problems"] = problems + mapped["problems"]
    result = {**described, "memory_map": mapped}
    if dtb_region is not None:
        result["device_tree"] = {"file": dtb_name, **describe_dtb(dtb_region)}
    return result


def describe_fit(region: Region, *, digests: bool = True) -> dict[str, Any]:
    """A FIT: its images (each hash checked against its data when `digests`), its
    configurations, its script and the memory map of its default configuration."""
    outline = fdt.scan(region.chunks(), inline_limit=INLINE_LIMIT, digests=digests)
    tree = outline.tree
    images_node = tree.node("/images")
    if images_node is None:
        raise FormatError("not a FIT: no /images node")

    def text(node: fdt.Node, name: str) -> str | None:
        value = node.get(name)
        return fdt.as_string(value) if value else None

    def number(node: fdt.Node, name: str) -> int | None:
        value = node.get(name)
        return _join(fdt.as_cells(value)) if value else None

    images = []
    by_name: dict[str, dict[str, Any]] = {}
    inline: dict[str, bytes] = {}
    for node in images_node.children:
        path = f"/images/{node.name}"
        large = outline.large.get((path, "data"))
        data = node.get("data")
        entry: dict[str, Any] = {
            "name": node.name,
            "description": text(node, "description"),
            "type": text(node, "type"),
            "arch": text(node, "arch"),
            "os": text(node, "os"),
            "compression": text(node, "compression"),
            "load": number(node, "load"),
            "entry": number(node, "entry"),
            "size": large.length if large else len(data or b""),
            "data_offset": large.offset if large else None,
        }
        sha = large.sha256 if large else hashlib.sha256(data or b"").hexdigest()
        if data is not None and not large:
            inline[node.name] = data
        hash_node = node.child("hash-1")
        expected = hash_node.get("value") if hash_node is not None else None
        if sha is not None:
            entry["sha256"] = sha
            if expected is not None:
                entry["hash"] = "ok" if expected.hex() == sha else "BAD (does not match the data)"
        images.append(entry)
        by_name[node.name] = entry
    configurations = []
    confs = tree.node("/configurations")
    for node in confs.children if confs is not None else []:
        conf: dict[str, Any] = {"name": node.name}
        for key in ("kernel", "fdt", "ramdisk", "loadables"):
            value = node.get(key)
            if value:
                conf[key] = fdt.as_strings(value)
        signature = node.child("signature-1")
        if signature is not None:
            conf["signature"] = {"algo": text(signature, "algo"),
                                 "key_name_hint": text(signature, "key-name-hint")}  # fmt: skip
        configurations.append(conf)
    default_image = text(images_node, "default")
    result: dict[str, Any] = {
        "type": "fit",
        "path": str(region.path),
        "size": outline.totalsize,
        "description": text(tree.root, "description"),
        "timestamp": number(tree.root, "timestamp"),
        "default_image": default_image,
        "default_configuration": text(confs, "default") if confs is not None else None,
        "images": images,
        "configurations": configurations,
    }
    script = inline.get(default_image or "")
    if script is not None:
        result["script"] = script.decode("ascii", "replace")
    chosen = next(
        (c for c in configurations if c["name"] == result["default_configuration"]),
        configurations[0] if configurations else None,
    )
    if chosen is not None:
        result["memory_map"] = _fit_map(region, result, chosen, by_name, inline)
    return result


def _fit_map(
    region: Region,
    result: dict[str, Any],
    conf: dict[str, Any],
    by_name: dict[str, dict[str, Any]],
    inline: dict[str, bytes],
) -> dict[str, Any]:
    def image(key: str) -> dict[str, Any] | None:
        names = conf.get(key) or []
        return by_name.get(names[0]) if names else None

    xen = dtb = None
    tree = None
    kernel = image("kernel")
    if kernel is not None and kernel["load"] is not None:
        size = kernel["size"]
        if kernel["data_offset"] is not None:
            size = _xen_size(region.read(kernel["data_offset"], 64), size)
        xen = uboot.Slot("xen", kernel["load"], size)
    device_tree = image("fdt")
    if device_tree is not None:
        blob = inline.get(device_tree["name"])
        if blob is not None:
            try:
                tree = fdt.parse(blob)
            except FormatError:
                tree = None
        if device_tree["load"] is not None:
            dtb = uboot.Slot("host device tree", device_tree["load"], device_tree["size"])
    modules = [
        uboot.Slot(entry["description"] or entry["name"], entry["load"], entry["size"])
        for name in conf.get("loadables", [])
        if (entry := by_name.get(name)) is not None and entry["load"] is not None
    ]
    return memory_map(result.get("script", ""), result["size"], tree, xen, dtb, modules)


def describe(region: Region, lookup: Lookup, *, digests: bool = True) -> dict[str, Any]:
    """boot.scr or boot.scr.uimg: hlimage's script and the files it loads, or a FIT."""
    head = region.head(4)
    if is_uimage(head):
        return describe_script_tree(region, lookup)
    if head == fdt.FDT_MAGIC.to_bytes(4, "big"):
        return describe_fit(region, digests=digests)
    raise FormatError(f"{region.label}: neither a U-Boot script image nor a FIT")


def render(data: dict[str, Any], lines: list[str], indent: str = "  ") -> None:
    """Text lines for a script image, a FIT or a script tree."""
    if data["type"] == "fit":
        lines.append(f"{indent}FIT: {data['description']}, {data['size']} bytes, default image "
                     f"{data['default_image']}, default configuration "
                     f"{data['default_configuration']}")  # fmt: skip
        for entry in data["images"]:
            load = f" load 0x{entry['load']:x}" if entry["load"] is not None else ""
            hashed = f", hash {entry['hash']}" if "hash" in entry else ""
            lines.append(f"{indent}  image {entry['name']}: {entry['type']}, {entry['size']} "
                         f"bytes{load}{hashed}  {entry.get('sha256', '')}")  # fmt: skip
        for conf in data["configurations"]:
            parts = [f"{key} {', '.join(conf[key])}" for key in ("kernel", "fdt", "ramdisk",
                     "loadables") if key in conf]  # fmt: skip
            signed = conf.get("signature")
            if signed:
                parts.append(f"signed {signed['algo']} by key {signed['key_name_hint']}")
            lines.append(f"{indent}  configuration {conf['name']}: {'; '.join(parts)}")
    else:
        lines.append(f"{indent}script image {data['name']!r}: {data['image_type']}, "
                     f"{data['size']} bytes of data")  # fmt: skip
    if "script" in data:
        lines.append(f"{indent}script:")
        lines += [f"{indent}    | {line}" for line in data["script"].rstrip("\n").splitlines()]
    mapped = data.get("memory_map")
    if mapped:
        lines.append(f"{indent}memory map (read back):")
        lines += [f"{indent}  {line}" for line in mapped["lines"]]
        lines += [f"{indent}  PROBLEM: {problem}" for problem in mapped["problems"]]
    tree = data.get("device_tree")
    if tree:
        lines.append(f"{indent}{tree['file']}: {tree.get('kind', '')}")
        for domain in tree.get("domains", []):
            lines.append(f"{indent}    domain {domain['name']}: {domain['summary']}")
