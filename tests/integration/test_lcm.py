"""Device trees hlimage writes (dom0less host trees, the hyperlaunch LCM) and ESP trees.

Every DTB is checked three ways: dtc decompiles it without warnings, libfdt reads back each
property with the intended value, and hlimage's own parser round-trips it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from hlimage.formats import fdt
from hlimage.plumbing.streams import file_sha256
from hlimage.xen import hyperlaunch
from tests.conftest import require, run_cli
from tests.support import descriptions, payloads
from tests.support.descriptions import Guest


def lcm_of(description: Path, tmp_path: Path, name: str = "out.dtb") -> bytes:
    result = run_cli("lcm", description, "-o", tmp_path / name)
    assert result.code == 0, result.stderr
    return (tmp_path / name).read_bytes()


def dtc_clean(blob: bytes, tmp_path: Path, domains: tuple[str, ...] = ()) -> str:
    """dtc decompiles the blob with no warning, except one per dom0less domain node: Xen's EFI
    stub requires #address-cells/#size-cells there ("#address-cells not found in domain
    node"), while its modules carry xen,uefi-binary and get `reg` only at boot, which dtc's
    avoid_unnecessary_addr_size lint cannot know."""
    require(shutil.which("dtc") is not None, "dtc (device-tree-compiler) not installed")
    path = tmp_path / "check.dtb"
    path.write_bytes(blob)
    result = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    expected = [
        f"<stdout>: Warning (avoid_unnecessary_addr_size): /chosen/{name}: unnecessary "
        '#address-cells/#size-cells without "ranges" or child "reg" property'
        for name in domains
    ]
    assert result.stderr.splitlines() == expected
    return result.stdout


def libfdt_props(blob: bytes, path: str) -> dict[str, bytes]:
    libfdt = pytest.importorskip("libfdt")
    tree = libfdt.Fdt(blob)
    offset = tree.path_offset(path)
    props = {}
    prop_offset = tree.first_property_offset(offset, [libfdt.NOTFOUND])
    while prop_offset >= 0:
        prop = tree.get_property_by_offset(prop_offset)
        props[prop.name] = bytes(prop)
        prop_offset = tree.next_property_offset(prop_offset, [libfdt.NOTFOUND])
    return props


def test_dom0less_tree(cache: Path, tmp_path: Path) -> None:
    guests = [
        Guest("guest1", "192M", 1, 'vpl011 = true\nenhanced = "enabled"\n'),
        Guest("guest2", "256M", 2, 'vpl011 = true\nnr_spis = 16\n'
                                   'static_mem = [["0x50000000", "64M"]]\ndirect_map = true\n'),
    ]  # fmt: skip
    blob = lcm_of(descriptions.arm64(tmp_path, guests), tmp_path)
    dts = dtc_clean(blob, tmp_path, ("guest1", "guest2"))
    assert "guest1 {" in dts and 'compatible = "xen,domain";' in dts
    props = libfdt_props(blob, "/chosen/guest1")
    assert props["compatible"] == b"xen,domain\0"
    assert props["#address-cells"] == fdt.u32(2) and props["#size-cells"] == fdt.u32(2)
    assert props["memory"] == (192 * 1024).to_bytes(8, "big")  # KiB, two cells
    assert props["cpus"] == fdt.u32(1)
    assert props["vpl011"] == b"" and props["xen,enhanced"] == b"enabled\0"
    assert "capabilities" not in props  # none listed; and Xen 4.17 would not read them
    guest2 = libfdt_props(blob, "/chosen/guest2")
    assert guest2["cpus"] == fdt.u32(2) and guest2["nr_spis"] == fdt.u32(16)
    assert guest2["xen,static-mem"] == fdt.cells(0, 0x50000000, 0, 64 << 20)
    assert guest2["direct-map"] == b""
    kernel = libfdt_props(blob, "/chosen/guest1/kernel")
    assert kernel["compatible"] == b"multiboot,kernel\0multiboot,module\0"
    assert kernel["xen,uefi-binary"] == b"Image\0"
    assert kernel["bootargs"] == b"console=ttyAMA0\0"
    ramdisk = libfdt_props(blob, "/chosen/guest2/ramdisk")
    assert ramdisk["compatible"] == b"multiboot,ramdisk\0multiboot,module\0"
    assert ramdisk["xen,uefi-binary"] == b"guest2.cpio.gz\0"
    # The classic dom0 stays out of the tree: it comes through xen.cfg.
    assert fdt.parse(blob).node("/chosen/dom0") is None
    # Our parser round-trips it, and the host tree is otherwise untouched.
    tree = fdt.parse(blob)
    assert fdt.parse(tree.build()) == tree
    host = fdt.parse((cache / payloads.ARM64_DTB).read_bytes())
    chosen = tree.ensure("/chosen")
    chosen.remove_child("guest1")
    chosen.remove_child("guest2")
    assert tree == host


def test_dts_output_compiles_to_the_same_tree(cache: Path, tmp_path: Path) -> None:
    require(shutil.which("dtc") is not None, "dtc not installed")
    description = descriptions.arm64(tmp_path, [Guest("guest1")])
    blob = lcm_of(description, tmp_path)
    result = run_cli("lcm", description, "--dts", "-o", tmp_path / "out.dts")
    assert result.code == 0
    compiled = subprocess.run(
        ["dtc", "-I", "dts", "-O", "dtb", str(tmp_path / "out.dts")],
        capture_output=True,
        check=True,
    ).stdout
    assert fdt.parse(compiled) == fdt.parse(blob)


def hyperlaunch_description(tmp_path: Path, domains: int = 1, extra: str = "") -> Path:
    path = descriptions.x86_classic(tmp_path, extra="vcpus = 2\n" + extra)
    text = path.read_text()
    for index in range(1, domains):
        text += f"""
