"""The Xen bindings on synthetic systems: no payloads, no probing, only what each binding
makes of a description (which binding, which rules, xen.cfg, device-tree nodes, the LCM, and
the refusals)."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage.errors import HlimageError
from hlimage.formats import fdt
from hlimage.formats.payload import BytesPayload
from hlimage.model import (
    ALL_CAPABILITIES,
    Arch,
    Binding,
    Capability,
    Domain,
    MemoryRange,
    Mode,
    System,
    Xen,
)
from hlimage.planned import PlannedFile, Role
from hlimage.xen import binding, dom0less, efi, hyperlaunch, policy

SOURCE = Path("/descriptions/hlimage.toml")
MIB = 1 << 20


def dom0(**extra: object) -> Domain:
    values: dict[str, object] = {
        "name": "dom0", "kernel": Path("vmlinuz"), "cmdline": "console=hvc0",
        "memory": 512 * MIB, "capabilities": ALL_CAPABILITIES,
    }  # fmt: skip
    values.update(extra)
    return Domain(**values)  # type: ignore[arg-type]


def guest(name: str, **extra: object) -> Domain:
    values: dict[str, object] = {
        "name": name, "kernel": Path("Image"), "memory": 128 * MIB, "vcpus": 1,
    }  # fmt: skip
    values.update(extra)
    return Domain(**values)  # type: ignore[arg-type]


def system(arch: Arch, *domains: Domain, kind: Binding = Binding.AUTO, cmdline: str = "") -> System:
    return System(SOURCE, arch, kind, Xen(cmdline=cmdline), tuple(domains))


def kernel_of(domain: Domain, name: str | None = None) -> PlannedFile:
    return PlannedFile(
        name or domain.kernel.name, BytesPayload(b"k", "k"), Role.KERNEL, domain, domain.cmdline
    )


def refusal(call: object) -> str:
    assert callable(call)
    with pytest.raises(HlimageError) as error:
        call()
    assert error.value.where == str(SOURCE)  # the description is the file to fix
    return str(error.value.args[0])


# --- Which binding --------------------------------------------------------------------------


def test_auto_resolves_by_domains_and_arch() -> None:
    assert binding.resolve(system(Arch.X86_64, dom0())) is Binding.CLASSIC
    assert binding.resolve(system(Arch.ARM64, dom0())) is Binding.CLASSIC
    assert binding.resolve(system(Arch.ARM64, dom0(), guest("g"))) is Binding.DOM0LESS
    assert binding.resolve(system(Arch.X86_64, dom0(), guest("g"))) is Binding.HYPERLAUNCH
    declared = system(Arch.X86_64, dom0(), kind=Binding.HYPERLAUNCH)
    assert binding.of(declared).kind is Binding.HYPERLAUNCH


def test_each_binding_is_its_own_module() -> None:
    for kind, module in binding.MODULES.items():
        chosen = binding.of(system(Arch.X86_64, dom0(), kind=kind))
        assert chosen.kind is kind
        assert type(chosen).__module__ == f"hlimage.xen.{module}"


# --- Rules ----------------------------------------------------------------------------------


def test_classic_takes_one_full_dom0() -> None:
    two = system(Arch.X86_64, dom0(), guest("g"), kind=Binding.CLASSIC)
    assert "carries one domain, the description has 2" in refusal(
        lambda: policy.validate_domains(two)
    )
    partial = system(Arch.X86_64, dom0(capabilities=frozenset({Capability.HARDWARE})),
                     kind=Binding.CLASSIC)  # fmt: skip
    assert "a classic boot's one domain is dom0" in refusal(
        lambda: policy.validate_domains(partial)
    )


def test_bindings_keep_to_their_architecture() -> None:
    arm_on_x86 = system(Arch.X86_64, dom0(), kind=Binding.DOM0LESS)
    assert refusal(lambda: policy.validate_domains(arm_on_x86)) == (
        '[image] binding: "dom0less" is Arm only; use "hyperlaunch" on x86_64'
    )
    x86_on_arm = system(Arch.ARM64, dom0(), kind=Binding.HYPERLAUNCH)
    assert refusal(lambda: policy.validate_domains(x86_on_arm)) == (
        '[image] binding: "hyperlaunch" is x86 only; use "dom0less" on arm64'
    )


def test_x86_needs_a_hardware_domain_and_no_arm_keys() -> None:
    nobody = system(Arch.X86_64, guest("g"))
    assert "x86 Xen needs a dom0" in refusal(lambda: policy.validate_domains(nobody))
    arm_key = system(Arch.X86_64, dom0(vpl011=True))
    assert "vpl011: an Arm dom0less setting" in refusal(lambda: policy.validate_domains(arm_key))


def test_dom0_options_come_from_the_domain_and_conflict_with_the_cmdline() -> None:
    plain = system(Arch.X86_64, dom0(vcpus=2, mode=Mode.PVH))
    assert policy.dom0_xen_options(plain, plain.domains[0]) == [
        "dom0_mem=512M", "dom0_max_vcpus=2", "dom0=pvh",
    ]  # fmt: skip
    twice = system(Arch.X86_64, dom0(), cmdline="dom0_mem=1G")
    assert "both set dom0_mem" in refusal(lambda: policy.dom0_xen_options(twice, twice.domains[0]))


def test_a_feature_newer_than_the_xen_is_refused_with_its_release() -> None:
    described = system(Arch.ARM64, dom0(), guest("g", enhanced="enabled"))
    message = refusal(
        lambda: policy.require_release(described, (4, 16), "xen,enhanced", "key", xen_key="[xen]")
    )
    assert "Xen 4.16 ([xen]) does not read xen,enhanced (Xen 4.17 and newer do)" in message
    policy.require_release(described, (4, 17), "xen,enhanced", "key", xen_key="[xen]")
    policy.require_release(described, None, "xen,enhanced", "key", xen_key="[xen]")


# --- xen.cfg --------------------------------------------------------------------------------


def test_esp_config_names_dom0s_files_and_its_options() -> None:
    described = system(Arch.X86_64, dom0(vcpus=1), cmdline="console=com1")
    first = described.domains[0]
    modules = [
        kernel_of(first),
        PlannedFile("dom0.cpio.gz", BytesPayload(b"r", "r"), Role.RAMDISK, first),
        PlannedFile("policy", BytesPayload(b"x", "x"), Role.XSM),
    ]
    text = efi.esp_config(described, first, modules, None).render()
    assert text == (
        "[global]\ndefault=xen\n\n[xen]\n"
        "options=console=com1 dom0_mem=512M dom0_max_vcpus=1\n"
        "kernel=vmlinuz console=hvc0\nramdisk=dom0.cpio.gz\nxsm=policy\n"
    )


def test_unified_layout_is_in_place_below_4g_on_x86_only() -> None:
    x86 = efi.unified_layout(Arch.X86_64)
    assert x86.in_place and x86.module_align == 0x1000 and x86.load_limit == 1 << 32
    assert not efi.unified_layout(Arch.ARM64).in_place


def test_unified_over_the_network_from_4_22_for_classic_only() -> None:
    classic = system(Arch.X86_64, dom0())
    assert binding.of(classic).unified_over_network(classic, (4, 22))
    assert not binding.of(classic).unified_over_network(classic, (4, 21))
    assert not binding.of(classic).unified_over_network(classic, None)
    launch = system(Arch.X86_64, dom0(), kind=Binding.HYPERLAUNCH)
    assert not binding.of(launch).unified_over_network(launch, (4, 22))


# --- Device trees ---------------------------------------------------------------------------


def test_dom0less_nodes_carry_the_domains_settings() -> None:
    one = guest("g1", vpl011=True, enhanced="enabled", nr_spis=8, memory=0x10000000,
                static_mem=(MemoryRange(0x50000000, 0x10000000),), direct_map=True)  # fmt: skip
    described = system(Arch.ARM64, dom0(), one)
    tree = fdt.DeviceTree()
    dom0less.add_domains(described, tree, [kernel_of(one, "guest-Image")], (4, 20))
    node = tree.node("/chosen/g1")
    assert node is not None
    assert fdt.as_strings(node.get("compatible") or b"") == ["xen,domain"]
    assert fdt.as_u64(node.get("memory") or b"") == 256 * 1024
    assert fdt.as_u32(node.get("cpus") or b"") == 1
    assert node.get("vpl011") == b"" and node.get("direct-map") == b""
    assert fdt.as_string(node.get("xen,enhanced") or b"") == "enabled"
    assert fdt.as_cells(node.get("xen,static-mem") or b"") == (0, 0x50000000, 0, 0x10000000)
    kernel = node.child("kernel")
    assert kernel is not None
    assert fdt.as_string(kernel.get("xen,uefi-binary") or b"") == "guest-Image"
    assert tree.node("/chosen/dom0") is None  # a classic dom0 comes by xen.cfg


def test_dom0less_refuses_what_the_named_xen_cannot_read() -> None:
    described = system(Arch.ARM64, dom0(), guest("g", enhanced="enabled"))
    message = refusal(lambda: dom0less.add_domains(described, fdt.DeviceTree(), [], (4, 16)))
    assert "does not read xen,enhanced" in message


def test_dom0less_domains_need_cpus_and_memory() -> None:
    described = system(Arch.ARM64, dom0(), guest("g", vcpus=None))
    assert "Xen panics without 'cpus'" in refusal(
        lambda: dom0less.add_domains(described, fdt.DeviceTree(), [], (4, 17))
    )


def test_the_lcm_indexes_every_module_after_itself() -> None:
    first, second = dom0(vcpus=1), guest("g", capabilities=frozenset())
    described = system(Arch.X86_64, first, second)
    chain = hyperlaunch.Chain([kernel_of(first), kernel_of(second, "g-Image")])
    tree = hyperlaunch.lcm_tree(described, chain)
    hypervisor = tree.node("/chosen/hypervisor")
    assert hypervisor is not None
    assert fdt.as_string(hypervisor.get("compatible") or b"") == "hypervisor,xen"
    node = tree.node("/chosen/hypervisor/g")
    assert node is not None and fdt.as_u32(node.get("domid") or b"") == 1
    kernel = node.child("kernel")
    assert kernel is not None and fdt.as_u32(kernel.get("module-index") or b"") == 2
    zero = tree.node("/chosen/hypervisor/dom0")
    assert zero is not None and fdt.as_u32(zero.get("capabilities") or b"") == 7


# --- Refusals: every output either carries the binding or says why not ----------------------


def test_hyperlaunch_is_refused_by_efi_paths_even_with_one_domain() -> None:
    one = system(Arch.X86_64, dom0(), kind=Binding.HYPERLAUNCH)
    chosen = binding.of(one)
    for call in (
        lambda: chosen.unified_sections(one),
        lambda: chosen.efi_boot(one, [], None, "xen.dtb"),
    ):
        message = refusal(call)
        assert message.startswith('[image] binding: "hyperlaunch" needs the LCM')
        assert "several domains" not in message


def test_dom0less_domus_are_refused_by_unified_and_grub() -> None:
    described = system(Arch.ARM64, dom0(), guest("g"))
    chosen = binding.of(described)
    assert "a unified image carries one domain" in refusal(
        lambda: chosen.unified_sections(described)
    )


@pytest.mark.parametrize(
    ("version", "expected"),
    [((4, 22), True), ((4, 22, 0), True), ((4, 21, 2), True), ((4, 21, 3), True),
     ((4, 21, 1), False), ((4, 21), False), ((4, 20, 9), False), (None, False)],
)  # fmt: skip
def test_network_fix_counts_its_backport(version: tuple[int, ...] | None, expected: bool) -> None:
    """The unified image over PXE: 4.22, and 4.21.2 which took the fix; a 4.21 whose patch
    release is unknown is not trusted with it."""
    assert policy.reads(version, "unified over the network") is expected
    assert efi.loads_unified_over_network(Arch.X86_64, version) is expected
    assert efi.loads_unified_over_network(Arch.ARM64, version) is False
