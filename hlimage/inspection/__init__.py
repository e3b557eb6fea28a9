"""`hlimage inspect`: what a boot artifact holds, decoded, with digests.

Every reader returns plain data (dicts and lists) that `--json` prints as is and `render`
turns into text. Digests stream the bytes; nothing is read whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections.abc import Callable, Generator
from pathlib import Path, PurePosixPath
from typing import Any

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fat, fdt, gpt, pe, xencfg
from hlimage.formats.payload import Region
from hlimage.inputs import probe_initrd, probe_kernel
from hlimage.inspection import uboot as uboot_inspection
from hlimage.inspection.device_tree import describe_dtb
from hlimage.secureboot import trust

XSM_MAGIC = 0xF97CFF8C
SECTION_FLAGS = (
    (pe.SCN_CNT_CODE, "code"),
    (pe.SCN_CNT_INITIALIZED_DATA, "data"),
    (pe.SCN_CNT_UNINITIALIZED_DATA, "bss"),
    (pe.SCN_MEM_DISCARDABLE, "discardable"),
    (pe.SCN_MEM_READ, "read"),
    (pe.SCN_MEM_WRITE, "write"),
    (pe.SCN_MEM_EXECUTE, "execute"),
)


def _digest(region: Region) -> str:
    digest = hashlib.sha256()
    for chunk in region.chunks():
        digest.update(chunk)
    return digest.hexdigest()


def _flags(characteristics: int) -> list[str]:
    return [name for bit, name in SECTION_FLAGS if characteristics & bit]


def _describe_payload(name: str, region: Region) -> dict[str, Any]:
    """What a payload section holds."""
    try:
        if name == ".config":
            text = region.head(64 * 1024).decode("ascii", "replace")
            return {"type": "xen.cfg", "text": text, "parsed": xencfg.parse(text)}
        if name == ".kernel":
            return {"type": "kernel", "detail": probe_kernel(region).describe()}
        if name == ".ramdisk":
            return {"type": "initrd", "detail": probe_initrd(region).describe()}
        if name == ".xsm":
            head = region.head(4)
            is_flask = len(head) == 4 and struct.unpack("<I", head)[0] == XSM_MAGIC
            return {"type": "xsm", "detail": "FLASK policy" if is_flask else "unknown policy"}
        if name == ".ucode":
            return {"type": "microcode", "detail": probe_initrd(region).describe()}
        if name == ".dtb":
            return {"type": "device tree", **describe_dtb(region)}
        if name == ".sbat":
            return {"type": "sbat", "text": region.head(64 * 1024).decode("ascii", "replace")}
    except FormatError as error:
        return {"type": name.lstrip("."), "detail": f"unreadable: {error}"}
    return {}


PAYLOAD_NAMES = (".config", ".kernel", ".ramdisk", ".xsm", ".ucode", ".dtb", ".sbat")


def inspect_pe(path: Path, *, digests: bool = True) -> dict[str, Any]:
    with path.open("rb") as stream:
        image = pe.parse(stream)
    sections = []
    for section in image.sections:
        entry: dict[str, Any] = {
            "name": section.name,
            "rva": section.virtual_address,
            "virtual_size": section.virtual_size,
            "raw_offset": section.raw_offset,
            "raw_size": section.raw_size,
            "flags": _flags(section.characteristics),
        }
        region = Region(path, section.raw_offset, section.data_size) if section.raw_size else None
        if digests and region is not None:
            entry["sha256"] = _digest(region)
        if section.name in PAYLOAD_NAMES and region is not None:
            entry["payload"] = _describe_payload(section.name, region)
        sections.append(entry)
    result: dict[str, Any] = {
        "type": "pe",
        "path": str(path),
        "machine": image.machine_name,
        "image_base": image.image_base,
        "section_alignment": image.section_alignment,
        "file_alignment": image.file_alignment,
        "size_of_image": image.size_of_image,
        "size_of_headers": image.size_of_headers,
        "checksum": int(image.optional.CheckSum),
        "signed": image.signature is not None,
        "sections": sections,
        "authenticode": trust.describe(path, digests=digests),
    }
    try:
        from hlimage.xen.probe import probe_efi

        xen = probe_efi(path)
        result["xen"] = {
            "version": xen.version_text,
            "hyperlaunch_parser": xen.has_hyperlaunch,
        }
    except HlimageError:
        result["xen"] = None
    return result


def inspect_path(path: Path, *, digests: bool = True) -> dict[str, Any]:
    if not path.exists():
        raise HlimageError(
            "no such file or directory; give a built image, ESP, disk image or DTB", where=path
        )
    try:
        if path.is_dir():
            if not (path / "EFI").is_dir() and _uboot_script(path) is not None:
                return inspect_uboot_tree(path, digests=digests)
            return inspect_esp(path, digests=digests)
        region = Region(path)
        head = region.head(8)
        if head[:2] == b"MZ":
            return inspect_pe(path, digests=digests)
        if head[:4] == FDT_MAGIC:
            if region.length > MAX_DTB_BYTES or fdt.parse(region.head(region.length)).node(
                "/images"
            ):
                return uboot_inspection.describe_fit(region, digests=digests)
            return {"type": "dtb", "path": str(path), **describe_dtb(Region(path))}
        if uboot_inspection.is_uimage(head):
            return {"path": str(path), **uboot_inspection.describe_uimage(region)}
        if is_gpt_disk(path):
            return inspect_disk(path, digests=digests)
    except FormatError as error:
        raise HlimageError(f"{error}", where=path) from None
    raise HlimageError(
        "not a format hlimage reads; give a PE image (a unified image, xen.efi), an ESP "
        "directory, a U-Boot tree, FIT or script image, a GPT disk image or a device tree blob",
        where=path,
    )


# A host device tree is some KiB; a larger blob starting with the FDT magic is read as a FIT,
# in one streamed pass.
MAX_DTB_BYTES = 16 << 20


def _uboot_script(root: Path) -> Path | None:
    """The script U-Boot's default boot runs from a directory: boot.scr.uimg or boot.scr."""
    return next(
        (root / name for name in uboot_inspection.SCRIPT_NAMES if (root / name).is_file()), None
    )


