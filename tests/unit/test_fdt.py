"""The device tree library against the reference tools: dtc, libfdt and QEMU's own tree."""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import subprocess
from collections.abc import Callable

import libfdt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlimage.errors import FormatError
from hlimage.formats import fdt
from hlimage.formats.fdt import DeviceTree, Node
from tests.support import payloads

IN_CI = os.environ.get("CI") == "true"
QEMU_DTB = payloads.path(payloads.ARM64_DTB)
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# Each example runs dtc twice: fewer of them.
FUZZ_DTC = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def require(condition: bool, reason: str) -> None:
    """Skip when a prerequisite is missing, except under CI=true, where that is a failure."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing under CI=true: {reason}")
        pytest.skip(reason)


def dtc(*args: str, data: bytes) -> subprocess.CompletedProcess[bytes]:
    program = shutil.which("dtc")
    require(program is not None, "dtc (device-tree-compiler) is not installed")
    assert program is not None
    return subprocess.run([program, *args, "-"], input=data, capture_output=True, check=False)


def decompile(blob: bytes) -> str:
    result = dtc("-I", "dtb", "-O", "dts", data=blob)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


def compile_dts(tree: DeviceTree) -> bytes:
    args = ("-I", "dts", "-O", "dtb", "-b", str(tree.boot_cpuid_phys))
    result = dtc(*args, data=tree.to_dts().encode())
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


def qemu_dtb() -> bytes:
    require(QEMU_DTB.is_file(), f"{QEMU_DTB} missing; run python -m tests.support.payloads")
    return QEMU_DTB.read_bytes()


def dom0less() -> DeviceTree:
    """A tree shaped like a Xen dom0less boot: /chosen with a dom0 kernel and one domU."""
    tree = DeviceTree(reservations=[(0x48000000, 0x100000)])
    root = tree.root
    root.set("#address-cells", fdt.u32(2))
    root.set("#size-cells", fdt.u32(2))
    root.set("compatible", fdt.strings(["linux,dummy-virt"]))
    chosen = tree.ensure("/chosen")
    chosen.set("#address-cells", fdt.u32(1))
    chosen.set("#size-cells", fdt.u32(1))
    chosen.set("xen,xen-bootargs", fdt.string("console=dtuart dom0less-boot"))
    kernel = tree.ensure("/chosen/module@42000000")
    kernel.set("compatible", fdt.strings(["multiboot,kernel", "multiboot,module"]))
    kernel.set("reg", fdt.cells(0x42000000, 0x1000000))
    kernel.set("bootargs", fdt.string("console=hvc0"))
    domain = tree.ensure("/chosen/domU1")
    domain.set("compatible", fdt.string("xen,domain"))
    domain.set("#address-cells", fdt.u32(1))
    domain.set("#size-cells", fdt.u32(1))
    domain.set("memory", fdt.u64(0x20000))
    domain.set("cpus", fdt.u32(2))
    domain.set("vpl011", fdt.empty())
    module = tree.ensure("/chosen/domU1/module@4a000000")
    module.set("compatible", fdt.strings(["multiboot,kernel", "multiboot,module"]))
    module.set("reg", fdt.cells(0x4A000000, 0xFFFFFF))
    module.set("bootargs", fdt.string('console=ttyAMA0 quote=" slash=\\'))
    return tree


def odd_values() -> DeviceTree:
    """Every way to_dts renders a value, and the values that sit between those ways."""
    tree = dom0less()
    tree.boot_cpuid_phys = 3
    node = tree.ensure("/values")
    node.set("phandle", fdt.u32(7))
    node.set("bytes", b"\x00\x11\xff")
    node.set("nul", b"\0")
    node.set("empty-in-list", b"a\0\0b\0")
    node.set("unterminated", b"abcd")
    node.set("control", b"a\nb\0")
    node.set("high", b"caf\xc3\xa9\0")
    node.set("cells", fdt.cells(0, 1, 0xFFFFFFFF))
    return tree


def check_libfdt(tree: DeviceTree, blob: bytes, *, by_path: bool = True) -> None:
    """libfdt sees every node, property and reservation, with its bytes, in our order.

    by_path=False for trees with siblings such as "a" and "a@0": libfdt finds "/a" at the
    first of them, so only a walk by offsets reaches every node.
    """
    reader = libfdt.Fdt(blob)
    assert reader.version() == 17
    assert reader.last_comp_version() == 16
    assert reader.boot_cpuid_phys() == tree.boot_cpuid_phys
    assert reader.num_mem_rsv() == len(tree.reservations)
    for index, (address, size) in enumerate(tree.reservations):
        assert list(reader.get_mem_rsv(index)) == [address, size]
    pending = [("/", tree.root, 0)]
    while pending:
        path, node, offset = pending.pop()
        if by_path:
            assert reader.path_offset(path) == offset
        for name, value in node.properties.items():
            assert bytes(reader.getprop(offset, name)) == value, f"{path}:{name}"
        names = []
        prop = reader.first_property_offset(offset, libfdt.QUIET_NOTFOUND)
        while prop >= 0:
            names.append(reader.get_property_by_offset(prop).name)
            prop = reader.next_property_offset(prop, libfdt.QUIET_NOTFOUND)
        assert names == list(node.properties), path
        offsets = []
        child = reader.first_subnode(offset, libfdt.QUIET_NOTFOUND)
        while child >= 0:
            offsets.append(child)
            child = reader.next_subnode(child, libfdt.QUIET_NOTFOUND)
        assert [reader.get_name(child) for child in offsets] == [n.name for n in node.children]
        prefix = path.rstrip("/")
        for child_node, child_offset in zip(node.children, offsets, strict=True):
            pending.append((f"{prefix}/{child_node.name}", child_node, child_offset))


def header(blob: bytes) -> dict[str, int]:
    fields = struct.unpack(">10I", blob[:40])
    names = [
        "magic",
        "totalsize",
        "off_dt_struct",
        "off_dt_strings",
        "off_mem_rsvmap",
        "version",
        "last_comp_version",
        "boot_cpuid_phys",
        "size_dt_strings",
        "size_dt_struct",
    ]
    return dict(zip(names, fields, strict=True))


# Building blobs by hand, for the inputs build() never writes.


def begin(name: bytes) -> bytes:
    return bytes(fdt.Token.build({"token": fdt.FDT_BEGIN_NODE, "body": {"name": name}}))


def prop(nameoff: int, value: bytes) -> bytes:
    body = {"nameoff": nameoff, "value": value}
    return bytes(fdt.Token.build({"token": fdt.FDT_PROP, "body": body}))


def token(kind: int) -> bytes:
    return struct.pack(">I", kind)


END_NODE = token(fdt.FDT_END_NODE)
NOP = token(fdt.FDT_NOP)
END = token(fdt.FDT_END)


def blob_of(
    structure: bytes, strings: bytes = b"", *, version: int = 17, rsvmap: bytes = bytes(16)
) -> bytes:
    off_rsvmap = 40
    off_struct = off_rsvmap + len(rsvmap)
    off_strings = off_struct + len(structure)
    total = off_strings + len(strings)
    fields = (
        fdt.FDT_MAGIC,
        total,
        off_struct,
        off_strings,
        off_rsvmap,
        version,
        16,
        0,
        len(strings),
        len(structure),
    )
    return struct.pack(">10I", *fields) + rsvmap + structure + strings


# Values.


def test_value_encoders() -> None:
    assert fdt.u32(0x12345678) == b"\x12\x34\x56\x78"
    assert fdt.u64(0x1_0000_0002) == b"\0\0\0\x01\0\0\0\x02"
    assert fdt.cells(1, 2) == b"\0\0\0\x01\0\0\0\x02"
    assert fdt.cells() == b""
    assert fdt.string("smc") == b"smc\0"
    assert fdt.strings(["a", "bc"]) == b"a\0bc\0"
    assert fdt.strings([]) == b""
    assert fdt.empty() == b""


def test_value_decoders() -> None:
    assert fdt.as_u32(fdt.u32(0xFFFFFFFF)) == 0xFFFFFFFF
    assert fdt.as_u64(fdt.u64(0x40000000_00001000)) == 0x40000000_00001000
    assert fdt.as_cells(fdt.cells(1, 2, 3)) == (1, 2, 3)
    assert fdt.as_string(b"arm,psci\0") == "arm,psci"
    assert fdt.as_strings(b"a\0bc\0") == ["a", "bc"]
    assert fdt.as_strings(b"") == []


@pytest.mark.parametrize(
    "call",
    [
        lambda: fdt.u32(-1),
        lambda: fdt.u32(1 << 32),
        lambda: fdt.u64(1 << 64),
        lambda: fdt.cells(1, -2),
        lambda: fdt.string("a\0b"),
        lambda: fdt.as_u32(b"\0\0\0"),
        lambda: fdt.as_u32(fdt.u64(1)),
        lambda: fdt.as_u64(fdt.u32(1)),
        lambda: fdt.as_cells(b"\0\0\0\0\0"),
        lambda: fdt.as_string(b"abc"),
        lambda: fdt.as_string(b"a\0b\0"),
        lambda: fdt.as_string(b""),
        lambda: fdt.as_strings(b"\xff\0"),
    ],
)
def test_value_errors(call: Callable[[], object]) -> None:
    with pytest.raises(FormatError):
        call()


# Editing.


def test_paths_and_creation_order() -> None:
    tree = DeviceTree()
    domain = tree.ensure("/chosen/domU2")
    tree.ensure("/chosen/domU1/module@1")
    tree.ensure("/aliases")
    assert tree.node("/chosen/domU2") is domain
    assert tree.node("/chosen/domU1/module@1") is not None
    assert tree.node("/chosen/domU3") is None
    assert tree.node("/chosen/domU1/module") is None  # no matching without the unit address
    assert tree.node("/") is tree.root
    assert tree.ensure("/chosen/domU2") is domain
    assert [path for path, _ in tree.walk()] == [
        "/",
        "/chosen",
        "/chosen/domU2",
        "/chosen/domU1",
        "/chosen/domU1/module@1",
        "/aliases",
    ]
    with pytest.raises(FormatError):
        tree.node("chosen")


def test_set_replaces_in_place() -> None:
    node = Node("n")
    node.set("a", b"1")
    node.set("b", b"2")
    node.set("c", b"3")
    node.set("a", b"9")
    assert list(node.properties.items()) == [("a", b"9"), ("b", b"2"), ("c", b"3")]
    assert node.get("a") == b"9"
    assert node.get("z") is None
    with pytest.raises(FormatError):
        node.set("", b"")
    with pytest.raises(FormatError):
        node.set("a\0b", b"")


def test_children() -> None:
    parent = Node("parent")
    first = parent.add_child(Node("first"))
    parent.add_child(Node("second"))
    with pytest.raises(FormatError, match="already has a child"):
        parent.add_child(Node("first"))
    for bad in ("", "a/b", "a\0b"):
        with pytest.raises(FormatError):
            parent.add_child(Node(bad))
    assert parent.remove_child("first") is first
    assert parent.remove_child("first") is None
    assert [child.name for child in parent.children] == ["second"]


def test_edit_keeps_untouched_order() -> None:
    tree = dom0less()
    edited = fdt.parse(tree.build())
    domain = edited.node("/chosen/domU1")
    assert domain is not None
    domain.set("cpus", fdt.u32(4))
    edited.ensure("/chosen/domU0").set("memory", fdt.u64(1 << 30))
    domain_before = tree.node("/chosen/domU1")
    assert domain_before is not None
    assert list(domain.properties) == list(domain_before.properties)
    assert [n.name for n in edited.root.children[0].children] == [
        "module@42000000",
        "domU1",
        "domU0",
    ]
    assert edited != tree


def test_phandles() -> None:
    tree = DeviceTree()
    assert tree.phandles() == set()
    assert tree.allocate_phandle() == 1
    tree.ensure("/gic").set("phandle", fdt.u32(0x8002))
    tree.ensure("/clock").set("linux,phandle", fdt.u32(0x8005))
    tree.ensure("/both").set("phandle", fdt.u32(3))
    assert tree.phandles() == {0x8002, 0x8005, 3}
    assert tree.allocate_phandle() == 0x8006
    tree.ensure("/full").set("phandle", fdt.u32(0xFFFFFFFE))
    with pytest.raises(FormatError):
        tree.allocate_phandle()
    tree.ensure("/bad").set("phandle", b"\0\0\x01")
    with pytest.raises(FormatError):
        tree.phandles()


def test_equality_includes_order() -> None:
    one, two = Node("n"), Node("n")
    one.set("a", b"")
    one.set("b", b"")
    two.set("b", b"")
    two.set("a", b"")
    assert one != two
    two.properties = {"a": b"", "b": b""}
    assert one == two
    assert DeviceTree(one) != DeviceTree(one, boot_cpuid_phys=1)


# Building.


def test_build_layout_is_dtcs() -> None:
    tree = dom0less()
    blob = tree.build()
    fields = header(blob)
    assert fields["magic"] == fdt.FDT_MAGIC
    assert fields["version"] == 17
    assert fields["last_comp_version"] == 16
    assert fields["off_mem_rsvmap"] == 0x28
    assert fields["off_dt_struct"] == 0x28 + 16 * (len(tree.reservations) + 1)
    assert fields["off_dt_strings"] == fields["off_dt_struct"] + fields["size_dt_struct"]
    assert fields["totalsize"] == fields["off_dt_strings"] + fields["size_dt_strings"] == len(blob)
    strings = blob[fields["off_dt_strings"] :].split(b"\0")[:-1]
    first_use = list(dict.fromkeys(name for _, n in tree.walk() for name in n.properties))
    # Each name once, in order of first use; "bootargs" is the tail of "xen,xen-bootargs".
    assert strings == [name.encode() for name in first_use if name != "bootargs"]
    assert tree.build() == blob
    # dtc writes the same tree byte for byte.
    assert compile_dts(tree) == blob
    assert dtc("-I", "dtb", "-O", "dtb", data=blob).stdout == blob


def test_build_passes_dtc_checks() -> None:
    blob = dom0less().build()
    result = dtc("-I", "dtb", "-O", "dts", data=blob)
    assert result.returncode == 0
    assert result.stderr == b""
    assert b"vpl011;" in result.stdout
    # The check can see warnings: a unit address without reg is one.
    broken = dom0less()
    broken.ensure("/chosen/module@50000000")
    assert b"Warning" in dtc("-I", "dtb", "-O", "dts", data=broken.build()).stderr


def test_libfdt_reads_what_we_build() -> None:
    tree = odd_values()
    check_libfdt(tree, tree.build())


def test_build_rejects() -> None:
    with pytest.raises(FormatError, match="two children"):
        tree = DeviceTree()
        tree.root.children += [Node("a"), Node("a")]
        tree.build()
    with pytest.raises(FormatError, match="size not 0"):
        DeviceTree(reservations=[(0x1000, 0)]).build()
    with pytest.raises(FormatError):
        DeviceTree(Node("named")).build()
    with pytest.raises(FormatError):
        DeviceTree(boot_cpuid_phys=-1).build()
    with pytest.raises(FormatError):
        DeviceTree(Node("", {"caf\u00e9": b""})).build()


def nested(levels: int) -> DeviceTree:
    tree = DeviceTree()
    tree.ensure("/" + "/".join(f"n{i}" for i in range(levels)))
    return tree


def test_depth_limit() -> None:
    deepest = nested(fdt.MAX_DEPTH - 1)
    assert fdt.parse(deepest.build()) == deepest
    with pytest.raises(FormatError, match="nested"):
        nested(fdt.MAX_DEPTH).build()
    structure = begin(b"") + begin(b"a") * fdt.MAX_DEPTH + END_NODE * (fdt.MAX_DEPTH + 1) + END
    with pytest.raises(FormatError, match="nested"):
        fdt.parse(blob_of(structure))


# Parsing.


def test_round_trip() -> None:
    tree = odd_values()
    assert fdt.parse(tree.build()) == tree


def test_parse_nops_v16_and_padding() -> None:
    structure = (
        NOP
        + begin(b"")
        + NOP
        + prop(0, b"\0\0\0\x01")
        + NOP
        + begin(b"cpus")
        + END_NODE
        + NOP
        + END_NODE
        + NOP
        + END
    )
    strings = b"#size-cells\0"
    expected = DeviceTree(Node("", {"#size-cells": fdt.u32(1)}, [Node("cpus")]))
    assert fdt.parse(blob_of(structure, strings)) == expected
    # v16 has no size_dt_struct: the structure block ends at FDT_END.
    v16 = bytearray(blob_of(structure, strings, version=16))
    v16[36:40] = b"\xff\xff\xff\xff"
    assert fdt.parse(bytes(v16)) == expected
    # dtc -p: padding inside totalsize; and bytes past totalsize are not the tree's.
    padded = bytearray(blob_of(structure, strings) + bytes(64))
    padded[4:8] = struct.pack(">I", len(padded))
    assert fdt.parse(bytes(padded) + b"junk") == expected


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"", "shorter"),
        (b"\xd0\x0d\xfe\xed" + bytes(60), "version"),
        (b"\xde\xad\xbe\xef" + bytes(60), "magic"),
        (blob_of(begin(b"") + END_NODE + END, version=15), "version"),
        (blob_of(begin(b"") + END_NODE + END)[:-4], "totalsize"),
        (blob_of(begin(b"") + END_NODE), "past its bounds"),
        (blob_of(begin(b"") + END), "FDT_END inside"),
        (blob_of(END), "before root"),
        (blob_of(begin(b"") + END_NODE + begin(b"") + END_NODE + END), "more than one root"),
        (blob_of(begin(b"/") + END_NODE + END), "root node is named"),
        (blob_of(begin(b"") + begin(b"") + END_NODE + END_NODE + END), "node name"),
        (blob_of(begin(b"") + begin(b"a/b") + END_NODE + END_NODE + END), "node name"),
        (blob_of(begin(b"") + begin(b"\xff") + END_NODE + END_NODE + END), "not ASCII"),
        (blob_of(begin(b"") + END_NODE + END_NODE + END), "outside any node"),
        (blob_of(prop(0, b"") + END, b"a\0"), "outside any node"),
        (blob_of(begin(b"") + token(7) + END_NODE + END), "unknown token"),
        (blob_of(begin(b"") + prop(5, b"") + END_NODE + END, b"a\0"), "strings block"),
        (blob_of(begin(b"") + prop(0, b"") + END_NODE + END, b"abc"), "strings block"),
        (blob_of(begin(b"") + prop(0, b"") + prop(0, b"") + END_NODE + END, b"a\0"), "two a"),
        (blob_of(begin(b"") + prop(1, b"") + END_NODE + END, b"a\0"), "property name"),
        (
            blob_of(begin(b"") + begin(b"x") + END_NODE + prop(0, b"") + END_NODE + END, b"a\0"),
            "after",
        ),
        (
            blob_of(begin(b"") + begin(b"x") + END_NODE + begin(b"x") + END_NODE + END_NODE + END),
            "two nodes named x",
        ),
        # A property claiming 4 GiB in a blob of 80 bytes: an error, not an allocation.
        (blob_of(begin(b"") + struct.pack(">III", 3, 0xFFFFFFF0, 0) + END, b"a\0"), "bounds"),
        (blob_of(begin(b"") + END_NODE + END, rsvmap=bytes(8)), "past its bounds"),
        (blob_of(begin(b"") + END_NODE + END, rsvmap=b"\1" * 16), "past its bounds"),
    ],
)
def test_parse_rejects(blob: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        fdt.parse(blob)


def test_parse_rejects_header_offsets() -> None:
    good = blob_of(begin(b"") + END_NODE + END)
    for index, value in [(2, 3), (2, 1 << 20), (3, 1 << 20), (4, 4), (4, 1 << 20), (9, 1 << 20)]:
        bad = bytearray(good)
        bad[index * 4 : index * 4 + 4] = struct.pack(">I", value)
        with pytest.raises(FormatError):
            fdt.parse(bytes(bad))


# QEMU's tree.


def test_qemu_tree_round_trips() -> None:
    original = qemu_dtb()
    tree = fdt.parse(original)
    assert tree.node("/chosen") is not None
    assert tree.phandles()
    rebuilt = tree.build()
    assert fdt.parse(rebuilt) == tree
    assert len(rebuilt) < len(original)  # QEMU's padding is not carried over
    assert decompile(rebuilt) == decompile(original)
    check_libfdt(tree, rebuilt)


def test_qemu_tree_to_dts() -> None:
    tree = fdt.parse(qemu_dtb())
    assert fdt.parse(compile_dts(tree)) == tree


# DTS.


def test_to_dts_renders_each_kind() -> None:
    text = odd_values().to_dts()
    assert text.startswith("/dts-v1/;\n\n/memreserve/ 0x0000000048000000 0x0000000000100000;\n")
    for line in [
        '\t\t\tcompatible = "xen,domain";',
        '\t\t\t\tcompatible = "multiboot,kernel", "multiboot,module";',
        '\t\t\t\tbootargs = "console=ttyAMA0 quote=\\" slash=\\\\";',
        "\t\t\tmemory = <0x0 0x20000>;",
        "\t\t\tvpl011;",
        "\t\tbytes = [00 11 ff];",
        "\t\tnul = [00];",
        "\t\tunterminated = <0x61626364>;",
        "\t\tcells = <0x0 0x1 0xffffffff>;",
        "\t\tphandle = <0x7>;",
    ]:
        assert f"\n{line}\n" in text


def test_to_dts_round_trip() -> None:
    tree = odd_values()
    assert fdt.parse(compile_dts(tree)) == tree


# Random trees and random input.

_LETTERS = "abcdefghijklmnopqrstuvwxyz"
_DTC_NAME_CHARS = _LETTERS + "0123456789,._+-"
_RESERVED_NAMES = {"name", "phandle", "linux,phandle"}  # dtc checks or drops these

node_names = st.builds(
    lambda head, tail, unit: head + tail + (f"@{unit:x}" if unit is not None else ""),
    st.sampled_from(_LETTERS),
    st.text(_DTC_NAME_CHARS, max_size=6),
    st.none() | st.integers(0, 0xFFFFFFFF),
)
property_names = st.builds(
    lambda head, tail: head + tail,
    st.sampled_from(_LETTERS + "#"),
    st.text(_DTC_NAME_CHARS + "#", max_size=8),
).filter(lambda name: name not in _RESERVED_NAMES)
printable = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=8)
values = st.one_of(
    st.binary(max_size=20),
    st.lists(printable, min_size=1, max_size=3).map(fdt.strings),
    st.lists(st.integers(0, 0xFFFFFFFF), max_size=4).map(lambda cells: fdt.cells(*cells)),
)


def nodes(name: st.SearchStrategy[str], depth: int) -> st.SearchStrategy[Node]:
    children = (
        st.lists(nodes(node_names, depth - 1), max_size=3, unique_by=lambda node: node.name)
        if depth
        else st.just([])
    )
    return st.builds(Node, name, st.dictionaries(property_names, values, max_size=4), children)


trees = st.builds(
    DeviceTree,
    nodes(st.just(""), 3),
    st.lists(st.tuples(st.integers(0, (1 << 64) - 1), st.integers(1, (1 << 64) - 1)), max_size=3),
    st.integers(0, 0xFFFFFFFF),
)


@FUZZ
@given(trees)
def test_random_trees_round_trip(tree: DeviceTree) -> None:
    blob = tree.build()
    assert fdt.parse(blob) == tree
    check_libfdt(tree, blob, by_path=False)


@FUZZ_DTC
@given(trees)
def test_random_trees_through_dts(tree: DeviceTree) -> None:
    assert fdt.parse(compile_dts(tree)) == tree


def parses_or_format_error(data: bytes) -> None:
    """parse raises FormatError or gives a tree that writes and reads back the same."""
    try:
        tree = fdt.parse(data)
    except FormatError:
        return
    assert fdt.parse(tree.build()) == tree


_SAMPLE = odd_values().build()


@FUZZ
@given(
    st.lists(st.tuples(st.integers(0, len(_SAMPLE) - 1), st.integers(0, 255)), max_size=6),
    st.none() | st.integers(0, len(_SAMPLE)),
)
def test_mutated_blobs(flips: list[tuple[int, int]], cut: int | None) -> None:
    data = bytearray(_SAMPLE)
    for position, value in flips:
        data[position] = value
    parses_or_format_error(bytes(data[:cut]))


@FUZZ
@given(st.binary(max_size=256))
def test_random_bytes(data: bytes) -> None:
    parses_or_format_error(data)


@FUZZ
@given(
    st.lists(st.integers(0, 160) | st.integers(0, 0xFFFFFFFF), min_size=9, max_size=9),
    st.sampled_from([15, 16, 17, 18]),
    st.binary(max_size=160),
)
def test_random_headers(fields: list[int], version: int, body: bytes) -> None:
    """Past the magic, to reach the block parsers with offsets that are nearly right."""
    fields[4] = version
    parses_or_format_error(struct.pack(">10I", fdt.FDT_MAGIC, *fields) + body)


@FUZZ
@given(st.lists(st.sampled_from([begin(b""), begin(b"a"), END_NODE, NOP, END, prop(0, b"x")])))
def test_random_token_streams(tokens: list[bytes]) -> None:
    parses_or_format_error(blob_of(b"".join(tokens), b"p\0"))


@FUZZ
@given(trees, st.data())
def test_layout_with_holes_fills_to_build(tree: DeviceTree, data: st.DataObject) -> None:
    """Leaving any properties' values as holes and writing them in place gives build()'s
    bytes, and every hole and token stands where the blob has it."""
    whole = tree.build()
    paths = [(path, node, name) for path, node in tree.walk() for name in node.properties]
    indices = st.lists(st.integers(0, len(paths) - 1), unique=True) if paths else st.just([])
    chosen = [paths[index] for index in data.draw(indices)]
    values = {(path, name): node.properties[name] for path, node, name in chosen}
    for _, node, name in chosen:
        node.properties[name] = b""
    layout = tree.layout({key: len(value) for key, value in values.items()})
    out = bytearray()
    for piece in layout.pieces:
        if isinstance(piece, fdt.Hole):
            assert piece.offset == len(out)
            out += values[(piece.path, piece.name)]
        else:
            out += piece
    assert bytes(out) == whole and layout.totalsize == len(whole)
    structure = whole[layout.off_dt_struct : layout.off_dt_struct + layout.size_dt_struct]
    assert layout.tokens[-1].end == len(structure)
    for span in layout.tokens:
        assert struct.unpack(">I", structure[span.offset : span.offset + 4])[0] == span.kind


def test_layout_rejects_bad_holes() -> None:
    tree = DeviceTree()
    tree.root.set("data", b"x")
    with pytest.raises(FormatError, match="must be b''"):
        tree.layout({("/", "data"): 1})
    with pytest.raises(FormatError, match="no such property"):
        tree.layout({("/", "other"): 1})


def test_find_regions_follows_libfdt() -> None:
    """An included node's properties (less excluded ones), its subnodes' begin and end tokens
    only (theirs not at all), and FDT_END: the rules of U-Boot's fdt_find_regions."""
    tree = DeviceTree()
    tree.root.set("top", fdt.u32(1))
    images = tree.ensure("/images")
    image = tree.ensure("/images/a")
    image.set("data", b"payload!")
    image.set("type", fdt.string("kernel"))
    tree.ensure("/images/a/hash-1").set("value", b"HASHVAL!")
    tree.ensure("/images/b").set("type", fdt.string("ramdisk"))
    images.children[1].add_child(Node("deep")).set("secret", b"nope")
    layout = tree.layout()
    blob = tree.build()
    regions = fdt.find_regions(layout, ["/", "/images/a"], ["data"])
    taken = b"".join(blob[offset : offset + size] for offset, size in regions)
    assert b"payload!" not in taken and b"\0\0\0\x08" not in taken  # data's token and length
    assert fdt.string("kernel") in taken and b"HASHVAL!" not in taken  # hash-1 not included itself
    assert fdt.string("ramdisk") not in taken and b"nope" not in taken
    # /images is taken as its begin and end only, so its other children not at all.
    assert b"hash-1\0" in taken and b"deep" not in taken
    assert struct.pack(">I", fdt.FDT_BEGIN_NODE) + b"b\0\0\0" not in taken
    assert taken.endswith(struct.pack(">I", fdt.FDT_END))
    with_strings = fdt.find_regions(layout, ["/"], [], add_string_table=True)
    assert with_strings[-1][0] + with_strings[-1][1] == len(blob)


