"""`hlimage inspect`: what a boot artifact holds, decoded, with digests.

Every reader returns plain data (dicts and lists) that `--json` prints as is and `render`
turns into text. Digests stream the bytes; nothing is read whole.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import Any

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import pe, xencfg
from hlimage.inputs import probe_initrd, probe_kernel
from hlimage.inspect_dt import describe_dtb
from hlimage.streams import Region

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
        raise HlimageError("no such file or directory; give a built image, ESP or DTB", where=path)
    try:
        if path.is_dir():
            return inspect_esp(path, digests=digests)
        head = Region(path).head(8)
        if head[:2] == b"MZ":
            return inspect_pe(path, digests=digests)
        if head[:4] == FDT_MAGIC:
            return {"type": "dtb", "path": str(path), **describe_dtb(Region(path))}
    except FormatError as error:
        raise HlimageError(f"{error}", where=path) from None
    raise HlimageError(
        "not a format hlimage reads (PE image, device tree, ESP directory)", where=path
    )


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
    }
    cfg = loader.with_suffix(".cfg")
    if cfg.is_file():
        text = cfg.read_text("ascii", "replace")
        parsed = xencfg.parse(text)
        result["config"] = {"name": cfg.name, "text": text, "parsed": parsed}
        section = parsed.get(parsed.get("global", {}).get("default", ""), {})
        modules = {}
        kernel = section.get("kernel")
        if kernel:
            name, _ = xencfg.split_kernel_line(kernel)
            modules["kernel"] = _describe_file(boot / name, ".kernel")
        for key, kind in (
            ("ramdisk", ".ramdisk"),
            ("xsm", ".xsm"),
            ("ucode", ".ucode"),
            ("dtb", ".dtb"),
        ):
            if section.get(key):
                modules[key] = _describe_file(boot / section[key].strip(), kind)
        result["modules"] = modules
    return result


def _describe_file(path: Path, kind: str) -> dict[str, Any]:
    if not path.is_file():
        return {"file": path.name, "detail": "missing"}
    return {"file": path.name, **_describe_payload(kind, Region(path))}


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
        lines.append(f"  {'section':<10} {'rva':>10} {'size':>10} {'raw size':>10}  sha256")
        for section in data["sections"]:
            lines.append(
                f"  {section['name']:<10} 0x{section['rva']:08x} {section['virtual_size']:>10} "
                f"{section['raw_size']:>10}  {section.get('sha256', '-')}"
            )
            payload = section.get("payload")
            if payload:
                if payload.get("type") == "xen.cfg":
                    for text_line in payload["text"].rstrip("\n").splitlines():
                        lines.append(f"      | {text_line}")
                elif payload.get("detail"):
                    lines.append(f"      {payload['type']}: {payload['detail']}")
                for domain in payload.get("domains", []):
                    lines.append(f"      domain {domain['name']}: {domain['summary']}")
    elif data["type"] == "dtb":
        lines.append(f"{data['path']}: {data['kind']}")
        _render_domains(data, lines)
    elif data["type"] == "esp":
        lines.append(f"{data['path']}: ESP, loader EFI/BOOT/{data['loader']}")
        for entry in data["files"]:
            lines.append(f"  {entry['path']:<40} {entry['size']:>12}  {entry.get('sha256', '')}")
        config = data.get("config")
        if config:
            lines.append(f"  {config['name']}:")
            lines += [f"      | {line}" for line in config["text"].rstrip("\n").splitlines()]
        for key, module in data.get("modules", {}).items():
            lines.append(
                f"  {key}: {module['file']}: {module.get('detail', module.get('type', ''))}"
            )
            _render_domains(module, lines)
    return "\n".join(lines) + "\n"


def _render_domains(data: dict[str, Any], lines: list[str]) -> None:
    for domain in data.get("domains", []):
        lines.append(f"      domain {domain['name']}: {domain['summary']}")
    for module in data.get("dom0_modules", []):
        lines.append(f"      dom0 module {module['node']}: {module['kind']}")