def _tree_files(root: Path, digests: bool) -> list[dict[str, Any]]:
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        entry: dict[str, Any] = {
            "path": path.relative_to(root).as_posix(),
            "size": path.stat().st_size,
        }
        if digests:
            entry["sha256"] = _digest(Region(path))
        files.append(entry)
    return files


def inspect_uboot_tree(root: Path, *, digests: bool = True) -> dict[str, Any]:
    """A directory U-Boot boots (the uboot format, or a U-Boot PXE tree): its files, the
    script and what it loads."""
    script = _uboot_script(root)
    assert script is not None

    def beside(name: str) -> Region | None:
        path = root / name.lstrip("/")
        return Region(path) if path.is_file() else None

    return {
        "type": "uboot",
        "path": str(root),
        "script_file": script.name,
        "files": _tree_files(root, digests),
        "boot": uboot_inspection.describe(Region(script), beside, digests=digests),
    }


FDT_MAGIC = bytes.fromhex("d00dfeed")


def inspect_esp(root: Path, *, digests: bool = True) -> dict[str, Any]:
    """An ESP tree: its files, the xen.cfg Xen reads and the domains it boots."""
    boot = root / "EFI" / "BOOT"
    loader = next((boot / n for n in ("BOOTX64.EFI", "BOOTAA64.EFI") if (boot / n).is_file()), None)
    if loader is None:
        raise HlimageError(
            "no EFI/BOOT/BOOTX64.EFI or BOOTAA64.EFI; inspect reads ESP trees", where=root
        )
    files = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        entry: dict[str, Any] = {
            "path": path.relative_to(root).as_posix(),
            "size": path.stat().st_size,
        }
        if digests:
            entry["sha256"] = _digest(Region(path))
        files.append(entry)
    result: dict[str, Any] = {
        "type": "esp",
        "path": str(root),
        "loader": loader.name,
        "files": files,
        "loader_authenticode": trust.describe(loader, digests=digests),
    }
    cfg = loader.with_suffix(".cfg")
    if cfg.is_file():

        def beside_loader(name: str) -> Region | None:
            path = boot / name
            return Region(path) if path.is_file() else None

        text = cfg.read_text("ascii", "replace")
        result.update(_describe_boot(cfg.name, text, beside_loader))
    return result


