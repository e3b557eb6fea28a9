"""The description file: every key parsed into the model, every mistake one line with the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from hlimage import config
from hlimage.errors import HlimageError
from hlimage.model import (
    ALL_CAPABILITIES,
    Arch,
    Binding,
    Capability,
    CpuPool,
    EventChannel,
    InitrdCompression,
    MemoryRange,
    Mode,
    SharedMemory,
    ShmRole,
    System,
)
from hlimage.xen import binding
from tests.conftest import run_cli

FULL = """
[image]
arch = "arm64"
binding = "dom0less"
name = "edge-box"
title = "Edge box"

[xen]
efi = "xen.efi"
multiboot = "xen.gz"
cmdline = "console=dtuart"
xsm = "xenpolicy"
dtb = "board.dtb"
static_heap = [["0x70000000", "64M"]]
colors = "0-1"

[[cpupool]]
name = "pool1"
cpus = ["cpu@1", "cpu@2"]
scheduler = "credit2"

[[domain]]
name = "dom0"
kernel = "Image"
initrd = ["a.cpio", "b.cpio.gz"]
initrd_compression = "lz4"
cmdline = "console=hvc0"
memory = "1G"
vcpus = 2
capabilities = ["control", "hardware", "xenstore"]

[[domain]]
name = "guest1"
kernel = "Image"
memory = "256M"
vcpus = 1
vpl011 = true
enhanced = "enabled"
passthrough = "disabled"
passthrough_dtb = "partial.dtb"
static_mem = [["0x50000000", "256M"]]
direct_map = true
cpupool = "pool1"
colors = "0-3"
nr_spis = 32
max_grant_version = 1
max_grant_frames = 32
max_maptrack_frames = 0
sve = 512
shared_mem = [
  { id = "shm0", host = "0x60000000", guest = "0x50000000", size = "16M", role = "owner" },
  { id = "shm1", guest = "0x52000000", size = "2M" },
]
event_channels = [{ port = 10, peer = "dom0", peer_port = 20 }]
vcpu_affinity = ["0-1", "3"]
trap_unmapped_accesses = true
sci_type = "scmi_smc"
"""

FILES = (
    "xen.efi",
    "xen.gz",
    "xenpolicy",
    "board.dtb",
    "Image",
    "a.cpio",
    "b.cpio.gz",
    "partial.dtb",
)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    for name in FILES:
        (tmp_path / name).write_bytes(b"x")
    return tmp_path


def load(folder: Path, text: str) -> System:
    path = folder / "hlimage.toml"
    path.write_text(text)
    return config.load(path)


def error_of(folder: Path, text: str) -> str:
    with pytest.raises(HlimageError) as caught:
        load(folder, text)
    message = str(caught.value)
    assert "\n" not in message
    return message


def test_every_key_reaches_the_model(folder: Path) -> None:
    system = load(folder, FULL)
    assert system.arch is Arch.ARM64
    assert system.binding is Binding.DOM0LESS
    assert system.name == "edge-box" and system.title == "Edge box"
    assert system.xen.efi == folder / "xen.efi"
    assert system.xen.xsm == folder / "xenpolicy"
    assert system.xen.dtb == folder / "board.dtb"
    dom0, guest = system.domains
    assert dom0.initrd == (folder / "a.cpio", folder / "b.cpio.gz")
    assert dom0.initrd_compression is InitrdCompression.LZ4
    assert dom0.memory == 1 << 30 and dom0.vcpus == 2
    assert dom0.capabilities == ALL_CAPABILITIES
    assert guest.vpl011 and guest.enhanced == "enabled" and guest.passthrough == "disabled"
    assert guest.static_mem[0].address == 0x50000000 and guest.static_mem[0].size == 256 << 20
    assert guest.direct_map and guest.cpupool == "pool1" and guest.colors == "0-3"
    assert guest.nr_spis == 32
    assert (guest.max_grant_version, guest.max_grant_frames, guest.max_maptrack_frames) == (
        1,
        32,
        0,
    )
    assert guest.sve == 512 and guest.trap_unmapped_accesses is True
    assert guest.sci_type == "scmi_smc" and guest.vcpu_affinity == ("0-1", "3")
    assert guest.shared_mem == (
        SharedMemory("shm0", 0x50000000, 16 << 20, 0x60000000, ShmRole.OWNER),
        SharedMemory("shm1", 0x52000000, 2 << 20),
    )
    assert guest.event_channels == (EventChannel(10, "dom0", 20),)
    assert system.xen.static_heap == (MemoryRange(0x70000000, 64 << 20),)
    assert system.xen.colors == "0-1"
    assert system.cpupools == (CpuPool("pool1", ("cpu@1", "cpu@2"), "credit2"),)
    assert guest.capabilities == frozenset()
    assert system.hardware_domain is dom0 and system.domus == (guest,)


def test_model_is_immutable(folder: Path) -> None:
    system = load(folder, FULL)
    with pytest.raises(AttributeError):
        system.domains[0].memory = 5  # type: ignore[misc,unused-ignore]


MINIMAL = """
[image]
arch = "x86_64"
[xen]
efi = "xen.efi"
[[domain]]
name = "dom0"
kernel = "Image"
"""


def test_dom0_by_name_gets_every_capability(folder: Path) -> None:
    system = load(folder, MINIMAL + '[[domain]]\nname = "guest"\nkernel = "Image"\n')
    assert system.domains[0].capabilities == ALL_CAPABILITIES
    assert system.domains[1].capabilities == frozenset()
    assert binding.resolve(system) is Binding.HYPERLAUNCH


def test_explicit_capabilities_switch_off_the_dom0_default(folder: Path) -> None:
    text = MINIMAL + 'capabilities = ["hardware"]\n'
    text = text.replace('name = "dom0"', 'name = "hw"')
    system = load(folder, text)
    assert system.domains[0].capabilities == frozenset({Capability.HARDWARE})


def test_auto_binding(folder: Path) -> None:
    assert binding.resolve(load(folder, MINIMAL)) is Binding.CLASSIC
    arm = MINIMAL.replace("x86_64", "arm64") + '[[domain]]\nname = "g"\nkernel = "Image"\n'
    assert binding.resolve(load(folder, arm)) is Binding.DOM0LESS


def test_mode_and_sizes(folder: Path) -> None:
    system = load(folder, MINIMAL + 'mode = "pvh"\nmemory = "524288K"\n')
    assert system.domains[0].mode is Mode.PVH
    assert system.domains[0].memory == 512 << 20


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (('kernel = "Image"', 'kernel = "Imag"'),
         '[[domain]] "dom0" kernel: Imag does not exist'),
        (('kernel = "Image"', 'kernel = "."'),
         '[[domain]] "dom0" kernel: . is not a regular file; name a file, not a directory'),
        (('name = "dom0"', 'name = "dom0"\nmemroy = "1G"'),
         '[[domain]] "dom0" memroy: unknown key; did you mean "memory"?'),
        (('name = "dom0"', 'name = "dom0"\nmemory = "1X"'),
         '[[domain]] "dom0" memory: "1X" is not a size; write a whole number with a K, M or G'),
        (('name = "dom0"', 'name = "dom0"\nmemory = 512'),
         '[[domain]] "dom0" memory: expected a size as a string, got a number 512'),
        (('name = "dom0"', 'name = "dom0"\nmemory = "512"'),
         '[[domain]] "dom0" memory: "512" is not a usable amount of memory'),
        (('name = "dom0"', 'name = "dom0"\nvcpus = 0'),
         '[[domain]] "dom0" vcpus: 0 is out of range; give a number from 1 to 4096'),
        (('name = "dom0"', 'name = "dom0"\nvcpus = "2"'),
         '[[domain]] "dom0" vcpus: expected a whole number, got a string'),
        (('name = "dom0"', 'name = "dom0"\ncapabilities = ["hw"]'),
         '[[domain]] "dom0" capabilities: "hw" is not a capability; use control, hardware, '),
        (('name = "dom0"', 'name = "dom0"\nmode = "hvm"'),
         '[[domain]] "dom0" mode: "hvm" is not one of pv, pvh'),
        (('arch = "x86_64"', 'arch = "riscv"'),
         '[image] arch: "riscv" is not one of x86_64, arm64'),
        (('arch = "x86_64"', ""), "[image] arch: is missing; add arch = ..."),
        (('[xen]', '[hypervisor]'),
         '[hypervisor]: unknown section; known sections: image, xen, domain, cpupool'),
        (('efi = "xen.efi"', 'efi = "xen.efi"\nefii = 1'),
         '[xen] efii: unknown key; did you mean "efi"?'),
        (('kernel = "Image"', 'kernel = "Image"\ninitrd = []'),
         '[[domain]] "dom0" initrd: expected a path or a non-empty list of paths, got a list'),
        (('kernel = "Image"', 'kernel = "Image"\ninitrd = ["a.cpio", "nope"]'),
         '[[domain]] "dom0" initrd[1]: nope does not exist'),
        (('name = "dom0"', 'name = "dom 0"'),
         '[[domain]] "dom 0" name: "dom 0" is not a usable name'),
        (('kernel = "Image"\n', 'kernel = "Image"\n[[domain]]\nname = "dom0"\nkernel = "Image"\n'),
         '[[domain]] "dom0" name: "dom0" is used by domain #1 too; give every domain its own name'),
        (('kernel = "Image"', ""), '[[domain]] "dom0" kernel: is missing; add kernel = ...'),
        (('name = "dom0"', 'name = "dom0"\nsve = 100'),
         '[[domain]] "dom0" sve: 100 is not an SVE vector length; give the length in bits, a '
         "multiple of 128 up to 2048 (0: off), like 256"),
        (('name = "dom0"', 'name = "dom0"\nmax_grant_version = 3'),
         '[[domain]] "dom0" max_grant_version: expected a whole number from 1 to 2, got 3'),
        (('name = "dom0"', 'name = "dom0"\nmax_grant_frames = 0'),
         '[[domain]] "dom0" max_grant_frames: expected a whole number from 1 to 2147483647'),
        (('name = "dom0"', 'name = "dom0"\nvcpu_affinity = ["0-"]'),
         '[[domain]] "dom0" vcpu_affinity[0]: "0-" is not a list of physical CPUs'),
        (('name = "dom0"', 'name = "dom0"\nvcpu_affinity = ["3-1"]'),
         '[[domain]] "dom0" vcpu_affinity[0]: "3-1" is not a list of physical CPUs'),
        (('name = "dom0"', 'name = "dom0"\ncolors = "red"'),
         '[[domain]] "dom0" colors: "red" is not a list of LLC colours'),
        (('name = "dom0"', 'name = "dom0"\nsci_type = "scmi"'),
         '[[domain]] "dom0" sci_type: "scmi" is not one of none, scmi_smc'),
        (('name = "dom0"', 'name = "dom0"\nshared_mem = [{ id = "x", guest = "0x1000" }]'),
         '[[domain]] "dom0" shared_mem[0].size: is missing'),
        (('name = "dom0"', 'name = "dom0"\nshared_mem = [{ id = "x", guest = 1, size = "1M" }]'),
         '[[domain]] "dom0" shared_mem[0].guest: 1 is not a multiple of 4 KiB'),
        (('name = "dom0"',
          'name = "dom0"\nshared_mem = [{ id = "0123456789abcdef", guest = 0, size = "1M" }]'),
         '[[domain]] "dom0" shared_mem[0].id: "0123456789abcdef" is not a usable id; give 1 to 15'),
        (('name = "dom0"', 'name = "dom0"\nshared_mem = [{ id = "x", guest = 0, size = "1M", '
                           'owner = true }]'),
         '[[domain]] "dom0" shared_mem[0].owner: unknown key; known keys: id, host, guest, size, '
         "role"),
        (('name = "dom0"', 'name = "dom0"\nshared_mem = [{ id = "x", guest = 0, size = "1M", '
                           'role = "lender" }]'),
         '[[domain]] "dom0" shared_mem[0].role: "lender" is not one of owner, borrower'),
        (('name = "dom0"', 'name = "dom0"\nevent_channels = [{ port = 1, peer = "dom1", '
                           'peer_port = 2 }]'),
         '[[domain]] "dom0" event_channels[0].peer: no domain is named "dom1"; did you mean '
         '"dom0"?'),
        (('name = "dom0"', 'name = "dom0"\nevent_channels = [{ port = 1, peer = "dom0", '
                           'peer_port = 2 }]'),
         '[[domain]] "dom0" event_channels[0].peer: a static event channel joins two domains'),
        (('name = "dom0"', 'name = "dom0"\nevent_channels = [{ port = 0, peer = "dom0", '
                           'peer_port = 2 }]'),
         '[[domain]] "dom0" event_channels[0].port: expected a whole number from 1 to 4095'),
        (('name = "dom0"', 'name = "dom0"\nevent_channels = { port = 1 }'),
         '[[domain]] "dom0" event_channels: expected a non-empty list of tables, got a table'),
        (('[xen]', '[[cpupool]]\nname = "p"\ncpus = []\n[xen]'),
         '[[cpupool]] "p" cpus: expected a non-empty list of node names, got a list'),
        (('[xen]', '[[cpupool]]\nname = "p"\ncpus = ["cpu@0"]\nscheduler = "bvt"\n[xen]'),
         '[[cpupool]] "p" scheduler: "bvt" is not one of credit, credit2, rtds, arinc653, null'),
        (('[xen]', '[[cpupool]]\nname = "p"\ncpus = ["cpu@0"]\n[[cpupool]]\nname = "q"\n'
                   'cpus = ["cpu@0"]\n[xen]'),
         '[[cpupool]] "q" cpus: cpu@0 also in pool "p"; Xen panics "Logical cpu ... already '
         'added to a cpupool!": put each CPU in one pool'),
        (('[xen]', '[[cpupool]]\ncpus = ["cpu@0"]\n[xen]'),
         '[[cpupool]] #1 name: is missing'),
        (('efi = "xen.efi"', 'efi = "xen.efi"\nstatic_heap = [["0x1000"]]'),
         "[xen] static_heap: ['0x1000'] is not an [address, size] pair"),
    ],
)  # fmt: skip
def test_mistakes_name_the_key(folder: Path, change: tuple[str, str], expected: str) -> None:
    message = error_of(folder, MINIMAL.replace(*change, 1))
    assert message.startswith(str(folder / "hlimage.toml") + ": " + expected), message


def test_toml_syntax_error_gives_line_and_column(folder: Path) -> None:
    message = error_of(folder, MINIMAL.replace('arch = "x86_64"', "arch = x86_64"))
    assert "TOML syntax error" in message and "line 3, column 8" in message


def test_no_domain(folder: Path) -> None:
    message = error_of(folder, '[image]\narch = "x86_64"\n')
    assert "[[domain]] is missing" in message


def test_cli_exit_code_2_and_one_line(folder: Path) -> None:
    path = folder / "hlimage.toml"
    path.write_text(
        MINIMAL.replace('"1G"', '"1G"').replace('name = "dom0"', 'name = "dom0"\nmemory = "x"')
    )
    result = run_cli("build", path, "--format", "unified", "-o", folder / "out.efi")
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("hlimage: error: ")
    assert "Traceback" not in result.stderr
    assert not (folder / "out.efi").exists()


def test_missing_description_file(tmp_path: Path) -> None:
    result = run_cli("build", tmp_path / "nope.toml", "--format", "unified", "-o", tmp_path / "o")
    assert result.code == 2
    assert "no such description file" in result.stderr


def test_size_parser() -> None:
    assert config.parse_size("4K") == 4096
    assert config.parse_size("2G") == 2 << 30
    assert config.parse_size("1MiB") == 1 << 20
    assert config.parse_size("12") == 12
    assert config.parse_size("1.5G") is None
    assert config.parse_size("-1M") is None
