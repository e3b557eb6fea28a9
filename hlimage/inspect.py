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
    if path.is_dir():
        raise HlimageError("is a directory; inspect reads PE images", where=path)
    head = Region(path).head(8)
    if head[:2] == b"MZ":
        try:
            return inspect_pe(path, digests=digests)
        except FormatError as error:
            raise HlimageError(f"{error}", where=path) from None
    raise HlimageError("not a format hlimage reads (PE image)", where=path)


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
    return "\n".join(lines) + "\n"