CFG_MODULES = (
    ("ramdisk", ".ramdisk"),
    ("xsm", ".xsm"),
    ("ucode", ".ucode"),
    ("dtb", ".dtb"),
)


def _describe_boot(
    cfg_name: str, text: str, beside_loader: Callable[[str], Region | None]
) -> dict[str, Any]:
    """The xen.cfg Xen's EFI loader reads, and what its default section boots: each file it
    names, found beside the loader by `beside_loader` (None when it is not there). Shared by
    ESP trees and disk images."""
    parsed = xencfg.parse(text)
    section = parsed.get(parsed.get("global", {}).get("default", ""), {})
    modules: dict[str, Any] = {}
    kernel = section.get("kernel")
    if kernel:
        name, _ = xencfg.split_kernel_line(kernel)
        modules["kernel"] = _describe_file(name, ".kernel", beside_loader)
    for key, kind in CFG_MODULES:
        if section.get(key):
            modules[key] = _describe_file(section[key].strip(), kind, beside_loader)
    return {"config": {"name": cfg_name, "text": text, "parsed": parsed}, "modules": modules}


def _describe_file(
    name: str, kind: str, beside_loader: Callable[[str], Region | None]
) -> dict[str, Any]:
    region = beside_loader(name)
    shown = PurePosixPath(name).name
    if region is None:
        return {"file": shown, "detail": "missing"}
    return {"file": shown, **_describe_payload(kind, region)}


LOADERS = ("BOOTX64.EFI", "BOOTAA64.EFI")
# A cfg is a few hundred bytes; a broken volume must not make inspect read gigabytes.
MAX_CFG_BYTES = 64 * 1024


def is_gpt_disk(path: Path) -> bool:
    """A GPT signature where the primary header is (LBA 1 of 512 or 4096-byte sectors)."""
    region = Region(path)
    return any(region.read(sector, 8) == gpt.SIGNATURE for sector in (512, 4096))


class FatFileRegion(Region):
    """A file in a disk image's FAT volume, as a Region for the probes: read through the FAT
    reader (its clusters need not be contiguous). Only read() and chunks() mean anything;
    `offset` is not where the data is, so it is not for copy_stream."""

    def __init__(self, image: Path, volume_offset: int, entry: fat.FatEntry) -> None:
        super().__init__(image, 0, entry.size, label=f"{image}:{entry.path}")
        self.volume_offset = volume_offset
        self.entry = entry

    def chunks(self) -> Generator[bytes, None, None]:
        with self.path.open("rb") as stream:
            yield from fat.read_entry(stream, self.volume_offset, self.entry)

    def read(self, start: int, count: int) -> bytes:
        count = max(0, min(count, self.length - start))
        out = bytearray()
        position = 0
        with contextlib.closing(self.chunks()) as chunks:
            for chunk in chunks:
                if len(out) >= count:
                    break
                end = position + len(chunk)
                if end > start:
                    out += chunk[max(0, start - position) : start + count - position]
                position = end
        return bytes(out[:count])


def _partition_type(partition: gpt.Partition) -> str:
    known = {gpt.ESP_TYPE: "EFI System", gpt.LINUX_DATA_TYPE: "Linux data"}
    return known.get(partition.type_guid, str(partition.type_guid))


