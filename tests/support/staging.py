"""The test payloads under the plain names the templates and the build-system integrations use
(xen.efi, xen.gz, vmlinuz, Image, board.dtb, initrd.img, guest1.cpio.gz ...), and comparing
what an integration wrote with what a direct `hlimage build` writes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from hlimage.plumbing.streams import file_sha256
from tests.support import payloads

# Plain name -> cache file, per architecture.
PAYLOADS = {
    "x86_64": {
        "xen.efi": "x86_64/xen.efi",
        "xen.gz": "x86_64/xen.gz",
        "vmlinuz": "x86_64/vmlinuz",
    },
    "arm64": {
        "xen.efi": "arm64/xen.efi",
        "Image": "arm64/Image",
        "board.dtb": payloads.ARM64_DTB,
    },
}
INITRD_SUFFIXES = (".img", ".cpio.gz", ".cpio")
HLIMAGE = Path(sys.executable).parent / "hlimage"


def marker_name(file_name: str) -> str:
    """The marker an initramfs prints: its file name without the suffix (initrd.img: dom0)."""
    for suffix in INITRD_SUFFIXES:
        if file_name.endswith(suffix):
            stem = file_name.removesuffix(suffix)
            return "dom0" if stem == "initrd" else stem
    raise ValueError(file_name)


def stage(directory: Path, arch: str, names: list[str]) -> None:
    """Put every named file in `directory`: a symlink to a payload, or a marker initramfs."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = directory / name
        if target.exists() or target.is_symlink():
            continue
        if name in PAYLOADS[arch]:
            target.symlink_to(payloads.path(PAYLOADS[arch][name]))
        else:
            payloads.make_initramfs(arch, marker_name(name), target)


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escaping is TOML's, for these characters)."""
    return json.dumps(text)


def run(argv: list[str | os.PathLike[str]], **env: str) -> subprocess.CompletedProcess[str]:
    """Run a program with `env` added to this environment; stdout and stderr captured."""
    return subprocess.run(
        [str(arg) for arg in argv],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def direct_build(
    description: Path, output_format: str, output: Path, epoch: str = "", *extra: str
) -> None:
    """`hlimage build` as a user runs it, with SOURCE_DATE_EPOCH as the integration had it."""
    argv: list[str | os.PathLike[str]] = [HLIMAGE, "build", description]
    argv += ["--format", output_format, "-o", output, *extra]
    result = run(argv, SOURCE_DATE_EPOCH=epoch)
    assert result.returncode == 0, result.stderr


def tree_digests(path: Path) -> dict[str, str]:
    """sha256 of a file, or of every file under a directory by relative path."""
    if path.is_file():
        return {"": file_sha256(path)}
    return {
        entry.relative_to(path).as_posix(): file_sha256(entry)
        for entry in sorted(path.rglob("*"))
        if entry.is_file()
    }


def assert_same_output(integration: Path, direct: Path) -> None:
    """Byte for byte the same output, and manifests that describe the same files."""
    assert tree_digests(integration) == tree_digests(direct)
    assert manifest_body(integration) == manifest_body(direct)


def manifest_body(output: Path) -> dict[str, Any]:
    """The manifest without the names the two builds chose (output and description file)."""
    manifest = Path(f"{output}.manifest.json")
    data: dict[str, Any] = json.loads(manifest.read_text())
    data.pop("output", None)
    data.pop("description", None)
    for image in data.get("pe_images", []):
        if image.get("path") == output.name:
            image["path"] = "OUTPUT"
    return data
