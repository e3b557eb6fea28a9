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
    sha256: str
    source: str = ""
    domain: str | None = None


@dataclass
class BuildReport:
    format: str
    output: Path
    artifacts: list[Artifact] = field(default_factory=list)
