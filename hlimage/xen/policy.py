"""Xen's rules about a description, checked before anything is written.

Each check says which rule and why, naming the description key to change.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from hlimage.errors import HlimageError
from hlimage.model import ALL_CAPABILITIES, Arch, Capability, Domain, System

if TYPE_CHECKING:
    from hlimage.xen.probe import BuildConfig

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
    if system.arch is Arch.X86_64:
        for key in ARM_XEN_KEYS:
            if getattr(system.xen, key) not in (None, ()):
                raise fail(system, f"[xen] {key}: an Arm setting, but [image] arch is \"x86_64\"; "
                           "remove it")  # fmt: skip
        if system.cpupools:
            raise fail(
                system,
                "[[cpupool]]: boot-time cpupools come from an Arm device tree, but [image] arch is "
                '"x86_64"; remove them',
            )


def require_arch(system: System, arch: Arch, binding: str, other: str) -> None:
    """A binding that exists on one architecture only."""
    if system.arch is not arch:
        raise fail(
            system, f'[image] binding: "{binding}" is {ARCH_WORD[arch]} only; use "{other}" on '
            f"{system.arch.value}",
        )  # fmt: skip


ARCH_WORD = {Arch.ARM64: "Arm", Arch.X86_64: "x86"}
ARM_DOMAIN_KEYS = ("vpl011", "enhanced", "passthrough", "passthrough_dtb", "static_mem",
                   "direct_map", "cpupool", "colors", "nr_spis", "max_grant_version",
                   "max_grant_frames", "max_maptrack_frames", "sve", "shared_mem",
                   "event_channels", "vcpu_affinity", "trap_unmapped_accesses",
                   "sci_type")  # fmt: skip
ARM_XEN_KEYS = ("static_heap", "colors")
# What only a `xen,domain` node carries: a classic dom0 comes through xen.cfg and has none
# (its shared memory and event channels are nodes directly under /chosen).
NODE_ONLY_KEYS = tuple(k for k in ARM_DOMAIN_KEYS if k not in ("shared_mem", "event_channels"))
DOM0_NAME = "dom0"
# xen,enhanced values for which Xen sets up xenstore (dom0less-build.c).
XENSTORE_ENHANCED = ("enabled", "legacy")
# Xen's boolean option values (parse_bool); a bare option name is true.
XEN_TRUE = frozenset({"", "1", "yes", "on", "true", "enable"})
XEN_FALSE = frozenset({"0", "no", "off", "false", "disable"})


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


def xen_cmdline_options(system: System) -> list[str]:
    """What [xen] keys other than cmdline put on Xen's command line."""
    options = cmdline_options(system.xen.cmdline)
    added = []
    if system.xen.colors is not None:
        if "xen_llc_colors" in options:
            raise fail(
                system,
                "[xen] colors and [xen] cmdline both set xen-llc-colors; keep one of them",
            )
        added.append(f"xen-llc-colors={system.xen.colors}")
    return added


# What Xen releases read (docs/xen-boot-formats.md 3.3, 2.3; booting.txt and the parsers in
# xen/common/device-tree/ and xen/arch/arm/ of each release tag): feature -> first release.
FIRST_RELEASE = {
    "dom0less": (4, 12),
    "xen,uefi-binary": (4, 16),
    "xen,static-mem": (4, 16),
    "xen,enhanced": (4, 17),
    "direct-map": (4, 17),
    "xen,shared-mem": (4, 17),
    "xen,evtchn": (4, 17),
    "xen,static-heap": (4, 17),
    "xen,cpupool": (4, 17),
    "max_grant_version": (4, 18),
    "max_grant_frames": (4, 18),
    "max_maptrack_frames": (4, 18),
    "sve": (4, 18),
    "passthrough": (4, 19),
    "xen,shared-mem without a host address": (4, 19),
    "llc-colors": (4, 20),
    "xen-llc-colors": (4, 20),
    "capabilities": (4, 21),
    "xen,vcpu": (4, 21),
    "trap-unmapped-accesses": (4, 21),
    "xen,sci_type": (4, 21),
    'xen,enhanced "legacy"': (4, 21),
    "unified over the network": (4, 22),
}
# Fixes a stable branch took before the next release: feature -> the patch releases with it.
BACKPORTED = {
    "unified over the network": ((4, 21, 2),),
}


