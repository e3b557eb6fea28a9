"""What a build wrote: each payload with its size and digest (the manifest's source)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Artifact:
    name: str
    """A PE section name, or a path inside a directory output."""
    role: str
    """config, kernel, ramdisk, xsm, ucode, dtb, xen, lcm, grub ..."""
    size: int
    sha256: str | None
    """None when the build computed no digests (--no-manifest)."""
    source: str = ""
    domain: str | None = None


@dataclass(frozen=True)
class PeDigests:
    """A PE image the build wrote, with the digests computed as it was written."""

    name: str
    """Its path inside a directory output, or the output's own name."""
    size: int
    sha256: str
    authenticode_sha256: str
    signers: tuple[str, ...] = ()
    """Where the manifest cannot read them from the image itself (inside a disk image)."""


@dataclass
class BuildReport:
    format: str
    output: Path
    artifacts: list[Artifact] = field(default_factory=list)
    pe_images: dict[str, PeDigests] = field(default_factory=dict)
    """By name: what the manifest needs of each PE image, where the build knew it."""
