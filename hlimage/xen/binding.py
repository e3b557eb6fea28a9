"""How a description's domains reach Xen: one module per binding (classic.py, dom0less.py,
hyperlaunch.py), each giving the outputs what they ask for, or refusing with the reason.

An output asks the binding of the description (`of(system)`) and never looks at the
architecture to decide what Xen reads: the binding knows which boot paths can carry it.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING

from hlimage.errors import HlimageError
from hlimage.formats.payload import Payload
from hlimage.formats.xencfg import XenConfig
from hlimage.model import Arch, Binding, System

if TYPE_CHECKING:
    from hlimage.planned import PlannedFile
    from hlimage.xen.grub_entry import Layout, Stanza

# Binding -> the module under hlimage/xen/ that implements it (as its BINDING).
MODULES = {
    Binding.CLASSIC: "classic",
    Binding.DOM0LESS: "dom0less",
    Binding.HYPERLAUNCH: "hyperlaunch",
}


@dataclass(frozen=True)
class EfiBoot:
    """What Xen's EFI loader reads from a file system beside xen.efi: its config, and the
    device tree the config names (arm64), if any."""

    config: XenConfig
    dtb: Payload | None = None


def resolve(system: System) -> Binding:
    """The declared binding, or for `auto`: classic for one full-capability domain, dom0less
    on arm64 otherwise, hyperlaunch on x86 otherwise."""
    if system.binding is not Binding.AUTO:
        return system.binding
    if len(system.domains) == 1 and system.domains[0].is_classic_dom0:
        return Binding.CLASSIC
    return Binding.DOM0LESS if system.arch is Arch.ARM64 else Binding.HYPERLAUNCH


class XenBinding(ABC):
    """One binding. The defaults refuse: a binding offers only the boot paths that carry it."""

    kind: Binding

    def refuse(self, system: System, message: str) -> HlimageError:
        return HlimageError(message, where=system.source)

    @abstractmethod
    def validate(self, system: System) -> None:
        """The binding's own rules about the domains, before any file is read."""

    def efi_boot(
        self,
        system: System,
        modules: list[PlannedFile],
        version: tuple[int, int] | None,
        dtb_name: str,
    ) -> EfiBoot:
        """xen.cfg and device tree for an ESP whose files are `modules` (named as planned)."""
        raise self.refuse(system, f"[image] binding: {self.kind.value} cannot boot from an ESP")

    def unified_sections(self, system: System) -> list[PlannedFile]:
        """The sections a unified xen.efi carries for this description."""
        raise self.refuse(
            system, f"[image] binding: {self.kind.value} cannot boot from a unified image"
        )

    def grub_stanza(self, system: System, layout: Layout, prelude: list[str]) -> Stanza:
        """The GRUB menu entry that boots the description."""
        raise self.refuse(system, f"[image] binding: {self.kind.value} cannot boot from GRUB")

    def unified_over_network(self, system: System, version: tuple[int, int] | None) -> bool:
        """Whether a network boot can start a unified xen.efi directly (else it goes through
        GRUB)."""
        return False

    @abstractmethod
    def launch_tree(self, system: System) -> bytes:
        """The device tree `hlimage lcm` writes."""


def of(system: System) -> XenBinding:
    """The binding module that serves this description."""
    module = importlib.import_module(f"hlimage.xen.{MODULES[resolve(system)]}")
    binding: XenBinding = module.BINDING
    return binding
