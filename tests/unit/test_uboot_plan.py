"""The U-Boot Xen policy on synthetic systems: load addresses and the host device tree."""

from __future__ import annotations

import itertools
import os
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from hlimage import config
from hlimage.errors import HlimageError
from hlimage.formats import fdt
from hlimage.model import System
from hlimage.planned import Role
from hlimage.xen import modules as boot_modules
from hlimage.xen import uboot
from tests.conftest import require

MIB = 1 << 20
RAM = 0x40000000


def arm64_image(path: Path, size: int, image_size: int) -> Path:
    """An arm64 Image header (Documentation/arch/arm64/booting.rst) and filler."""
    header = struct.pack("<IIQQQQQQ4sI", 0, 0, 0, image_size, 0xA, 0, 0, 0, b"ARM\x64", 0)
    path.write_bytes(header + os.urandom(size - len(header)))
    return path


def host_dtb(path: Path, ram: int = 2 << 30, reserved: tuple[int, int] | None = None) -> Path:
    tree = fdt.DeviceTree()
    tree.root.set("#address-cells", fdt.u32(2))
    tree.root.set("#size-cells", fdt.u32(2))
    memory = tree.ensure(f"/memory@{RAM:x}")
    memory.set("device_type", fdt.string("memory"))
    memory.set("reg", fdt.cells(0, RAM, ram >> 32, ram & 0xFFFFFFFF))
    tree.ensure("/chosen").set("bootargs", fdt.string("from qemu"))
    if reserved is not None:
        parent = tree.ensure("/reserved-memory")
        parent.set("#address-cells", fdt.u32(2))
        parent.set("#size-cells", fdt.u32(2))
        parent.set("ranges", b"")
        start, size = reserved
        node = parent.add_child(fdt.Node(f"carveout@{start:x}"))
        node.set("reg", fdt.cells(0, start, 0, size))
        node.set("no-map", b"")
    path.write_bytes(tree.build())
    return path


def system(
    tmp_path: Path,
    *,
    ram: int = 2 << 30,
    reserved: tuple[int, int] | None = None,
    initrd_size: int = 3 * MIB + 5,
    shared_kernel: bool = True,
    xsm: bool = False,
) -> System:
    xen = arm64_image(tmp_path / "xen.efi", 900_000, 3 * MIB)
    kernel = arm64_image(tmp_path / "Image", 5 * MIB + 1, 6 * MIB)
    domu_kernel = kernel if shared_kernel else arm64_image(tmp_path / "Image-domu", MIB, MIB)
    (tmp_path / "dom0.cpio").write_bytes(b"not-a-cpio-test-initrd" + os.urandom(initrd_size - 22))
    (tmp_path / "domu.cpio").write_bytes(b"not-a-cpio-test-initrd" + os.urandom(MIB - 22))
    dtb = host_dtb(tmp_path / "host.dtb", ram, reserved)
    extra = ""
    if xsm:
        (tmp_path / "xenpolicy").write_bytes(b"\x8c\xff\x7c\xf9" + os.urandom(1000))
        extra = f'xsm = "{tmp_path / "xenpolicy"}"\n'
    description = tmp_path / "hlimage.toml"
    description.write_text(f"""[image]
arch = "arm64"

[xen]
efi = "{xen}"
dtb = "{dtb}"
cmdline = "console=dtuart"
{extra}
[[domain]]
name = "dom0"
kernel = "{kernel}"
initrd = "{tmp_path / "dom0.cpio"}"
cmdline = "console=hvc0"
memory = "512M"

[[domain]]
name = "guest"
kernel = "{domu_kernel}"
initrd = "{tmp_path / "domu.cpio"}"
cmdline = "console=ttyAMA0"
memory = "128M"
vcpus = 1
vpl011 = true
""")
    return config.load(description)


def planned(
    tmp_path: Path, script_size: int = 300, **kwargs: object
) -> tuple[System, uboot.MemoryPlan]:
    described = system(tmp_path, **kwargs)  # type: ignore[arg-type]
    modules = boot_modules.all_modules(described)
    return described, uboot.plan(described, modules, script_size=script_size)


