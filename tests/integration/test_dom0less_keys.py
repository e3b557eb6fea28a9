"""Every dom0less key of the description (booting.txt up to Xen 4.22), as Xen reads it: each
written by `hlimage lcm` and read back by dtc and libfdt, the same in the ESP's device tree and
in the tree the U-Boot path hands Xen, and refused for a Xen that cannot read it, with the
release that can, or for one built without what it needs.

Xen images of releases no package ships are Debian's 4.20 restamped (tests/support/
xen_images.py): they are read, never booted.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from hlimage import config
from hlimage.formats import fdt
from hlimage.xen import modules as boot_modules
from hlimage.xen import uboot
from tests.conftest import require, run_cli
from tests.integration.test_lcm import libfdt_props
from tests.support import payloads, xen_images

EVERYTHING = {
    symbol: True
    for symbol in (
        "CONFIG_STATIC_MEMORY",
        "CONFIG_STATIC_SHM",
        "CONFIG_BOOT_TIME_CPUPOOLS",
        "CONFIG_ARM64_SVE",
        "CONFIG_LLC_COLORING",
        "CONFIG_SCHED_NULL",
        "CONFIG_STATIC_EVTCHN",
        "CONFIG_SCMI_SMC",
        "CONFIG_ARM_SMMU_V3",
    )
}

XEN = """[image]
arch = "arm64"