# --- scan: one streamed pass, large values passed over -----------------------------------------


def chunked(blob: bytes, size: int) -> list[bytes]:
    return [blob[index : index + size] for index in range(0, len(blob), size)]


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_scan_reads_what_parse_reads(chunk: int) -> None:
    for tree in (dom0less(), odd_values(), fdt.parse(qemu_dtb())):
        blob = tree.build()
        outline = fdt.scan(chunked(blob, chunk))
        assert outline.tree == fdt.parse(blob)
        assert outline.large == {} and outline.totalsize == len(blob)


def test_scan_passes_over_large_values_and_hashes_them() -> None:
    tree = dom0less()
    data = os.urandom(100_001)
    tree.ensure("/images/xen").set("data", data)
    tree.ensure("/images/xen").set("type", fdt.string("kernel"))
    blob = tree.build()
    outline = fdt.scan(chunked(blob, 4096), inline_limit=1000)
    large = outline.large[("/images/xen", "data")]
    assert blob[large.offset : large.offset + large.length] == data
    assert large.sha256 == hashlib.sha256(data).hexdigest()
    node = outline.tree.node("/images/xen")
    assert node is not None and node.properties["data"] == b""
    assert fdt.as_string(node.properties["type"]) == "kernel"
    unhashed = fdt.scan([blob], inline_limit=1000, digests=False)
    assert unhashed.large[("/images/xen", "data")].sha256 is None


def test_scan_refuses_a_cut_blob() -> None:
    blob = dom0less().build()
    with pytest.raises(FormatError, match="truncated device tree"):
        fdt.scan([blob[: len(blob) // 2]])
    with pytest.raises(FormatError, match="no 0xd00dfeed magic"):
        fdt.scan([b"\0" * 64])


def test_padded_keeps_the_tree_and_grows_totalsize() -> None:
    blob = dom0less().build()
    padded = fdt.padded(blob, len(blob) + 1000)
    assert len(padded) == len(blob) + 1000
    assert header(padded)["totalsize"] == len(padded)
    assert fdt.parse(padded) == fdt.parse(blob)
    assert decompile(padded) == decompile(blob)
    with pytest.raises(FormatError, match="does not fit"):
        fdt.padded(blob, len(blob) - 1)