def inspect_disk(path: Path, *, digests: bool = True) -> dict[str, Any]:
    """A GPT disk image: its partitions, and in its EFI System Partition the files, the
    xen.cfg Xen reads and the domains it boots."""
    with path.open("rb") as stream:
        disk_guid, partitions = gpt.parse(stream)
        size = stream.seek(0, 2)
    result: dict[str, Any] = {
        "type": "disk",
        "path": str(path),
        "size": size,
        "disk_guid": str(disk_guid),
        "partitions": [
            {
                "number": number,
                "name": partition.name,
                "type": _partition_type(partition),
                "type_guid": str(partition.type_guid),
                "guid": str(partition.unique_guid),
                "first_lba": partition.first_lba,
                "last_lba": partition.last_lba,
                "offset": partition.offset,
                "size": partition.size,
            }
            for number, partition in enumerate(partitions, 1)
        ],
        "esp": None,
    }
    number, esp = next(
        ((n, p) for n, p in enumerate(partitions, 1) if p.type_guid == gpt.ESP_TYPE), (0, None)
    )
    if esp is not None:
        result["esp"] = _inspect_fat_esp(path, number, esp.offset, digests=digests)
    return result


def _inspect_fat_esp(path: Path, number: int, offset: int, *, digests: bool) -> dict[str, Any]:
    with path.open("rb") as stream:
        info = fat.read_info(stream, offset)
        entries = fat.list_files(stream, offset)
        files = []
        for entry in sorted(entries, key=lambda e: e.path):
            item: dict[str, Any] = {"path": entry.path, "size": entry.size}
            if digests:
                digest = hashlib.sha256()
                for chunk in fat.read_entry(stream, offset, entry):
                    digest.update(chunk)
                item["sha256"] = digest.hexdigest()
            files.append(item)
    by_path = {entry.path.casefold(): entry for entry in entries}

    def lookup(name: str) -> fat.FatEntry | None:
        return by_path.get(f"EFI/BOOT/{name.strip('/')}".casefold())

    loader = next((lookup(name) for name in LOADERS if lookup(name) is not None), None)
    root_files = {entry.path.casefold(): entry for entry in entries}
    uboot_script = next(
        (root_files[name] for name in uboot_inspection.SCRIPT_NAMES if name in root_files), None
    )
    result: dict[str, Any] = {
        "partition": number,
        "fat_type": info.fat_type,
        "label": info.label,
        "volume_id": f"{info.volume_id >> 16:04X}-{info.volume_id & 0xFFFF:04X}",
        "cluster_size": info.cluster_size,
        "volume_size": info.size,
        "loader": PurePosixPath(loader.path).name if loader else None,
        "files": files,
    }
    if loader is None:
        if uboot_script is not None:

            def in_root(name: str) -> Region | None:
                entry = root_files.get(name.lstrip("/").casefold())
                return FatFileRegion(path, offset, entry) if entry is not None else None

            result["uboot_script"] = uboot_script.path
            try:
                result["uboot"] = uboot_inspection.describe(
                    FatFileRegion(path, offset, uboot_script), in_root, digests=digests
                )
            except FormatError as error:
                result["uboot"] = {"type": "unreadable", "problem": str(error)}
        return result
    cfg = lookup(PurePosixPath(loader.path).stem + ".cfg")
    if cfg is not None:

        def beside_loader(name: str) -> Region | None:
            entry = lookup(name)
            return FatFileRegion(path, offset, entry) if entry is not None else None

        text = FatFileRegion(path, offset, cfg).head(MAX_CFG_BYTES).decode("ascii", "replace")
        result.update(_describe_boot(PurePosixPath(cfg.path).name, text, beside_loader))
    return result