def test_packed_above_the_script_2_mib_aligned(tmp_path: Path) -> None:
    _, memory_plan = planned(tmp_path)
    # The addresses that were booted: Xen at kernel_addr_r, the tree 2 MiB on (uboot.md).
    assert memory_plan.xen.address == 0x40400000
    assert memory_plan.xen.size == 3 * MIB  # image_size, BSS included, beyond the file's end
    assert memory_plan.dtb.address == 0x40800000
    slots = memory_plan.slots
    for before, after in itertools.pairwise(slots):
        assert after.address % uboot.ALIGN == 0
        assert after.address >= before.end
        assert after.address - before.end < uboot.ALIGN  # packed: no 2 MiB step skipped
    assert [slot.label for slot in memory_plan.modules] == [
        "dom0 kernel",
        "dom0 ramdisk",
        "guest kernel",
        "guest ramdisk",
    ]
    assert memory_plan.end <= memory_plan.limit == RAM + (2 << 30) - uboot.UBOOT_RESERVE


def test_a_fit_pushes_everything_above_itself(tmp_path: Path) -> None:
    _, memory_plan = planned(tmp_path, script_size=31 * MIB + 7)
    assert memory_plan.xen.address == 0x42200000  # the first 2 MiB boundary past the FIT
    assert memory_plan.xen.address >= uboot.SCRIPTADDR + 31 * MIB + 7


def test_shared_kernel_gets_a_copy_per_domain(tmp_path: Path) -> None:
    described, memory_plan = planned(tmp_path)
    kernels = [slot for slot in memory_plan.modules if slot.module.role is Role.KERNEL]  # type: ignore[union-attr]
    assert len({slot.address for slot in kernels}) == 2
    assert described.domains[0].kernel == described.domains[1].kernel


def test_reserved_memory_is_stepped_over(tmp_path: Path) -> None:
    carveout = (0x41000000, 5 * MIB)
    _, memory_plan = planned(tmp_path, reserved=carveout)
    assert memory_plan.reserved == (carveout,)
    for slot in memory_plan.slots:
        assert slot.end <= carveout[0] or slot.address >= carveout[0] + carveout[1], slot


def test_too_little_memory_names_what_is_enough(tmp_path: Path) -> None:
    with pytest.raises(HlimageError, match=r"at least (\d+) MiB") as caught:
        planned(tmp_path, ram=128 * MIB, initrd_size=70 * MIB)
    needed = int(str(caught.value).split("at least ")[1].split(" MiB")[0])
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    _, memory_plan = planned(roomy, ram=needed * MIB, initrd_size=70 * MIB)
    assert memory_plan.end <= memory_plan.limit
    cramped = tmp_path / "cramped"
    cramped.mkdir()
    with pytest.raises(HlimageError, match="at least"):
        planned(cramped, ram=(needed - 2) * MIB, initrd_size=70 * MIB)


def test_script_outside_memory_is_refused(tmp_path: Path) -> None:
    described = system(tmp_path)
    with pytest.raises(HlimageError, match="no /memory range holds"):
        uboot.plan(described, boot_modules.all_modules(described), script_size=1, scriptaddr=0x1000)


def test_missing_host_tree_is_refused(tmp_path: Path) -> None:
    described = system(tmp_path)
    from dataclasses import replace

    without = replace(described, xen=replace(described.xen, dtb=None))
    with pytest.raises(HlimageError, match=r"\[xen\] dtb: needed for a U-Boot boot"):
        uboot.plan(without, boot_modules.all_modules(without), script_size=1)