def reads(version: tuple[int, ...] | None, feature: str) -> bool:
    """Whether Xen of `version` (major, minor[, patch]) has `feature`; a backport counts only
    when the patch release is known."""
    if version is None:
        return False
    if tuple(version[:2]) >= FIRST_RELEASE[feature]:
        return True
    return any(
        len(version) == 3 and version[:2] == fixed[:2] and version[2] >= fixed[2]
        for fixed in BACKPORTED.get(feature, ())
    )


def require_release(
    system: System, version: tuple[int, ...] | None, feature: str, key: str, *, xen_key: str
) -> None:
    """Refuse a description that needs what the named Xen cannot read."""
    first = FIRST_RELEASE[feature]
    if version is None:
        return
    if not reads(version, feature):
        raise fail(
            system,
            f"{key}: Xen {version[0]}.{version[1]} ({xen_key}) does not read {feature} "
            f"(Xen {first[0]}.{first[1]} and newer do); remove it or use a newer Xen",
        )


@dataclass(frozen=True)
class BuildOption:
    """A Kconfig option a feature needs, and what Xen does without it."""

    symbol: str
    without: str
    since: tuple[int, int] = (4, 17)
    """The first release whose Kconfig has the option; older Xen always builds the feature."""


# Xen's own words where it panics (dom0less-bindings.c, dom0less-build.c, bootinfo-fdt.c,
# boot-cpupool.c of 4.17 to 4.22), else what it does instead.
BUILD_OPTIONS = {
    "direct-map": BuildOption(
        "CONFIG_STATIC_MEMORY",
        'Xen panics "direct-map is not valid for domain {domain} without static allocation."',
    ),
    "xen,static-mem": BuildOption(
        "CONFIG_STATIC_MEMORY",
        "Xen cannot allocate it (Debian's 4.20 was seen to stop without a word after its EFI "
        "loader)",
    ),
    "xen,shared-mem": BuildOption(
        "CONFIG_STATIC_SHM",
        'Xen panics "CONFIG_STATIC_SHM must be enabled for parsing static shared memory nodes" '
        '("Early FDT parsing failed")',
    ),
    "xen,evtchn": BuildOption(
        "CONFIG_STATIC_EVTCHN", "Xen ignores the event channel nodes", since=(4, 19)
    ),
    "xen,cpupool": BuildOption(
        "CONFIG_BOOT_TIME_CPUPOOLS", "Xen ignores the cpupool nodes and runs every domain in Pool-0"
    ),
    "sve": BuildOption(
        "CONFIG_ARM64_SVE", "Xen panics \"'sve' property found, but CONFIG_ARM64_SVE not selected\""
    ),
    "llc-colors": BuildOption(
        "CONFIG_LLC_COLORING", "Xen panics \"'llc-colors' found, but LLC coloring is disabled\""
    ),
    "xen-llc-colors": BuildOption(
        "CONFIG_LLC_COLORING", "Xen does not know the option and colours nothing"
    ),
    "xen,sci_type": BuildOption(
        "CONFIG_SCMI_SMC",
        'Xen panics "xen,sci_type=scmi_smc requested, but CONFIG_SCMI_SMC not set" '
        '("Error getting SCI configuration")',
        since=(4, 20),
    ),
}


def require_build_option(
    system: System,
    config: BuildConfig | None,
    version: tuple[int, ...] | None,
    feature: str,
    key: str,
    *,
    domain: str = "",
) -> None:
    """Refuse what the named Xen was built without, where its build configuration is known."""
    option = BUILD_OPTIONS[feature]
    if config is None or (version is not None and tuple(version[:2]) < option.since):
        return
    if not config.enabled(option.symbol):
        without = option.without.format(domain=domain)
        raise fail(
            system,
            f"{key}: the Xen image was built without {option.symbol} ({config.source}): "
            f"{without}; remove it or use a Xen built with {option.symbol}=y",
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
        raise fail(
            system,
            f"{label} passthrough: not allowed on the hardware domain (Xen panics \"Don't specify "
            'passthrough for hardware domain"); remove it',
        )
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
