"""The description of a Xen system, as typed immutable values. No I/O happens here.

`config.py` builds these from `hlimage.toml`; the Xen binding (`hlimage/xen/`) turns them into
what Xen reads; the output writers never look at TOML.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path


class Arch(enum.Enum):
    X86_64 = "x86_64"
    ARM64 = "arm64"

    @property
    def efi_suffix(self) -> str:
        """The removable-media name UEFI looks for: BOOTX64.EFI, BOOTAA64.EFI."""
        return {Arch.X86_64: "X64", Arch.ARM64: "AA64"}[self]


class Binding(enum.Enum):
    """How the domains reach Xen."""

    AUTO = "auto"
    CLASSIC = "classic"
    DOM0LESS = "dom0less"
    HYPERLAUNCH = "hyperlaunch"


class Capability(enum.Enum):
    CONTROL = "control"
    HARDWARE = "hardware"
    XENSTORE = "xenstore"


ALL_CAPABILITIES = frozenset(Capability)


class Mode(enum.Enum):
    PV = "pv"
    PVH = "pvh"


class InitrdCompression(enum.Enum):
    LZ4 = "lz4"


@dataclass(frozen=True)
class MemoryRange:
    address: int
    size: int


class ShmRole(enum.Enum):
    OWNER = "owner"
    BORROWER = "borrower"


@dataclass(frozen=True)
class SharedMemory:
    """A static shared memory region one domain maps (Xen's `xen,shared-mem`)."""

    id: str
    """Xen's `xen,shm-id`: the same region has the same id in every domain that maps it."""
    guest: int
    size: int
    host: int | None = None
    """None: Xen allocates the region (4.19 and newer)."""
    role: ShmRole | None = None


@dataclass(frozen=True)
class EventChannel:
    """A static event channel, declared on one side; the peer gets the other end."""

    port: int
    peer: str
    """The peer domain's name."""
    peer_port: int


@dataclass(frozen=True)
class CpuPool:
    """A boot-time cpupool (`xen,cpupool` node in /chosen)."""

    name: str
    cpus: tuple[str, ...]
    """Node names under /cpus of the host device tree, like "cpu@1"."""
    scheduler: str | None = None


@dataclass(frozen=True)
class Domain:
    name: str
    kernel: Path
    initrd: tuple[Path, ...] = ()
    initrd_compression: InitrdCompression | None = None
    cmdline: str = ""
    memory: int | None = None
    """Bytes."""
    vcpus: int | None = None
    capabilities: frozenset[Capability] = frozenset()
    """Resolved: the description's list, or the dom0 default when no domain lists any."""
    mode: Mode | None = None
    # Arm dom0less properties (docs/misc/arm/device-tree/booting.txt)
    vpl011: bool = False
    enhanced: str | None = None
    passthrough: str | None = None
    passthrough_dtb: Path | None = None
    static_mem: tuple[MemoryRange, ...] = ()
    direct_map: bool = False
    cpupool: str | None = None
    colors: str | None = None
    nr_spis: int | None = None
    max_grant_version: int | None = None
    max_grant_frames: int | None = None
    max_maptrack_frames: int | None = None
    sve: int | None = None
    """SVE vector length in bits (0: off)."""
    shared_mem: tuple[SharedMemory, ...] = ()
    event_channels: tuple[EventChannel, ...] = ()
    vcpu_affinity: tuple[str, ...] = ()
    """Hard affinity per vCPU, index = vCPU number: pCPU lists like "0-1,3"."""
    trap_unmapped_accesses: bool | None = None
    sci_type: str | None = None

    @property
    def is_hardware_domain(self) -> bool:
        return Capability.HARDWARE in self.capabilities

    @property
    def is_classic_dom0(self) -> bool:
        return self.capabilities == ALL_CAPABILITIES


@dataclass(frozen=True)
class Xen:
    efi: Path | None = None
    multiboot: Path | None = None
    cmdline: str = ""
    xsm: Path | None = None
    ucode: Path | None = None
    dtb: Path | None = None
    sbat: Path | None = None
    """SBAT data (CSV) for the unified image's .sbat section, checked by config."""
    static_heap: tuple[MemoryRange, ...] = ()
    """Arm: RAM Xen keeps for its heap (`xen,static-heap`)."""
    colors: str | None = None
    """Arm: Xen's own LLC colours (`xen-llc-colors=` on its command line)."""


@dataclass(frozen=True)
class UBoot:
    """[uboot]: what the U-Boot outputs' memory plan takes from the board. None: the default
    (QEMU virt's; xen/uboot.py)."""

    scriptaddr: int | None = None
    """Where U-Boot's default boot reads boot.scr (its `scriptaddr`)."""
    reserve: int | None = None
    """Bytes at the top of the RAM bank that U-Boot keeps for itself."""
    memory_start: int | None = None
    """The lowest address anything is loaded to (ImageBuilder's MEMORY_START)."""
    memory_end: int | None = None
    """The first address past the load window (ImageBuilder's MEMORY_END)."""


@dataclass(frozen=True)
class System:
    """One description: Xen and the domains it builds at boot."""

    source: Path
    """The description file, for error messages."""
    arch: Arch
    binding: Binding
    xen: Xen
    domains: tuple[Domain, ...]
    name: str = "xen"
    """Used for menu entry titles and ids."""
    title: str | None = None
    cpupools: tuple[CpuPool, ...] = ()
    uboot: UBoot = UBoot()
    """The board's U-Boot: where it reads boot.scr and the RAM it leaves to load into."""

    @property
    def hardware_domain(self) -> Domain | None:
        for domain in self.domains:
            if domain.is_hardware_domain:
                return domain
        return None

    @property
    def domus(self) -> tuple[Domain, ...]:
        """Every domain but the hardware domain."""
        return tuple(d for d in self.domains if not d.is_hardware_domain)

    def domain(self, name: str) -> Domain | None:
        return next((d for d in self.domains if d.name == name), None)