[[domain]]
name = "guest{index}"
kernel = "{payloads.CACHE / "x86_64/vmlinuz"}"
initrd = "dom0.cpio.gz"
memory = "128M"
mode = "pvh"
"""
    path.write_text(text)
    return path


def test_hyperlaunch_lcm_follows_the_v6_parser(cache: Path, tmp_path: Path) -> None:
    """docs/xen-boot-formats.md 2.3: what the v6 parser reads, names exactly as it matches them."""
    description = hyperlaunch_description(tmp_path)
    result = run_cli("lcm", description, "-o", tmp_path / "lcm.dtb")
    assert result.code == 0
    assert "has no hyperlaunch parser" in result.stderr  # Debian's 4.17 cannot boot it
    blob = (tmp_path / "lcm.dtb").read_bytes()
    dtc_clean(blob, tmp_path)
    assert libfdt_props(blob, "/chosen/hypervisor")["compatible"] == b"hypervisor,xen\0"
    dom0 = libfdt_props(blob, "/chosen/hypervisor/dom0")
    assert dom0["compatible"] == b"xen,domain\0"
    assert dom0["domid"] == fdt.u32(0)
    assert dom0["mode"] == fdt.u32(1)  # PV; 0 would be a PVH dom0, which needs an IOMMU
    assert dom0["capabilities"] == fdt.u32(7)  # absent would build dom0 unprivileged
    assert dom0["memory"] == (512 * 1024).to_bytes(8, "big")  # u64 KiB: one cell panics
    assert dom0["cpus"] == fdt.u32(2)
    kernel = libfdt_props(blob, "/chosen/hypervisor/dom0/kernel")
    assert kernel["compatible"] == b"multiboot,kernel\0multiboot,module\0"
    assert kernel["module-index"] == fdt.u32(1) and "reg" not in kernel
    assert kernel["bootargs"] == b"console=hvc0 earlyprintk=xen\0"
    ramdisk = libfdt_props(blob, "/chosen/hypervisor/dom0/ramdisk")
    assert ramdisk["compatible"] == b"multiboot,ramdisk\0multiboot,module\0"
    assert ramdisk["module-index"] == fdt.u32(2)
    # None of the design document's names, which the parser does not read.
    for name in (b"mb-index", b"module-addr", b"permissions", b"functions", b"module,kernel"):
        assert name not in blob


def test_hyperlaunch_indices_match_the_module_chain(cache: Path, tmp_path: Path) -> None:
    from hlimage import config

    description = hyperlaunch_description(tmp_path, domains=3)
    result = run_cli("lcm", description, "-o", tmp_path / "lcm.dtb")
    assert result.code == 0 and "builds only the first 1" in result.stderr
    tree = fdt.parse((tmp_path / "lcm.dtb").read_bytes())
    chain = hyperlaunch.module_order(config.load(description))
    indices = {}
    for domain in ("dom0", "guest1", "guest2"):
        node = tree.node(f"/chosen/hypervisor/{domain}")
        assert node is not None
        assert fdt.as_u32(node.get("domid") or b"") == {"dom0": 0, "guest1": 1, "guest2": 2}[domain]
        for child in node.children:
            indices[(domain, child.name)] = fdt.as_u32(child.get("module-index") or b"")
    expected = {
        (m.domain.name if m.domain else "", m.role.value): chain.index(m) for m in chain.modules
    }
    assert indices == expected
    assert sorted(indices.values()) == list(range(1, 7))  # LCM is 0, nothing skipped
    guest1 = tree.node("/chosen/hypervisor/guest1")
    assert guest1 is not None and fdt.as_u32(guest1.get("mode") or b"") == 0  # pvh


def test_hyperlaunch_chain_longer_than_xen_takes(cache: Path, tmp_path: Path) -> None:
    description = hyperlaunch_description(tmp_path, domains=32)
    result = run_cli("lcm", description, "-o", tmp_path / "lcm.dtb")
    assert result.code == 2
    assert "the hyperlaunch chain would have 65 modules" in result.stderr
    assert "Xen takes at most 63" in result.stderr


@pytest.mark.parametrize(
    ("guest", "dom0", "expected"),
    [
        (Guest("g", vcpus=None), True, '[[domain]] "g" vcpus: is missing; Xen panics without'),
        (Guest("g", extra='capabilities = ["control"]\n'), False,
         '[[domain]] "g" capabilities: Xen 4.17 ([xen] efi) does not read capabilities '
         "(Xen 4.21 and newer do)"),
        (Guest("g", extra="direct_map = true\n"), True, "direct_map: needs static_mem"),
        (Guest("g", extra='passthrough = "enabled"\ncapabilities = ["hardware"]\n'), False,
         "passthrough: not allowed on the hardware domain"),
        (Guest("g", extra='cpupool = "pool0"\n'), True, "cpupool: [xen] dtb has no /chosen/pool0"),
        (Guest("dom0"), True, 'name: "dom0" is used by domain #1 too'),
    ],
)  # fmt: skip
def test_dom0less_mistakes(
    cache: Path, tmp_path: Path, guest: Guest, dom0: bool, expected: str
) -> None:
    description = descriptions.arm64(tmp_path, [guest], dom0=dom0)
    commands: list[list[str | Path]] = [
        ["lcm", description, "-o", tmp_path / "x.dtb"],
        ["build", description, "-f", "esp", "-o", tmp_path / "esp"],
    ]
    for command in commands:
        result = run_cli(*command)
        assert result.code == 2, result.stderr
        assert expected in result.stderr
        assert result.stderr.count("\n") == 1
    assert not (tmp_path / "x.dtb").exists() and not (tmp_path / "esp").exists()


def test_dom0less_needs_a_host_tree(cache: Path, tmp_path: Path) -> None:
    description = descriptions.arm64(tmp_path, [Guest("g")])
    description.write_text(
        "\n".join(
            line for line in description.read_text().splitlines() if not line.startswith("dtb")
        )
    )
    result = run_cli("build", description, "-f", "esp", "-o", tmp_path / "esp")
    assert result.code == 2 and "[xen] dtb: needed for dom0less domains" in result.stderr


def test_arm64_esp_tree(cache: Path, tmp_path: Path) -> None:
    guests = [Guest("guest1"), Guest("guest2", "256M", 2)]
    description = descriptions.arm64(tmp_path, guests)
    result = run_cli("build", description, "-f", "esp", "-o", tmp_path / "esp")
    assert result.code == 0, result.stderr
    boot_dir = tmp_path / "esp/EFI/BOOT"
    names = sorted(p.name for p in boot_dir.iterdir())
    # One Image for all three domains: Xen's EFI loader reads a file once per name.
    assert names == sorted(["BOOTAA64.EFI", "BOOTAA64.cfg", "Image", "dom0.cpio.gz",
                            "guest1.cpio.gz", "guest2.cpio.gz", "xen.dtb"])  # fmt: skip
    assert file_sha256(boot_dir / "BOOTAA64.EFI") == file_sha256(cache / "arm64/xen.efi")
    cfg = (boot_dir / "BOOTAA64.cfg").read_text()
    assert "kernel=Image console=hvc0 earlycon=xenboot\n" in cfg
    assert "ramdisk=dom0.cpio.gz\n" in cfg and cfg.endswith("dtb=xen.dtb\n")
    assert (boot_dir / "xen.dtb").read_bytes() == lcm_of(description, tmp_path)
    data = json.loads(run_cli("inspect", "--json", tmp_path / "esp").stdout)
    assert data["type"] == "esp" and data["loader"] == "BOOTAA64.EFI"
    assert data["modules"]["kernel"]["detail"].startswith("arm64-image")
    domains = {d["name"]: d for d in data["modules"]["dtb"]["domains"]}
    assert domains["guest2"]["cpus"] == 2 and domains["guest2"]["memory_kib"] == 256 * 1024
    text = run_cli("inspect", tmp_path / "esp").stdout
    assert "domain guest1: 1 vCPU, 192 MiB, kernel=Image (console=ttyAMA0)" in text


def test_x86_esp_tree_and_limits(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    result = run_cli("build", description, "-f", "esp", "-o", tmp_path / "esp")
    assert result.code == 0, result.stderr
    names = sorted(p.name for p in (tmp_path / "esp/EFI/BOOT").iterdir())
    assert names == ["BOOTX64.EFI", "BOOTX64.cfg", "dom0.cpio.gz", "vmlinuz"]
    assert (
        run_cli("efi-config", description).stdout
        == (tmp_path / "esp/EFI/BOOT/BOOTX64.cfg").read_text()
    )
    again = run_cli("build", description, "-f", "esp", "-o", tmp_path / "esp")
    assert again.code == 0  # a directory output is replaced whole
    (tmp_path / "several").mkdir()
    several = hyperlaunch_description(tmp_path / "several", 2)
    result = run_cli("build", several, "-f", "esp", "-o", tmp_path / "esp2")
    assert result.code == 2 and "an x86 ESP boots one domain" in result.stderr
