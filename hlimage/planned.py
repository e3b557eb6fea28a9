"""A file an output is going to write: a boot module, Xen itself, its config, a device tree.

One type serves every output: the ESP and GRUB trees write planned files under their names,
the unified image writes them as PE sections, and the manifest reports them by role.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path

from hlimage.formats.payload import Payload, Region
from hlimage.model import Domain


class Role(enum.Enum):
    """What a planned file is to Xen (the value is the manifest's `role`)."""

    XEN = "xen"
    CONFIG = "config"
    KERNEL = "kernel"
    RAMDISK = "ramdisk"
    PASSTHROUGH_DTB = "device-tree"
    """A domU's partial device tree (dom0less passthrough)."""
    DTB = "dtb"
    """The host device tree."""
    XSM = "xsm"
    UCODE = "ucode"
    LCM = "lcm"
    SBAT = "sbat"
    BOOT = "boot"
    """A network boot file."""
    LOADER = "loader"
    """A boot loader that starts Xen: systemd-boot, shim, shim's MokManager."""
    ENTRY = "boot-entry"
    """A boot loader's configuration: loader.conf, a Type #1 entry."""
    OS_RELEASE = "os-release"
    """The `.osrel` systemd-boot lists a unified image by."""
    LOAD_OPTIONS = "load-options"
    """The `.cmdline` systemd-boot passes a unified image as its load options."""


@dataclass(frozen=True)
class PlannedFile:
    name: str
    """Where it goes: a path inside a directory output ('/' separators), or a section name."""
    payload: Payload
    role: Role
    domain: Domain | None = None
    cmdline: str = ""
    """A kernel's command line, for the boot entries that name it."""

    @property
    def domain_name(self) -> str | None:
        return self.domain.name if self.domain is not None else None

    @property
    def source(self) -> Path | None:
        """The input file itself, where it is used whole and unchanged."""
        if isinstance(self.payload, Region) and self.payload.offset == 0:
            return self.payload.path
        return None