def test_host_tree_chosen(tmp_path: Path) -> None:
    described, memory_plan = planned(tmp_path, xsm=True)
    tree = uboot.host_tree(described, memory_plan)
    chosen = tree.node("/chosen")
    assert chosen is not None
    assert fdt.as_string(chosen.properties["xen,xen-bootargs"]) == "console=dtuart dom0_mem=512M"
    assert fdt.as_string(chosen.properties["xen,dom0-bootargs"]) == "console=hvc0"
    assert fdt.as_string(chosen.properties["bootargs"]) == "from qemu"  # the host's kept
    names = [child.name for child in chosen.children]
    slots = {slot.label: slot for slot in memory_plan.modules}
    dom0_kernel, dom0_ramdisk, xsm = (slots[k] for k in ("dom0 kernel", "dom0 ramdisk", "xen xsm"))
    # Dom0's nodes (and Xen's policy) before any domain node.
    assert names == [
        f"dom0-kernel@{dom0_kernel.address:x}",
        f"dom0-ramdisk@{dom0_ramdisk.address:x}",
        f"xen-xsm@{xsm.address:x}",
        "guest",
    ]
    expected = {
        names[0]: (["multiboot,kernel", "multiboot,module"], dom0_kernel),
        names[1]: (["multiboot,ramdisk", "multiboot,module"], dom0_ramdisk),
        names[2]: (["xen,xsm-policy", "multiboot,module"], xsm),
    }
    for name, (compatible, slot) in expected.items():
        node = chosen.child(name)
        assert node is not None
        assert fdt.as_strings(node.properties["compatible"]) == compatible
        assert fdt.as_cells(node.properties["reg"]) == (0, slot.address, 0, slot.size)
    guest = chosen.child("guest")
    assert guest is not None and fdt.as_string(guest.properties["compatible"]) == "xen,domain"
    for child, label in zip(guest.children, ("guest kernel", "guest ramdisk"), strict=True):
        slot = slots[label]
        assert child.name.endswith(f"@{slot.address:x}")
        assert fdt.as_cells(child.properties["reg"]) == (0, slot.address, 0, slot.size)
        assert "xen,uefi-binary" not in child.properties
    kernel = guest.children[0]
    assert fdt.as_string(kernel.properties["bootargs"]) == "console=ttyAMA0"
    assert len(tree.build()) <= memory_plan.dtb.size


def test_host_tree_passes_dtc(tmp_path: Path) -> None:
    described, memory_plan = planned(tmp_path)
    path = tmp_path / "out.dtb"
    path.write_bytes(uboot.host_tree(described, memory_plan).build())
    require(shutil.which("dtc") is not None, "dtc (device-tree-compiler) not installed")
    result = subprocess.run(["dtc", "-I", "dtb", "-O", "dts", str(path)], capture_output=True)
    assert result.returncode == 0 and result.stderr == b"", result.stderr.decode()


def test_summary(tmp_path: Path) -> None:
    _, memory_plan = planned(tmp_path, reserved=(0x41000000, MIB))
    lines = uboot.summary(memory_plan)
    assert lines[0] == "RAM 0x40000000-0xbfffffff (2048 MiB)"
    starts = [int(line.split()[0].split("-")[0], 16) for line in lines[1:]]
    assert starts == sorted(starts)
    text = "\n".join(lines)
    for label in ("boot script / FIT", "xen", "host device tree", "dom0 kernel", "guest ramdisk",
                  "reserved (host tree)", "kept for U-Boot"):  # fmt: skip
        assert label in text
    assert ["0x0040400000-0x00406fffff", "3.0", "MiB", "xen"] in [line.split() for line in lines]


def test_the_description_sets_scriptaddr_and_reserve(tmp_path: Path) -> None:
    from dataclasses import replace

    from hlimage.model import UBoot

    described = system(tmp_path)
    moved = replace(described, uboot=UBoot(scriptaddr=0x48000000, reserve=1 << 30))
    memory_plan = uboot.plan(moved, boot_modules.all_modules(moved), script_size=100)
    assert memory_plan.script.address == 0x48000000
    assert memory_plan.xen.address == 0x48200000
    assert memory_plan.limit == RAM + (2 << 30) - (1 << 30)
    too_much = replace(described, uboot=UBoot(reserve=2 << 30))
    with pytest.raises(HlimageError, match=r"\[uboot\] reserve: 2048 MiB is all the RAM"):
        uboot.plan(too_much, boot_modules.all_modules(too_much), script_size=100)