def render(data: dict[str, Any]) -> str:
    """The text form of an inspection result."""
    lines: list[str] = []
    if data["type"] == "pe":
        xen = data.get("xen")
        what = f"Xen {xen['version']}" if xen else "not Xen"
        lines.append(f"{data['path']}: PE image, {data['machine']}, {what}")
        lines.append(
            f"  SizeOfImage 0x{data['size_of_image']:x}  SectionAlignment "
            f"0x{data['section_alignment']:x}  FileAlignment 0x{data['file_alignment']:x}  "
            f"signed: {'yes' if data['signed'] else 'no'}"
        )
        lines += trust.render(data.get("authenticode", {}))
        lines.append(f"  {'section':<10} {'rva':>10} {'size':>10} {'raw size':>10}  sha256")
        for section in data["sections"]:
            lines.append(
                f"  {section['name']:<10} 0x{section['rva']:08x} {section['virtual_size']:>10} "
                f"{section['raw_size']:>10}  {section.get('sha256', '-')}"
            )
            payload = section.get("payload")
            if payload:
                if payload.get("type") in ("xen.cfg", "sbat"):
                    for text_line in payload["text"].rstrip("\n").splitlines():
                        lines.append(f"      | {text_line}")
                elif payload.get("detail"):
                    lines.append(f"      {payload['type']}: {payload['detail']}")
                for domain in payload.get("domains", []):
                    lines.append(f"      domain {domain['name']}: {domain['summary']}")
    elif data["type"] == "dtb":
        lines.append(f"{data['path']}: {data['kind']}")
        _render_domains(data, lines)
    elif data["type"] == "uboot":
        lines.append(f"{data['path']}: U-Boot tree, script {data['script_file']}")
        for entry in data["files"]:
            lines.append(f"  {entry['path']:<40} {entry['size']:>12}  {entry.get('sha256', '')}")
        uboot_inspection.render(data["boot"], lines)
    elif data["type"] in ("fit", "uimage"):
        lines.append(f"{data['path']}: {'FIT image' if data['type'] == 'fit' else 'uImage'}")
        uboot_inspection.render(data, lines)
    elif data["type"] == "esp":
        lines.append(f"{data['path']}: ESP, loader EFI/BOOT/{data['loader']}")
        lines += trust.render(data.get("loader_authenticode", {}))
        _render_esp(data, lines)
    elif data["type"] == "disk":
        lines.append(
            f"{data['path']}: GPT disk image, {data['size']} bytes, disk GUID {data['disk_guid']}"
        )
        lines.append(f"  {'#':>2} {'name':<24} {'type':<12} {'first LBA':>10} {'last LBA':>10} "
                     f"{'size':>12}  GUID")  # fmt: skip
        for part in data["partitions"]:
            lines.append(
                f"  {part['number']:>2} {part['name']:<24} {part['type']:<12} "
                f"{part['first_lba']:>10} {part['last_lba']:>10} {part['size']:>12}  {part['guid']}"
            )
        esp = data["esp"]
        if esp is None:
            lines.append("  no EFI System Partition")
        else:
            loader = f"loader EFI/BOOT/{esp['loader']}" if esp["loader"] else "no EFI/BOOT loader"
            if esp.get("uboot_script"):
                loader = f"U-Boot script /{esp['uboot_script']}"
            lines.append(
                f"  ESP (partition {esp['partition']}): FAT{esp['fat_type']}, "
                f"{esp['volume_size']} bytes, label {esp['label'] or '-'}, volume id "
                f"{esp['volume_id']}, {loader}"
            )
            _render_esp(esp, lines)
            boot = esp.get("uboot")
            if boot is not None and boot.get("type") == "unreadable":
                lines.append(f"  U-Boot script unreadable: {boot['problem']}")
            elif boot is not None:
                uboot_inspection.render(boot, lines)
    return "\n".join(lines) + "\n"


def _render_esp(data: dict[str, Any], lines: list[str]) -> None:
    """An ESP's files, its xen.cfg and what that boots (an ESP tree's or a disk's)."""
    for entry in data["files"]:
        lines.append(f"  {entry['path']:<40} {entry['size']:>12}  {entry.get('sha256', '')}")
    config = data.get("config")
    if config:
        lines.append(f"  {config['name']}:")
        lines += [f"      | {line}" for line in config["text"].rstrip("\n").splitlines()]
    for key, module in data.get("modules", {}).items():
        lines.append(f"  {key}: {module['file']}: {module.get('detail', module.get('type', ''))}")
        _render_domains(module, lines)


def _render_domains(data: dict[str, Any], lines: list[str]) -> None:
    for domain in data.get("domains", []):
        lines.append(f"      domain {domain['name']}: {domain['summary']}")
    for module in data.get("dom0_modules", []):
        lines.append(f"      dom0 module {module['node']}: {module['kind']}")
