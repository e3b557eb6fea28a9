"""`hlimage import imagebuilder` end to end: the command line, a description that loads through
hlimage's own config loader (for the options whose keys it has today), and one that builds an
ESP that U-Boot's bootefi would start (BOOT_CMD=bootefi) from the Debian payloads."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from hlimage import config
from hlimage.importers import imagebuilder
from hlimage.model import ALL_CAPABILITIES, Capability, MemoryRange
from tests.conftest import run_cli
from tests.support import payloads

TODAYS_KEYS = """# Only options whose hlimage keys this checkout's loader reads.
XEN="xen.efi"
DEVICE_TREE="virt.dtb"
XEN_POLICY="xenpolicy"
DOM0_KERNEL="Image"
DOM0_RAMDISK="dom0.cpio.gz"
DOM0_MEM=768
DOM0_VCPUS=2
DOM0_COLORS="0-1"
LOAD_CMD="load mmc 0:1"

NUM_DOMUS=2
DOMU_KERNEL[0]="guests/Image"
DOMU_RAMDISK[0]="guests/domu0.cpio.gz"
DOMU_CMD[0]="console=ttyAMA0 rdinit=/init"
DOMU_MEM[0]=192
DOMU_VCPUS[0]=2
DOMU_COLORS[0]="2-5"
DOMU_NR_SPIS[0]=32
DOMU_PASSTHROUGH_DTB[0]="guests/passthrough.dtb"
DOMU_CAPS[0]="xenstore"
DOMU_KERNEL[1]="guests/Image"
DOMU_STATIC_MEM[1]="0x50000000 0x8000000"
DOMU_ENHANCED[1]=0
DOMU_VPL011[1]=0
"""


def test_todays_keys_load_through_the_config_loader(tmp_path: Path) -> None:
    source = tmp_path / "imagebuilder"
    (source / "guests").mkdir(parents=True)
    for name in ("xen.efi", "virt.dtb", "xenpolicy", "Image", "dom0.cpio.gz", "guests/Image",
                 "guests/domu0.cpio.gz", "guests/passthrough.dtb"):  # fmt: skip
        (source / name).write_bytes(b"x")
    (source / "config").write_text(TODAYS_KEYS)
    (tmp_path / "out").mkdir()
    description = tmp_path / "out" / "hlimage.toml"
    result = run_cli("import", "imagebuilder", source / "config", "-o", description)
    assert result.code == 0, result.stderr
    assert result.stdout == (
        f"hlimage build {description} --format uboot -o {tmp_path / 'out' / 'uboot'}\n"
    )

    system = config.load(description)

    def where(path: Path | None) -> Path:
        assert path is not None
        return path.resolve()

    assert where(system.xen.efi) == source / "xen.efi"
    assert where(system.xen.dtb) == source / "virt.dtb"
    assert where(system.xen.xsm) == source / "xenpolicy"
    assert system.xen.cmdline == "console=dtuart dtuart=serial0 bootscrub=0 vwfi=native sched=null"
    dom0, first, second = system.domains
    assert dom0.name == "dom0" and where(dom0.kernel) == source / "Image"
    assert [where(part) for part in dom0.initrd] == [source / "dom0.cpio.gz"]
    assert (dom0.memory, dom0.vcpus, dom0.colors) == (768 << 20, 2, "0-1")
    assert dom0.capabilities == ALL_CAPABILITIES
    assert dom0.cmdline.endswith("clk_ignore_unused root=/dev/ram0")
    assert first.name == "domU0" and where(first.kernel) == source / "guests" / "Image"
    assert [where(part) for part in first.initrd] == [source / "guests" / "domu0.cpio.gz"]
    assert (first.cmdline, first.memory, first.vcpus) == (
        "console=ttyAMA0 rdinit=/init",
        192 << 20,
        2,
    )
    assert (first.vpl011, first.enhanced, first.colors, first.nr_spis) == (
        True,
        "enabled",
        "2-5",
        32,
    )
    assert where(first.passthrough_dtb) == source / "guests" / "passthrough.dtb"
    assert first.capabilities == frozenset({Capability.XENSTORE})
    assert (second.memory, second.vcpus, second.vpl011, second.enhanced) == (
        128 << 20,
        1,
        False,
        None,
    )
    assert second.static_mem == (MemoryRange(0x50000000, 128 << 20),)
    assert second.direct_map and second.cmdline == "" and second.capabilities == frozenset()


def test_bootefi_config_builds_an_esp(cache: Path, tmp_path: Path) -> None:
    for name in ("dom0", "domu0", "domu1"):
        payloads.make_initramfs("arm64", name, tmp_path / f"{name}.cpio.gz")
    (tmp_path / "config").write_text(
        f"""MEMORY_START=0x40000000
