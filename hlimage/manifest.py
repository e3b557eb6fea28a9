"""The build manifest: `<output>.manifest.json` beside every output, saying what went into it.

For an attestation or a release note: which hlimage and which description made the output, each
payload with its size and sha256, the Authenticode digest of each PE image (what firmware
measures and checks a signature against, signed or not), the device tree's digest.

Deterministic: the same build gives the same bytes (sorted keys, no times, no absolute paths,
since reproducible builds in two directories should agree).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hlimage import __version__
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fat, gpt, pe
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.plumbing.atomic import TEMP_MARK, atomic_file
from hlimage.plumbing.streams import file_sha256
from hlimage.report import BuildReport, PeDigests
from hlimage.secureboot.signers import signers

SUFFIX = ".manifest.json"
DEVICE_TREE_ROLES = ("dtb", "lcm")


def path_for(output: Path) -> Path:
    """Beside the output, for a file or a directory alike: `out.efi.manifest.json`,
    `esp.manifest.json`."""
    return output.with_name(output.name + SUFFIX)


def _pe_entry(name: str, path: Path) -> dict[str, Any]:
    """An entry read back from the image (a signed one, signed after it was built)."""
    from hlimage.secureboot import trust

    with path.open("rb") as stream:
        image = pe.parse(stream)
        sha256, image_digest = trust.file_digests(stream, image)
    signatures = trust.describe(path, digests=False).get("signatures", [])
    return {
        "path": name,
        "size": path.stat().st_size,
        "sha256": sha256,
        "authenticode_sha256": image_digest,
        "signers": [signature["signer"] for signature in signatures],
    }


def _is_pe(path: Path) -> bool:
    with path.open("rb") as stream:
        return stream.read(2) == b"MZ"


def _is_pe_name(name: str) -> bool:
    return name.lower().endswith(".efi")


def _known(digests: PeDigests, signers_of: Path | None) -> dict[str, Any]:
    """An entry from the digests the build computed as it wrote the image."""
    return {
        "path": digests.name,
        "size": digests.size,
        "sha256": digests.sha256,
        "authenticode_sha256": digests.authenticode_sha256,
        "signers": list(digests.signers) if signers_of is None else signers(signers_of),
    }


def _pe_images(report: BuildReport) -> list[dict[str, Any]]:
    """Each PE image: from the digests computed while it was written where the build has
    them, else read back (a signed image, signed after it was built)."""
    output = report.output
    where = registry.get(report.format).pe_images
    names = [item.name for item in report.artifacts if _is_pe_name(item.name)]
    known = report.pe_images
    if where is registry.PeImages.TREE:
        return [
            _known(known[name], output / name) if name in known else _pe_entry(name, output / name)
            for name in names
            if (output / name).is_file() and _is_pe(output / name)
        ]
    if where is registry.PeImages.OUTPUT and _is_pe(output):
        if output.name in known and known[output.name].size == output.stat().st_size:
            return [_known(known[output.name], output)]
        return [_pe_entry(output.name, output)]
    if where is registry.PeImages.DISK:
        return [
            _known(known[name], None) if name in known else _pe_in_disk(output, name)
            for name in names
        ]
    return []


def _pe_in_disk(disk: Path, name: str) -> dict[str, Any]:
    """A PE image inside the disk's EFI System Partition, read back as firmware finds it."""
    with disk.open("rb") as stream:
        _, partitions = gpt.parse(stream)
        partition = next((p for p in partitions if p.type_guid == gpt.ESP_TYPE), None)
        if partition is None:
            raise FormatError("the disk has no EFI System Partition")
        # Hashing needs to seek; the file is a boot loader of a few MiB, spooled to disk.
        with tempfile.TemporaryDirectory(
            dir=disk.parent, prefix=f".{disk.name}.", suffix=TEMP_MARK
        ) as scratch:
            copy = Path(scratch) / "image.efi"
            with copy.open("wb") as out:
                for chunk in fat.read_file(stream, partition.offset, name):
                    out.write(chunk)
            return _pe_entry(name, copy)


def manifest(system: System, report: BuildReport) -> dict[str, Any]:
    artifacts = [
        {
            "name": item.name,
            "role": item.role,
            "domain": item.domain,
            "size": item.size,
            "sha256": item.sha256,
        }
        for item in report.artifacts
    ]
    tree = next((item for item in report.artifacts if item.role in DEVICE_TREE_ROLES), None)
    try:
        pe_images = _pe_images(report)
    except FormatError as error:
        raise AssertionError(f"hlimage cannot read back what it wrote: {error}") from error
    return {
        "hlimage": __version__,
        "format": report.format,
        "output": report.output.name,
        "description": {"name": system.source.name, "sha256": file_sha256(system.source)},
        "artifacts": artifacts,
        "pe_images": pe_images,
        "device_tree": None if tree is None else {"name": tree.name, "sha256": tree.sha256},
    }


def write(system: System, report: BuildReport) -> Path:
    """Write the manifest beside the output, atomically."""
    target = path_for(report.output)
    text = json.dumps(manifest(system, report), indent=2, sort_keys=True) + "\n"
    if target.is_dir():
        raise HlimageError(
            "is a directory where the manifest goes; remove it or pass --no-manifest",
            where=target,
        )
    with atomic_file(target) as out:
        out.write(text.encode())
    return target