def test_the_load_window_bounds_the_plan(tmp_path: Path) -> None:
    """[uboot] memory_start and memory_end: ImageBuilder's MEMORY_START and MEMORY_END."""
    from dataclasses import replace

    from hlimage.model import UBoot

    described = system(tmp_path)
    modules = boot_modules.all_modules(described)
    window = replace(described, uboot=UBoot(memory_start=0x50000000, memory_end=0x60000000))
    memory_plan = uboot.plan(window, modules, script_size=100)
    assert memory_plan.xen.address == 0x50000000 and memory_plan.limit == 0x60000000
    assert memory_plan.end <= 0x60000000
    assert uboot.summary(memory_plan)[-1].endswith("above [uboot] memory_end")
    narrow = replace(described, uboot=UBoot(memory_end=0x41000000))
    with pytest.raises(HlimageError, match=r'\[uboot\] memory_end: .* give memory_end = "0x4'):
        uboot.plan(narrow, modules, script_size=100)
    outside = replace(described, uboot=UBoot(memory_start=0x10000000))
    with pytest.raises(HlimageError, match="memory_start: 0x10000000 is outside the RAM"):
        uboot.plan(outside, modules, script_size=100)


def test_reserved_memory_where_the_script_goes_is_refused(tmp_path: Path) -> None:
    with pytest.raises(HlimageError, match=r"reserves 0x40000000-0x40ffffff, where U-Boot reads"):
        planned(tmp_path, reserved=(RAM, 16 * MIB))


def test_static_memory_is_stepped_over(tmp_path: Path) -> None:
    from dataclasses import replace

    from hlimage.model import MemoryRange

    described = system(tmp_path)
    guest = replace(
        described.domains[1], memory=32 * MIB, static_mem=(MemoryRange(0x41000000, 32 * MIB),)
    )
    with_static = replace(described, domains=(described.domains[0], guest))
    memory_plan = uboot.plan(with_static, boot_modules.all_modules(with_static), script_size=1)
    for slot in memory_plan.slots:
        assert slot.end <= 0x41000000 or slot.address >= 0x43000000, slot


def test_x86_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    from hlimage.model import Arch

    described = replace(system(tmp_path), arch=Arch.X86_64)
    with pytest.raises(HlimageError, match="arm64 only"):
        uboot.plan(described, [], script_size=1)


def test_directory_script_reads_back(tmp_path: Path) -> None:
    described, memory_plan = planned(tmp_path)
    names = [module.name for module in (slot.module for slot in memory_plan.modules) if module]
    text = uboot.directory_script(described, memory_plan, "xen", "xen.dtb", names)
    parsed = uboot.parse_script(text)
    assert parsed.scriptaddr == uboot.SCRIPTADDR and parsed.reserve == uboot.UBOOT_RESERVE
    assert parsed.xen == memory_plan.xen.address and parsed.dtb == memory_plan.dtb.address
    # The kernel dom0 and the guest share is read once, then copied to the guest's slot.
    kernels = [s for s in memory_plan.modules if s.module and s.module.role is Role.KERNEL]
    assert [(c[0], c[1]) for c in parsed.copies] == [(kernels[0].address, kernels[1].address)]
    assert [load.file for load in parsed.loads] == ["xen", "xen.dtb", *dict.fromkeys(names)]
    assert parsed.tftp_loads == parsed.loads
    assert text.count("|| setenv hlimage_failed") == 2 * len(parsed.loads)
    assert all(line.startswith("#   ") for line in text.splitlines() if "kept for U-Boot" in line)
    with pytest.raises(HlimageError, match="U-Boot's shell cannot take"):
        uboot.directory_script(described, memory_plan, "xen", "x;reset", names)
    assert uboot.fit_script(described, memory_plan).endswith("\nbootm ${scriptaddr}\n")