MEMORY_END=0xC0000000
LOAD_CMD=sd
BOOT_CMD=bootefi
DEVICE_TREE="{cache / payloads.ARM64_DTB}"
XEN="{payloads.xen_efi("arm64", "4.17")}"
XEN_CMD="console=dtuart loglvl=all"
DOM0_KERNEL="{cache / "arm64/Image"}"
DOM0_RAMDISK=dom0.cpio.gz
DOM0_CMD="console=hvc0 earlycon=xenboot"
NUM_DOMUS=2
DOMU_KERNEL[0]="$DOM0_KERNEL"
DOMU_RAMDISK[0]=domu0.cpio.gz
DOMU_MEM[0]=192
DOMU_KERNEL[1]="$DOM0_KERNEL"
DOMU_RAMDISK[1]=domu1.cpio.gz
DOMU_MEM[1]=160
"""
    )
    description = tmp_path / "hlimage.toml"
    result = run_cli("import", "imagebuilder", tmp_path / "config", "-o", description)
    assert result.code == 0, result.stderr
    command = shlex.split(result.stdout)
    assert command == [
        "hlimage",
        "build",
        str(description),
        "--format",
        "esp",
        "-o",
        str(tmp_path / "esp"),
    ]
    # [uboot] is for U-Boot's own loads (the uboot and fit formats), which bootefi does not
    # make: read, and left unused by the esp output.
    text = description.read_text()
    assert '[uboot]  # the RAM U-Boot loads everything into\nmemory_start = "0x40000000"' in text
    assert config.load(description).uboot.memory_start == 0x40000000

    built = run_cli(*command[1:])
    assert built.code == 0, built.stderr
    assert (tmp_path / "esp" / "EFI" / "BOOT" / "BOOTAA64.EFI").is_file()
    tree = run_cli("lcm", description, "-o", tmp_path / "host.dts", "--dts")
    assert tree.code == 0, tree.stderr
    dts = (tmp_path / "host.dts").read_text()
    for name, kib in (("domU0", 192 << 10), ("domU1", 160 << 10)):
        node = dts[dts.index(f"{name} {{") :]
        assert f"memory = <0x0 0x{kib:x}>;" in node.split("};")[0]
        assert 'xen,enhanced = "enabled";' in node.split("};")[0]


def test_the_command_line(tmp_path: Path) -> None:
    (tmp_path / "config").write_text(
        "XEN=xen\nDOM0_KERNEL=Image\nNUM_DOMUS=1\nDOMU_KERNEL[0]=Image\nDOMU_KERNEL[1]=Image\n"
    )
    output = tmp_path / "hlimage.toml"
    result = run_cli("import", "imagebuilder", tmp_path / "config", "-o", output, "-t", "tftp")
    assert result.code == 0, result.stderr
    assert result.stdout == f"hlimage build {output} --format uboot -o {tmp_path / 'uboot'}\n"
    assert result.stderr.splitlines() == [
        f"hlimage: warning: {tmp_path}/config:5: DOMU_KERNEL[1]: left out: NUM_DOMUS is 1, so "
        "ImageBuilder ignores it",
        f"hlimage: wrote {output}; then serve the files in {tmp_path / 'uboot'}/ over TFTP: "
        "U-Boot's DHCP boot reads boot.scr.uimg",
    ]
    again = run_cli("import", "imagebuilder", tmp_path / "config", "-o", output)
    assert again.code == 2 and again.stdout == ""
    assert again.stderr == (
        f"hlimage: error: {output}: -o: exists; give --force to replace it, or name another file\n"
    )
    quiet = run_cli("-q", "import", "imagebuilder", tmp_path / "config", "-o", output, "--force")
    assert quiet.code == 0 and quiet.stderr.startswith("hlimage: warning:")
    assert len(quiet.stderr.splitlines()) == 1


@pytest.mark.parametrize("args", [["import", "--help"], ["import", "imagebuilder", "--help"]])
def test_help(args: list[str]) -> None:
    result = run_cli(*args)
    assert result.code == 0 and "imagebuilder" in result.stdout.lower()


README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
# Issue 14 item 5: the options the parity table must cover.
PARITY = [
    "XEN_CMD",
    "XEN_POLICY",
    "XEN_STATIC_HEAP",
    "XEN_COLORS",
    "DOM0_MEM",
    "DOM0_VCPUS",
    "DOM0_COLORS",
    "NUM_DOMUS",
    "DOMU_KERNEL",
    "DOMU_RAMDISK",
    "DOMU_CMD",
    "DOMU_MEM",
    "DOMU_VCPUS",
    "DOMU_COLORS",
    "DOMU_CPUPOOL",
    "DOMU_ENHANCED",
    "DOMU_VPL011",
    "DOMU_NR_SPIS",
    "DOMU_PASSTHROUGH_DTB",
    "DOMU_PASSTHROUGH_PATHS",
    "DOMU_STATIC_MEM",
    "DOMU_DIRECT_MAP",
    "DOMU_SHARED_MEM",
    "DOMU_STATIC_EVTCHNS",
    "DOMU_CAPS",
    "DOMU_VCPU_HARD_AFFINITY",
    "DOMU_GRANT_VER",
    "DOMU_GRANT_FRAMES",
    "DOMU_MAPTRACK_FRAMES",
    "NUM_CPUPOOLS",
    "CPUPOOL",
    "DT_OVERLAY",
    "BITSTREAM",
    "APPEND_EXTRA_CMDS",
    "BOOT_AUX_FILE",
    "LOAD_CMD",
    "BOOT_CMD",
    "FIT",
    "FIT_ENC_KEY_DIR",
]


def parity_rows() -> dict[str, str]:
    """The parity table's first column's option names, each with its row."""
    section = README[README.index("Every ImageBuilder option, and what it is in hlimage:") :]
    table = section[: section.index("\n\n", section.index("| ImageBuilder |"))]
    rows: dict[str, str] = {}
    for line in table.splitlines()[3:]:
        first = line.split(" | ")[0]
        for name in re.findall(r"`([A-Z][A-Z0-9_]+)", first):
            rows[name] = line
    return rows


def test_the_parity_table_has_a_row_for_every_option() -> None:
    rows = parity_rows()
    missing = [name for name in (*PARITY, *imagebuilder.KNOWN) if name not in rows]
    assert not missing, f"the README's parity table has no row for {missing}"
    assert "signed FIT" in rows["FIT_ENC_KEY_DIR"]
    for name in imagebuilder.NO_EQUIVALENT:
        assert rows[name].split(" | ")[1] == "none", rows[name]
    for line in rows.values():
        assert line.count(" | ") == 2, f"a | inside a cell splits it: {line}"
