"""Xen's rules about a description, checked before anything is written.

Each check says which rule and why, naming the description key to change.
"""

from __future__ import annotations

from hlimage.errors import HlimageError
from hlimage.model import ALL_CAPABILITIES, Arch, Capability, Domain, System

X86_UNIFIED_MODULES = ("kernel", "ramdisk", "xsm", "ucode")


def domain_label(domain: Domain) -> str:
    return f'[[domain]] "{domain.name}"'


def fail(system: System, message: str) -> HlimageError:
    return HlimageError(message, where=system.source)


def cmdline_options(cmdline: str) -> dict[str, str]:
    """Xen command-line options by name (the last one wins, as in Xen's parser)."""
    options = {}
    for token in cmdline.split():
        name, _, value = token.partition("=")
        options[name.replace("-", "_")] = value
    return options


def validate_domains(system: System) -> None:
    """Rules every output keeps, whatever the format, the binding's own among them."""
    from hlimage.xen import binding

    hardware = [d for d in system.domains if d.is_hardware_domain]
    if len(hardware) > 1:
        names = ", ".join(f'"{d.name}"' for d in hardware)
        raise fail(
            system,
            f"[[domain]] capabilities: {names} all have 'hardware'; Xen builds one hardware "
            "domain, keep 'hardware' on one domain",
        )
    if system.arch is Arch.X86_64 and not hardware:
        raise fail(
            system,
            "[[domain]]: no domain has the 'hardware' capability; x86 Xen needs a dom0: name a "
            'domain "dom0" or give one capabilities = ["control", "hardware", "xenstore"]',
        )
    binding.of(system).validate(system)
    if system.arch is Arch.X86_64:
        for domain in system.domains:
            for key in ARM_DOMAIN_KEYS:
                if getattr(domain, key) not in (None, False, ()):
                    raise fail(
                        system,
                        f"{domain_label(domain)} {key}: an Arm dom0less setting, but [image] arch "
                        'is "x86_64"; remove it',
                    )
    if system.xen.ucode is not None and system.arch is not Arch.X86_64:
        raise fail(system, "[xen] ucode: microcode modules are x86 only; remove it")


def require_arch(system: System, arch: Arch, binding: str, other: str) -> None:
    """A binding that exists on one architecture only."""
    if system.arch is not arch:
        raise fail(
            system, f'[image] binding: "{binding}" is {ARCH_WORD[arch]} only; use "{other}" on '
            f"{system.arch.value}",
        )  # fmt: skip


ARCH_WORD = {Arch.ARM64: "Arm", Arch.X86_64: "x86"}
ARM_DOMAIN_KEYS = ("vpl011", "enhanced", "passthrough", "passthrough_dtb", "static_mem",
                   "direct_map", "cpupool", "colors", "nr_spis")  # fmt: skip
DOM0_NAME = "dom0"


def default_capabilities(domain_name: str) -> frozenset[Capability]:
    """A description that lists no capabilities anywhere: the domain named dom0 is the classic
    dom0 and every other domain has none (design.md 1)."""
    return ALL_CAPABILITIES if domain_name == DOM0_NAME else frozenset()


def dom0_xen_options(system: System, dom0: Domain) -> list[str]:
    """A classic dom0's memory, vcpus and mode, as the Xen command-line options that set them.

    Written by hand in [xen] cmdline as well, the same option is a conflict: which one Xen
    obeys would depend on order, so the user has to pick."""
    options = cmdline_options(system.xen.cmdline)
    added = []
    wanted = []
    if dom0.memory is not None:
        wanted.append(("dom0_mem", format_xen_size(dom0.memory), "memory"))
    if dom0.vcpus is not None:
        wanted.append(("dom0_max_vcpus", str(dom0.vcpus), "vcpus"))
    if dom0.mode is not None and system.arch is Arch.X86_64:
        wanted.append(("dom0", dom0.mode.value, "mode"))
    for option, value, key in wanted:
        if option in options:
            raise fail(
                system,
                f"{domain_label(dom0)} {key} and [xen] cmdline both set {option} "
                f"({value} and {options[option] or 'empty'}); keep one of them",
            )
        added.append(f"{option}={value}")
    return added


def format_xen_size(size: int) -> str:
    """Bytes as Xen's size syntax, in the largest unit that divides exactly."""
    for suffix, unit in (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return f"{size}B"


# What Xen releases read (docs/xen-boot-formats.md 3.3, 2.3): feature -> first release.
FIRST_RELEASE = {
    "dom0less": (4, 12),
    "xen,uefi-binary": (4, 16),
    "xen,enhanced": (4, 17),
    "llc-colors": (4, 20),
    "capabilities": (4, 21),
    "unified over the network": (4, 22),
}


def require_release(
    system: System, version: tuple[int, int] | None, feature: str, key: str, *, xen_key: str
) -> None:
    """Refuse a description that needs what the named Xen cannot read."""
    first = FIRST_RELEASE[feature]
    if version is None:
        return
    if version < first:
        raise fail(
            system,
            f"{key}: Xen {version[0]}.{version[1]} ({xen_key}) does not read {feature} "
            f"(Xen {first[0]}.{first[1]} and newer do); remove it or use a newer Xen",
        )


def validate_dom0less_domain(system: System, domain: Domain) -> None:
    """The Arm binding's own rules (docs/misc/arm/device-tree/booting.txt)."""
    label = domain_label(domain)
    if domain.vcpus is None:
        raise fail(system, f"{label} vcpus: is missing; Xen panics without 'cpus', add vcpus = 1")
    if domain.memory is None:
        raise fail(system, f'{label} memory: is missing; add memory = "256M"')
    if domain.direct_map and not domain.static_mem:
        raise fail(
            system,
            f"{label} direct_map: needs static_mem (Xen panics otherwise); add static_mem",
        )
    if domain.is_hardware_domain and domain.passthrough is not None:
        raise fail(system, f"{label} passthrough: not allowed on the hardware domain; remove it")
    if domain.is_hardware_domain and domain.passthrough_dtb is not None:
        raise fail(
            system, f"{label} passthrough_dtb: not allowed on the hardware domain; remove it"
        )
    if domain.is_hardware_domain and domain.nr_spis is not None:
        raise fail(system, f"{label} nr_spis: not allowed on the hardware domain; remove it")
    xenstore = [d for d in system.domains if Capability.XENSTORE in d.capabilities]
    if len(xenstore) > 1:
        names = ", ".join(f'"{d.name}"' for d in xenstore)
        raise fail(
            system, f"[[domain]] capabilities: {names} all have 'xenstore'; give it to one domain"
        )