[xen]
efi = "{efi}"
dtb = "{dtb}"
cmdline = "console=dtuart{xen_cmdline}"
{xen_extra}
"""

DOM0 = """
[[domain]]
name = "dom0"
kernel = "{kernel}"
memory = "512M"
{extra}
"""

GUEST = """
[[domain]]
name = "{name}"
kernel = "{kernel}"
memory = "{memory}"
vcpus = {vcpus}
{extra}
"""

ALL_KEYS_GUEST1 = """vpl011 = true
enhanced = "no-xenstore"
passthrough = "disabled"
max_grant_version = 1
max_grant_frames = 32
max_maptrack_frames = 512
sve = 256
shared_mem = [
  { id = "shm0", host = "0x60000000", guest = "0x50000000", size = "16M", role = "borrower" },
  { id = "shm1", guest = "0x52000000", size = "2M" },
]
event_channels = [{ port = 11, peer = "guest2", peer_port = 12 }]
vcpu_affinity = ["0", "0-1"]
trap_unmapped_accesses = false
sci_type = "scmi_smc"
cpupool = "pool1"
nr_spis = 8
"""

ALL_KEYS_GUEST2 = """static_mem = [["0x48000000", "32M"], ["0x4c000000", "32M"]]
direct_map = true
shared_mem = [
  { id = "shm2", host = "0x54000000", guest = "0x54000000", size = "2M", role = "owner" },
]
"""


def host_dtb(
    tmp_path: Path, chosen_cells: tuple[int, int] | None = None, ram: int | None = None
) -> Path:
    """QEMU virt's tree (two CPUs, 2 GiB at 1 GiB), /chosen given its own cells and the RAM
    another size if asked."""
    tree = fdt.parse((payloads.CACHE / payloads.ARM64_DTB).read_bytes())
    if ram is not None:
        memory = tree.node("/memory@40000000")
        assert memory is not None
        memory.set("reg", fdt.cells(0, 0x40000000, ram >> 32, ram & 0xFFFFFFFF))
    if chosen_cells is not None:
        chosen = tree.ensure("/chosen")
        chosen.set("#address-cells", fdt.u32(chosen_cells[0]))
        chosen.set("#size-cells", fdt.u32(chosen_cells[1]))
    path = tmp_path / "host.dtb"
    path.write_bytes(tree.build())
    return path


def describe(
    tmp_path: Path,
    *,
    release: str = "4.22.0",
    options: dict[str, bool] = EVERYTHING,
    dom0: str | None = "",
    guests: tuple[tuple[str, str, int, str], ...] = (),
    xen_extra: str = "",
    xen_cmdline: str = "",
    efi: Path | None = None,
    dtb: Path | None = None,
) -> Path:
    if efi is None:
        efi = xen_images.restamped(tmp_path / f"xen-{release}.efi", release, options)
    kernel = payloads.CACHE / "arm64/Image"
    text = XEN.format(
        efi=efi,
        dtb=dtb or host_dtb(tmp_path),
        xen_extra=xen_extra,
        xen_cmdline=xen_cmdline,
    )
    if dom0 is not None:
        text += DOM0.format(kernel=kernel, extra=dom0)
    for name, memory, vcpus, extra in guests:
        text += GUEST.format(name=name, kernel=kernel, memory=memory, vcpus=vcpus, extra=extra)
    path = tmp_path / "hlimage.toml"
    path.write_text(text)
    return path


def everything(tmp_path: Path) -> Path:
    """A classic dom0 and two domUs between them using every key."""
    return describe(
        tmp_path,
        dom0='shared_mem = [{ id = "shm0", host = "0x60000000", guest = "0x60000000", '
        'size = "16M", role = "owner" }]\n'
        'event_channels = [{ port = 10, peer = "guest1", peer_port = 20 }]\n',
        guests=(("guest1", "128M", 2, ALL_KEYS_GUEST1), ("guest2", "64M", 1, ALL_KEYS_GUEST2)),
        xen_extra='static_heap = [["0x80000000", "768M"]]\n\n'
        '[[cpupool]]\nname = "pool1"\ncpus = ["cpu@1"]\nscheduler = "null"\n',
    )


def lcm(description: Path, tmp_path: Path) -> bytes:
    result = run_cli("lcm", description, "-o", tmp_path / "tree.dtb")
    assert result.code == 0, result.stderr
    return (tmp_path / "tree.dtb").read_bytes()


def refusal(description: Path, tmp_path: Path) -> str:
    result = run_cli("lcm", description, "-o", tmp_path / "tree.dtb")
    assert result.code == 2, result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert not (tmp_path / "tree.dtb").exists()
    return result.stderr


def dtc_warnings(blob: bytes, tmp_path: Path) -> list[str]:
    require(shutil.which("dtc") is not None, "dtc (device-tree-compiler) not installed")
    path = tmp_path / "check.dtb"
    path.write_bytes(blob)
    result = subprocess.run(
        ["dtc", "-I", "dtb", "-O", "dts", "-o", "/dev/null", str(path)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stderr.splitlines()


def phandle_target(blob: bytes, handle: bytes) -> str:
    """The path of the node with this phandle, as libfdt finds it."""
    libfdt = pytest.importorskip("libfdt")
    tree = libfdt.Fdt(blob)
    offset = tree.node_offset_by_phandle(fdt.as_u32(handle))
    return str(tree.get_path(offset))


def test_every_key_is_written_as_xen_reads_it(cache: Path, tmp_path: Path) -> None:
    blob = lcm(everything(tmp_path), tmp_path)
    # dtc finds nothing wrong but what Xen asks for: #address-cells/#size-cells on /chosen and
    # on each domain node, whose modules get `reg` only at boot.
    assert dtc_warnings(blob, tmp_path) == [
        f"/dev/null: Warning (avoid_unnecessary_addr_size): {path}: unnecessary "
        '#address-cells/#size-cells without "ranges" or child "reg" property'
        for path in ("/chosen", "/chosen/guest1", "/chosen/guest2")
    ]
    chosen = libfdt_props(blob, "/chosen")
    # Root cells (2, 2 on QEMU virt) for the static heap; 64 KiB aligned.
    assert chosen["xen,static-heap"] == fdt.cells(0, 0x80000000, 0, 768 << 20)
    assert chosen["#address-cells"] == fdt.u32(2) and chosen["#size-cells"] == fdt.u32(2)

    pool = libfdt_props(blob, "/chosen/pool1")
    assert pool["compatible"] == b"xen,cpupool\0"
    assert pool["cpupool-sched"] == b"null\0"
    assert phandle_target(blob, pool["cpupool-cpus"]) == "/cpus/cpu@1"

    guest1 = libfdt_props(blob, "/chosen/guest1")
    assert guest1["domain-cpupool"] == pool["phandle"]
    assert guest1["xen,enhanced"] == b"no-xenstore\0"
    assert guest1["passthrough"] == b"disabled\0"
    assert guest1["max_grant_version"] == fdt.u32(1)
    assert guest1["max_grant_frames"] == fdt.u32(32)
    assert guest1["max_maptrack_frames"] == fdt.u32(512)
    assert guest1["sve"] == fdt.u32(256)  # bits, as sve_domctl_vl_param takes it
    assert guest1["trap-unmapped-accesses"] == fdt.u32(0)  # a u32, not an empty property
    assert guest1["xen,sci_type"] == b"scmi_smc\0"
    assert guest1["nr_spis"] == fdt.u32(8)
    for vcpu, affinity in ((0, b"0\0"), (1, b"0-1\0")):
        node = libfdt_props(blob, f"/chosen/guest1/vcpu{vcpu}")
        assert node == {"compatible": b"xen,vcpu\0", "id": fdt.u32(vcpu), "hard-affinity": affinity}

    # Shared memory: <host guest size> in the parent's cells, or <guest size> without a host.
    shm0 = libfdt_props(blob, "/chosen/guest1/shm-shm0")
    assert shm0["compatible"] == b"xen,domain-shared-memory-v1\0"
    assert shm0["xen,shm-id"] == b"shm0\0" and shm0["role"] == b"borrower\0"
    assert shm0["xen,shared-mem"] == fdt.cells(0, 0x60000000, 0, 0x50000000, 0, 16 << 20)
    shm1 = libfdt_props(blob, "/chosen/guest1/shm-shm1")
    assert shm1["xen,shared-mem"] == fdt.cells(0, 0x52000000, 0, 2 << 20) and "role" not in shm1
    dom0_shm = libfdt_props(blob, "/chosen/shm-shm0")  # a classic dom0's is under /chosen
    assert dom0_shm["role"] == b"owner\0"
    assert dom0_shm["xen,shared-mem"] == fdt.cells(0, 0x60000000, 0, 0x60000000, 0, 16 << 20)

    # Event channels: both ends, each pointing at the other.
    pairs = [("/chosen/evtchn-10", "/chosen/guest1/evtchn-20", 10, 20),
             ("/chosen/guest1/evtchn-11", "/chosen/guest2/evtchn-12", 11, 12)]  # fmt: skip
    for local_path, remote_path, local_port, remote_port in pairs:
        local = libfdt_props(blob, local_path)
        remote = libfdt_props(blob, remote_path)
        assert local["compatible"] == remote["compatible"] == b"xen,evtchn-v1\0"
        assert fdt.as_cells(local["xen,evtchn"])[0] == local_port
        assert fdt.as_cells(remote["xen,evtchn"])[0] == remote_port
        assert phandle_target(blob, local["xen,evtchn"][4:]) == remote_path
        assert phandle_target(blob, remote["xen,evtchn"][4:]) == local_path

    shm2 = libfdt_props(blob, "/chosen/guest2/shm-shm2")  # direct-mapped: host = guest
    assert shm2["xen,shared-mem"] == fdt.cells(0, 0x54000000, 0, 0x54000000, 0, 2 << 20)
    guest2 = libfdt_props(blob, "/chosen/guest2")
    # /chosen's cells (2 and 2), which Xen's early parser reads xen,static-mem with.
    assert guest2["xen,static-mem"] == fdt.cells(
        0, 0x48000000, 0, 32 << 20, 0, 0x4C000000, 0, 32 << 20
    )
    assert guest2["direct-map"] == b""
    tree = fdt.parse(blob)
    assert fdt.parse(tree.build()) == tree


def test_esp_and_uboot_trees_carry_the_same_nodes(cache: Path, tmp_path: Path) -> None:
    description = everything(tmp_path)
    reference = fdt.parse(lcm(description, tmp_path))
    result = run_cli("build", description, "-f", "esp", "-o", tmp_path / "esp")
    assert result.code == 0, result.stderr
    assert fdt.parse((tmp_path / "esp/EFI/BOOT/xen.dtb").read_bytes()) == reference
    system = config.load(description)
    modules = boot_modules.all_modules(system)
    memory_plan = uboot.plan(system, modules, script_size=4096, version=(4, 22))
    booted = uboot.host_tree(system, memory_plan, (4, 22))
    for path in ("/chosen/pool1", "/chosen/guest1/vcpu1", "/chosen/guest1/shm-shm0",
                 "/chosen/guest2/evtchn-12", "/chosen/evtchn-10", "/chosen/shm-shm0"):  # fmt: skip
        ours, theirs = booted.node(path), reference.node(path)
        assert ours is not None and theirs is not None, path
        assert ours.properties == theirs.properties, path
    guest2 = booted.node("/chosen/guest2")
    assert guest2 is not None and guest2.get("xen,static-mem") == reference.node(
        "/chosen/guest2"
    ).get("xen,static-mem")  # type: ignore[union-attr]
    # Nothing U-Boot loads lands in memory the description gives away.
    for slot in memory_plan.slots:
        for start, size in (
            (0x48000000, 64 << 20),
            (0x60000000, 16 << 20),
            (0x80000000, 768 << 20),
        ):
            assert slot.end <= start or start + size <= slot.address, slot


def test_static_mem_takes_chosen_cells(cache: Path, tmp_path: Path) -> None:
    """A board whose /chosen has 1-cell addresses and sizes: Xen reads xen,static-mem with
    them (process_domain_node gets its parent's cells), not with the domain node's 2 and 2."""
    description = describe(
        tmp_path,
        dtb=host_dtb(tmp_path, chosen_cells=(1, 1)),
        guests=(("guest", "32M", 1, 'static_mem = [["0x48000000", "32M"]]\n'),),
    )
    guest = libfdt_props(lcm(description, tmp_path), "/chosen/guest")
    assert guest["xen,static-mem"] == fdt.cells(0x48000000, 32 << 20)
    assert guest["#address-cells"] == fdt.u32(2)  # its modules' reg keeps two cells


def test_static_mem_that_does_not_fit_chosen_cells(cache: Path, tmp_path: Path) -> None:
    description = describe(
        tmp_path,
        dtb=host_dtb(tmp_path, chosen_cells=(1, 1), ram=8 << 30),
        guests=(("guest", "32M", 1, 'static_mem = [["0x148000000", "32M"]]\n'),),
    )
    message = refusal(description, tmp_path)
    assert "does not fit in /chosen's #address-cells/#size-cells (1, 1)" in message


def test_passthrough_enabled(cache: Path, tmp_path: Path) -> None:
    description = describe(tmp_path, guests=(("g", "32M", 1, 'passthrough = "enabled"\n'),))
    assert libfdt_props(lcm(description, tmp_path), "/chosen/g")["passthrough"] == b"enabled\0"


@pytest.mark.parametrize(
    ("extra", "release", "feature", "first"),
    [
        ("max_grant_version = 1\n", "4.17", "max_grant_version", "4.18"),
        ("max_grant_frames = 8\n", "4.17", "max_grant_frames", "4.18"),
        ("max_maptrack_frames = 8\n", "4.17", "max_maptrack_frames", "4.18"),
        ("sve = 128\n", "4.17", "sve", "4.18"),
        ('passthrough = "disabled"\n', "4.17", "passthrough", "4.19"),
        ('shared_mem = [{ id = "a", guest = "0x50000000", size = "2M" }]\n', "4.17",
         "xen,shared-mem without a host address", "4.19"),
        ('colors = "0-1"\n', "4.17", "llc-colors", "4.20"),
        ('vcpu_affinity = ["0"]\n', "4.20", "xen,vcpu", "4.21"),
        ("trap_unmapped_accesses = true\n", "4.20", "trap-unmapped-accesses", "4.21"),
        ('sci_type = "none"\n', "4.20", "xen,sci_type", "4.21"),
        ('enhanced = "legacy"\n', "4.20", 'xen,enhanced "legacy"', "4.21"),
    ],
)  # fmt: skip
def test_refused_for_a_xen_that_cannot_read_it(
    cache: Path, tmp_path: Path, extra: str, release: str, feature: str, first: str
) -> None:
    options = {"CONFIG_STATIC_SHM": True, "CONFIG_STATIC_MEMORY": True}
    description = describe(
        tmp_path, release=f"{release}.0", options=options, guests=(("g", "32M", 1, extra),)
    )
    message = refusal(description, tmp_path)
    assert f"does not read {feature} (Xen {first} and newer do)" in message
    assert f"Xen {release} ([xen] efi)" in message


@pytest.mark.parametrize(
    ("extra", "xen_extra", "symbol", "said"),
    [
        ('static_mem = [["0x48000000", "32M"]]\n', "", "CONFIG_STATIC_MEMORY",
         "Xen cannot allocate it"),
        ('static_mem = [["0x48000000", "32M"]]\ndirect_map = true\n', "",
         "CONFIG_STATIC_MEMORY", '"direct-map is not valid for domain g without static '
         'allocation."'),
        ('shared_mem = [{ id = "a", host = "0x50000000", guest = "0x50000000", size = "2M" }]\n',
         "", "CONFIG_STATIC_SHM", "CONFIG_STATIC_SHM must be enabled for parsing static shared"),
        ("sve = 128\n", "", "CONFIG_ARM64_SVE", "'sve' property found, but CONFIG_ARM64_SVE not"),
        ('sci_type = "scmi_smc"\n', "", "CONFIG_SCMI_SMC", "xen,sci_type=scmi_smc requested"),
        ('cpupool = "p"\n', '[[cpupool]]\nname = "p"\ncpus = ["cpu@1"]\n',
         "CONFIG_BOOT_TIME_CPUPOOLS", "runs every domain in Pool-0"),
        ('event_channels = [{ port = 1, peer = "dom0", peer_port = 2 }]\n', "",
         "CONFIG_STATIC_EVTCHN", "ignores the event channel nodes"),
    ],
)  # fmt: skip
def test_refused_for_a_xen_built_without_it(
    cache: Path, tmp_path: Path, extra: str, xen_extra: str, symbol: str, said: str
) -> None:
    options = {**EVERYTHING, symbol: False}
    description = describe(
        tmp_path, options=options, guests=(("g", "32M", 1, extra),), xen_extra=xen_extra
    )
    message = refusal(description, tmp_path)
    assert f"the Xen image was built without {symbol} (embedded in the image)" in message
    assert said in message and f"use a Xen built with {symbol}=y" in message


def test_debian_xen_says_what_it_was_built_without(cache: Path, tmp_path: Path) -> None:
    """Debian's own images carry their .config: static memory is not in them."""
    description = describe(
        tmp_path,
        efi=payloads.xen_efi("arm64", "4.20"),
        guests=(("g", "32M", 1, 'static_mem = [["0x48000000", "32M"]]\n'),),
    )
    assert "built without CONFIG_STATIC_MEMORY" in refusal(description, tmp_path)


def test_the_config_beside_the_image_counts(cache: Path, tmp_path: Path) -> None:
    """A Xen that carries no .config (CONFIG_HYPFS_CONFIG=n) is judged by the one a
    distribution installs beside it, /boot/xen-4.20-arm64.config."""
    data = bytearray(payloads.xen_efi("arm64", "4.20").read_bytes())
    offset, length, text = xen_images._config_stream(bytes(data))
    data[offset : offset + length] = b"\0" * length
    efi = tmp_path / "xen-4.20-arm64.efi"
    efi.write_bytes(bytes(data))
    (tmp_path / "xen-4.20-arm64.config").write_bytes(text.replace(
        b"# CONFIG_ARM64_SVE is not set", b"CONFIG_ARM64_SVE=y"
    ) if b"# CONFIG_ARM64_SVE is not set" in text else text + b"CONFIG_ARM64_SVE=y\n")  # fmt: skip
    description = describe(tmp_path, efi=efi, guests=(("g", "32M", 1, "sve = 128\n"),))
    assert libfdt_props(lcm(description, tmp_path), "/chosen/g")["sve"] == fdt.u32(128)
    (tmp_path / "xen-4.20-arm64.config").unlink()
    # Nothing says what it was built with: nothing is refused for it.
    assert libfdt_props(lcm(description, tmp_path), "/chosen/g")["sve"] == fdt.u32(128)


def test_passthrough_on_the_hardware_domain(cache: Path, tmp_path: Path) -> None:
    extra = 'capabilities = ["hardware"]\npassthrough = "enabled"\n'
    description = describe(tmp_path, dom0=None, guests=(("hw", "32M", 1, extra),),
                           dtb=host_dtb(tmp_path))  # fmt: skip
    message = refusal(description, tmp_path)
    assert "passthrough: not allowed on the hardware domain (Xen panics \"Don't specify" in message
