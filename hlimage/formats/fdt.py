"""Flattened device trees (DTB): parse any v16/v17 blob into nodes, edit them, write a v17 blob.

A tree keeps the order of everything in it: properties and children stay where the input had
them and new ones go at the end, so a blob that was read, edited and written differs from the
original only where it was edited. Nothing here knows about Xen; which nodes a boot needs is
the caller's business (`hlimage/xen/`).
"""

from __future__ import annotations

import hashlib
import io
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import construct as c

from hlimage.errors import FormatError
from hlimage.formats import align_up

FDT_MAGIC = 0xD00DFEED
FDT_BEGIN_NODE = 1
FDT_END_NODE = 2
FDT_PROP = 3
FDT_NOP = 4
FDT_END = 9

VERSION = 17
LAST_COMP_VERSION = 16
# Before v16 node names were full paths: a different format that nothing current writes.
OLDEST_VERSION = 16

HEADER_SIZE_V16 = 36
HEADER_SIZE = 40
# Deeper than any real tree (Linux's unflattener stops at 64); bounds a parser fed junk.
MAX_DEPTH = 64
U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF

Header = c.Struct(
    "magic" / c.Int32ub,
    "totalsize" / c.Int32ub,
    "off_dt_struct" / c.Int32ub,
    "off_dt_strings" / c.Int32ub,
    "off_mem_rsvmap" / c.Int32ub,
    "version" / c.Int32ub,
    "last_comp_version" / c.Int32ub,
    "boot_cpuid_phys" / c.Int32ub,
    "size_dt_strings" / c.Int32ub,
    # Added in v17; a v16 reader finds the structure block's end by its FDT_END token.
    "size_dt_struct" / c.If(c.this.version >= 17, c.Int32ub),
)

ReserveEntry = c.Struct("address" / c.Int64ub, "size" / c.Int64ub)
# libfdt and dtc both end the map at the first entry of size 0, not only at 0/0.
ReserveMap = c.RepeatUntil(lambda entry, entries, ctx: entry["size"] == 0, ReserveEntry)

Token = c.Struct(
    "token" / c.Int32ub,
    "body"
    / c.Switch(
        c.this.token,
        {
            FDT_BEGIN_NODE: c.Struct("name" / c.Aligned(4, c.NullTerminated(c.GreedyBytes))),
            FDT_PROP: c.Struct(
                "len" / c.Rebuild(c.Int32ub, c.len_(c.this.value)),
                "nameoff" / c.Int32ub,
                "value" / c.Aligned(4, c.Bytes(c.this.len)),
            ),
        },
        default=c.Pass,
    ),
)


@dataclass(eq=False)
class Node:
    """One node: its name with any unit address ("memory@40000000"), properties, children.

    Equality is by content including order: two trees are equal when they write the same blob.
    """

    name: str
    properties: dict[str, bytes] = field(default_factory=dict)
    children: list[Node] = field(default_factory=list)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Node):
            return NotImplemented
        return (
            self.name == other.name
            and list(self.properties.items()) == list(other.properties.items())
            and self.children == other.children
        )

    def child(self, name: str) -> Node | None:
        for node in self.children:
            if node.name == name:
                return node
        return None

    def get(self, name: str) -> bytes | None:
        return self.properties.get(name)

    def set(self, name: str, value: bytes) -> None:
        """Add a property at the end, or replace one's value where it stands."""
        _check_property_name(name)
        self.properties[name] = bytes(value)

    def add_child(self, node: Node) -> Node:
        _check_node_name(node.name)
        if self.child(node.name) is not None:
            raise FormatError(f"node {self.name or '/'} already has a child {node.name}")
        self.children.append(node)
        return node

    def remove_child(self, name: str) -> Node | None:
        """Remove and return the named child; None when there is none."""
        for index, node in enumerate(self.children):
            if node.name == name:
                return self.children.pop(index)
        return None


@dataclass
class DeviceTree:
    """A whole blob's content: the nodes, the memory reservations and the boot CPU."""

    root: Node = field(default_factory=lambda: Node(""))
    reservations: list[tuple[int, int]] = field(default_factory=list)
    """Memory reservation block entries as (address, size)."""
    boot_cpuid_phys: int = 0

    def node(self, path: str) -> Node | None:
        """The node at an absolute path; names match whole, unit address included."""
        node = self.root
        for name in _split_path(path):
            found = node.child(name)
            if found is None:
                return None
            node = found
        return node

    def ensure(self, path: str) -> Node:
        """The node at path, creating it and any missing parents (each after its siblings)."""
        node = self.root
        for name in _split_path(path):
            found = node.child(name)
            node = found if found is not None else node.add_child(Node(name))
        return node

    def walk(self) -> Iterator[tuple[str, Node]]:
        """Every node with its path, in document order."""
        stack: list[tuple[str, Node]] = [("/", self.root)]
        while stack:
            path, node = stack.pop()
            yield path, node
            prefix = path.rstrip("/")
            stack.extend((f"{prefix}/{child.name}", child) for child in reversed(node.children))

    def phandles(self) -> set[int]:
        """Every phandle value in use, from `phandle` and the older `linux,phandle`."""
        used = set()
        for _, node in self.walk():
            for name in ("phandle", "linux,phandle"):
                value = node.properties.get(name)
                if value is not None:
                    used.add(as_u32(value))
        return used

    def allocate_phandle(self) -> int:
        """One more than the largest phandle in use; it is free until a node is given it."""
        used = [value for value in self.phandles() if value != U32_MAX]
        candidate = max(used, default=0) + 1
        if candidate >= U32_MAX:
            raise FormatError("no phandle values left above the largest one in use")
        return candidate

    def build(self) -> bytes:
        """A v17 blob laid out as dtc does: header, reservation map, structure, strings."""
        layout = self.layout()
        return b"".join(piece for piece in layout.pieces if isinstance(piece, bytes))

    def layout(self, holes: Mapping[tuple[str, str], int] | None = None) -> Layout:
        """The blob `build` writes, in pieces, with some property values left out.

        `holes` maps (node path, property name) to the length the value will have; each such
        property must hold b"" in the tree. The blob's layout is final, so the caller writes
        each hole's bytes where the hole stands: a payload streamed from its file, or a value
        computed from what came before it (a hash after its data).
        """
        holes = dict(holes or {})
        if not 0 <= self.boot_cpuid_phys <= U32_MAX:
            raise FormatError(f"boot_cpuid_phys {self.boot_cpuid_phys} does not fit in 32 bits")
        entries = []
        for address, size in self.reservations:
            if not (0 <= address <= U64_MAX and 0 < size <= U64_MAX):
                raise FormatError(
                    f"memory reservation 0x{address:x}+0x{size:x}: address and size must be "
                    "64-bit and the size not 0 (a 0 size ends the map)"
                )
            entries.append({"address": address, "size": size})
        entries.append({"address": 0, "size": 0})
        reserve_map: bytes = ReserveMap.build(entries)

        off_mem_rsvmap = align_up(HEADER_SIZE, 8)
        off_dt_struct = off_mem_rsvmap + len(reserve_map)
        writer = _StructureWriter(holes, off_dt_struct)
        if self.root.name:
            raise FormatError(f"the root node has a name ({self.root.name!r}); it must be empty")
        writer.node(self.root, 1, "/")
        if writer.holes:
            path, name = next(iter(writer.holes))
            raise FormatError(f"device tree hole {path}:{name}: the tree has no such property")
        writer.token(Token.build({"token": FDT_END, "body": None}), FDT_END, "", "")
        structure = writer.finish()
        strings = bytes(writer.strings)

        size_dt_struct = writer.position
        off_dt_strings = off_dt_struct + size_dt_struct
        totalsize = off_dt_strings + len(strings)
        if totalsize > U32_MAX:
            raise FormatError(f"the device tree would be {totalsize} bytes: more than 4 GiB")
        header: bytes = Header.build(
            {
                "magic": FDT_MAGIC,
                "totalsize": totalsize,
                "off_dt_struct": off_dt_struct,
                "off_dt_strings": off_dt_strings,
                "off_mem_rsvmap": off_mem_rsvmap,
                "version": VERSION,
                "last_comp_version": LAST_COMP_VERSION,
                "boot_cpuid_phys": self.boot_cpuid_phys,
                "size_dt_strings": len(strings),
                "size_dt_struct": size_dt_struct,
            }
        )
        padding = b"\0" * (off_mem_rsvmap - len(header))
        return Layout(
            pieces=[header + padding + reserve_map, *structure, strings],
            totalsize=totalsize,
            off_dt_struct=off_dt_struct,
            off_dt_strings=off_dt_strings,
            size_dt_struct=size_dt_struct,
            size_dt_strings=len(strings),
            tokens=writer.tokens,
        )

    def to_dts(self) -> str:
        """DTS source that dtc compiles back to this tree.

        boot_cpuid_phys has no DTS syntax (dtc takes it as `-b`), and phandles are written as
        the plain cells they are, without labels.
        """
        lines = ["/dts-v1/;", ""]
        lines += [
            f"/memreserve/ 0x{address:016x} 0x{size:016x};" for address, size in self.reservations
        ]
        if self.reservations:
            lines.append("")
        _dts_node(self.root, 0, lines)
        return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class Hole:
    """A property value that a laid-out blob leaves for its writer to fill."""

    path: str
    name: str
    offset: int
    """Where the value starts in the blob."""
    length: int


@dataclass(frozen=True)
class TokenSpan:
    """One token of the structure block, as libfdt's fdt_next_tag walks it."""

    kind: int
    offset: int
    """From the start of the structure block, as libfdt counts."""
    end: int
    path: str
    """The node's path (FDT_BEGIN_NODE, FDT_END_NODE) or the property's node (FDT_PROP)."""
    name: str
    """The property's name (FDT_PROP only)."""


@dataclass
class Layout:
    """A blob in order: bytes, and holes for the caller to fill with exactly `length` bytes.

    Offsets are final: the blob is the pieces written one after another.
    """

    pieces: list[bytes | Hole]
    totalsize: int
    off_dt_struct: int
    off_dt_strings: int
    size_dt_struct: int
    size_dt_strings: int
    tokens: list[TokenSpan]

    def hole(self, path: str, name: str) -> Hole:
        for piece in self.pieces:
            if isinstance(piece, Hole) and (piece.path, piece.name) == (path, name):
                return piece
        raise KeyError((path, name))


def find_regions(
    layout: Layout,
    include: Iterable[str],
    exclude_properties: Iterable[str],
    *,
    add_string_table: bool = False,
) -> list[tuple[int, int]]:
    """The (blob offset, size) regions of U-Boot's fdt_find_regions (boot/fdt_region.c).

    A node whose path is in `include` is taken with its properties (less those named in
    `exclude_properties`); its subnodes are taken as their begin and end tokens only, and
    their subnodes not at all, unless they are included themselves. Adjacent pieces merge
    into one region, and the last region holds FDT_END (and the string table, if asked).
    Verified boot signs exactly these bytes, so this follows that code step by step.
    """
    wanted = set(include)
    excluded = set(exclude_properties)
    base = layout.off_dt_struct
    regions: list[tuple[int, int]] = []
    stack: list[int] = []
    want = 0
    start = -1
    for token in layout.tokens:
        stop_at = token.end
        if token.kind in (FDT_PROP, FDT_NOP):
            include_token = want >= 2 and not (token.kind == FDT_PROP and token.name in excluded)
            stop_at = token.offset
        elif token.kind == FDT_BEGIN_NODE:
            stack.append(want)
            if want == 1:
                stop_at = token.offset
            if token.path in wanted:
                want = 2
            elif want:
                want -= 1
            else:
                stop_at = token.offset
            include_token = bool(want)
        elif token.kind == FDT_END_NODE:
            include_token = bool(want)
            want = stack.pop()
        else:
            include_token = True
        if include_token and start == -1:
            if regions and token.offset == regions[-1][0] + regions[-1][1] - base:
                start = regions.pop()[0] - base
            else:
                start = token.offset
        if not include_token and start != -1:
            regions.append((base + start, stop_at - start))
            start = -1
    last = layout.tokens[-1]
    size = last.end - start
    if add_string_table:
        size += layout.size_dt_strings
    regions.append((base + start, size))
    return regions


class _StructureWriter:
    def __init__(self, holes: dict[tuple[str, str], int] | None = None, base: int = 0) -> None:
        self.out = bytearray()
        self.strings = bytearray()
        self.offsets: dict[str, int] = {}
        self.holes = holes or {}
        self.base = base
        self.pieces: list[bytes | Hole] = []
        self.position = 0
        """Bytes of the structure block so far, the holes' included."""
        self.tokens: list[TokenSpan] = []

    def token(self, encoded: bytes, kind: int, path: str, name: str) -> None:
        self.tokens.append(TokenSpan(kind, self.position, self.position + len(encoded), path, name))
        self.out += encoded
        self.position += len(encoded)

    def hole(self, path: str, name: str, length: int) -> None:
        """A property's token with its value left out (and the value's padding kept)."""
        if not 0 <= length <= U32_MAX:
            raise FormatError(f"device tree property {path}:{name}: {length} bytes is over 4 GiB")
        prop_header = c.Int32ub.build(FDT_PROP) + c.Int32ub.build(length)
        prop_header += c.Int32ub.build(self.name_offset(name))
        begin = self.position
        self.out += prop_header
        self.pieces.append(bytes(self.out))
        self.out = bytearray()
        self.pieces.append(Hole(path, name, self.base + begin + len(prop_header), length))
        padding = -length % 4
        self.out += b"\0" * padding
        self.position = begin + len(prop_header) + length + padding
        self.tokens.append(TokenSpan(FDT_PROP, begin, self.position, path, name))

    def finish(self) -> list[bytes | Hole]:
        pieces = [*self.pieces, bytes(self.out)]
        return [piece for piece in pieces if not isinstance(piece, bytes) or piece]

    def name_offset(self, name: str) -> int:
        offset = self.offsets.get(name)
        if offset is None:
            # As dtc and libfdt do: a name that ends an earlier one ("bootargs") shares it.
            encoded = name.encode("ascii") + b"\0"
            offset = self.strings.find(encoded)
            if offset < 0:
                offset = len(self.strings)
                self.strings += encoded
            self.offsets[name] = offset
        return offset

    def node(self, node: Node, depth: int, path: str) -> None:
        if depth > MAX_DEPTH:
            raise FormatError(f"node {node.name} is nested more than {MAX_DEPTH} levels deep")
        begin = Token.build({"token": FDT_BEGIN_NODE, "body": {"name": node.name.encode("ascii")}})
        self.token(begin, FDT_BEGIN_NODE, path, "")
        for name, value in node.properties.items():
            _check_property_name(name)
            length = self.holes.pop((path, name), None)
            if length is not None:
                if value:
                    raise FormatError(f"device tree hole {path}:{name}: the value must be b''")
                self.hole(path, name, length)
                continue
            body = {"nameoff": self.name_offset(name), "value": bytes(value)}
            self.token(Token.build({"token": FDT_PROP, "body": body}), FDT_PROP, path, name)
        seen = set()
        prefix = path.rstrip("/")
        for child in node.children:
            _check_node_name(child.name)
            if child.name in seen:
                raise FormatError(f"node {node.name or '/'} has two children named {child.name}")
            seen.add(child.name)
            self.node(child, depth + 1, f"{prefix}/{child.name}")
        self.token(Token.build({"token": FDT_END_NODE, "body": None}), FDT_END_NODE, path, "")


def padded(blob: bytes, size: int) -> bytes:
    """`blob` with zeros after its strings up to `size` bytes, counted in its totalsize (the
    free space `dtc -S SIZE` leaves), so that a blob's size can be fixed before its content."""
    header = Header.parse(blob)
    if header.totalsize != len(blob):
        raise FormatError(f"device tree of {len(blob)} bytes says totalsize {header.totalsize}")
    if size < len(blob):
        raise FormatError(f"a {len(blob)}-byte device tree does not fit in {size} bytes")
    if size > U32_MAX:
        raise FormatError(f"the device tree would be {size} bytes: more than 4 GiB")
    return blob[:4] + size.to_bytes(4, "big") + blob[8:] + bytes(size - len(blob))


def parse(data: bytes) -> DeviceTree:
    """Read a v16 or v17 blob. Raises FormatError, and only that, for anything else.

    Bytes after totalsize, and padding inside it, are ignored.
    """
    try:
        return _parse(data)
    except c.ConstructError:
        raise FormatError("malformed device tree: a block ends past its bounds") from None


def _parse(data: bytes) -> DeviceTree:
    if len(data) < HEADER_SIZE_V16:
        raise FormatError("not a device tree: shorter than a header")
    header = Header.parse(data)
    if header.magic != FDT_MAGIC:
        raise FormatError("not a device tree: no 0xd00dfeed magic")
    if header.version < OLDEST_VERSION or header.last_comp_version > VERSION:
        raise FormatError(
            f"unsupported device tree version {header.version} "
            f"(compatible with {header.last_comp_version}); 16 and 17 are read"
        )
    header_size = HEADER_SIZE if header.version >= 17 else HEADER_SIZE_V16
    totalsize = header.totalsize
    if not header_size <= totalsize <= len(data):
        raise FormatError(f"bad device tree: totalsize {totalsize} but {len(data)} bytes given")
    blob = data[:totalsize]

    struct_start = header.off_dt_struct
    struct_end = (
        totalsize if header.size_dt_struct is None else struct_start + header.size_dt_struct
    )
    strings_start = header.off_dt_strings
    strings_end = strings_start + header.size_dt_strings
    if not header_size <= header.off_mem_rsvmap <= totalsize:
        raise FormatError("bad device tree: the reservation map is outside the blob")
    if not header_size <= struct_start <= struct_end <= totalsize or struct_start % 4:
        raise FormatError("bad device tree: the structure block is outside the blob or unaligned")
    if not header_size <= strings_start <= strings_end <= totalsize:
        raise FormatError("bad device tree: the strings block is outside the blob")

    entries = ReserveMap.parse(blob[header.off_mem_rsvmap :])
    reservations = [(int(entry.address), int(entry.size)) for entry in entries[:-1]]
    root = _parse_structure(blob[struct_start:struct_end], blob[strings_start:strings_end])
    return DeviceTree(root, reservations, int(header.boot_cpuid_phys))


def _parse_structure(block: bytes, strings: bytes) -> Node:
    # Every token takes at least 4 bytes of the block, so the loop ends with the block.
    stream = io.BytesIO(block)
    names: dict[int, str] = {}
    stack: list[tuple[Node, set[str]]] = []
    root: Node | None = None
    while True:
        token = Token.parse_stream(stream)
        kind = token.token
        if kind == FDT_NOP:
            continue
        if kind == FDT_END:
            if root is None or stack:
                raise FormatError("malformed device tree: FDT_END inside a node or before root")
            return root
        if kind == FDT_BEGIN_NODE:
            name = _decode_name(bytes(token.body.name), "node")
            if not stack:
                if root is not None:
                    raise FormatError("malformed device tree: more than one root node")
                if name:
                    raise FormatError(f"malformed device tree: the root node is named {name!r}")
                root = node = Node("")
            else:
                parent, seen = stack[-1]
                _check_node_name(name)
                if name in seen:
                    raise FormatError(f"malformed device tree: two nodes named {name} together")
                if len(stack) >= MAX_DEPTH:
                    raise FormatError(f"device tree nested more than {MAX_DEPTH} levels deep")
                seen.add(name)
                node = Node(name)
                parent.children.append(node)
            stack.append((node, set()))
        elif kind == FDT_END_NODE:
            if not stack:
                raise FormatError("malformed device tree: FDT_END_NODE outside any node")
            stack.pop()
        elif kind == FDT_PROP:
            if not stack:
                raise FormatError("malformed device tree: a property outside any node")
            node = stack[-1][0]
            if node.children:
                raise FormatError(
                    f"malformed device tree: a property after node {node.name}'s children"
                )
            name = _string_at(strings, int(token.body.nameoff), names)
            if name in node.properties:
                raise FormatError(
                    f"malformed device tree: node {node.name} has two {name} properties"
                )
            node.properties[name] = bytes(token.body.value)
        else:
            raise FormatError(f"malformed device tree: unknown token 0x{kind:x}")


# --- Reading a blob as a stream: large values are passed over, never held -------------------


@dataclass(frozen=True)
class LargeValue:
    """A property value `scan` did not keep: where it is in the blob, and its sha256."""

    offset: int
    length: int
    sha256: str | None


@dataclass
class Outline:
    tree: DeviceTree
    """Every node and property; a large value reads as b"" (its entry in `large`)."""
    large: dict[tuple[str, str], LargeValue]
    """By (node path, property name)."""
    totalsize: int


class _ChunkReader:
    """Sequential reads over chunks of bytes, at most one chunk held at a time."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = iter(chunks)
        self.buffer = memoryview(b"")
        self.position = 0

    def _fill(self) -> bool:
        for chunk in self.chunks:
            if chunk:
                self.buffer = memoryview(chunk)
                return True
        return False

    def read(self, count: int) -> bytes:
        out = bytearray()
        while len(out) < count:
            if not self.buffer and not self._fill():
                raise FormatError(
                    f"truncated device tree: it ends at byte {self.position + len(out)}, inside "
                    "what its header describes"
                )
            take = self.buffer[: count - len(out)]
            out += take
            self.buffer = self.buffer[len(take) :]
        self.position += count
        return bytes(out)

    def skip(self, count: int, digest: Any = None) -> None:
        left = count
        while left:
            if not self.buffer and not self._fill():
                raise FormatError(
                    f"truncated device tree: it ends at byte {self.position + count - left}, "
                    "inside what its header describes"
                )
            take = self.buffer[:left]
            if digest is not None:
                digest.update(take)
            left -= len(take)
            self.buffer = self.buffer[len(take) :]
        self.position += count

    def skip_to(self, offset: int) -> None:
        if offset < self.position:
            raise FormatError("bad device tree: its blocks overlap")
        self.skip(offset - self.position)


def scan(chunks: Iterable[bytes], *, inline_limit: int = 1 << 16, digests: bool = True) -> Outline:
    """Read a blob from its chunks in one pass, keeping property values up to `inline_limit`
    bytes and passing over longer ones (a FIT's image data), hashed if `digests`."""
    reader = _ChunkReader(chunks)
    header = Header.parse(reader.read(HEADER_SIZE))
    if header.magic != FDT_MAGIC:
        raise FormatError("not a device tree: no 0xd00dfeed magic")
    if header.version < 17 or header.last_comp_version > VERSION:
        raise FormatError(f"device tree version {header.version}: a stream is read from v17 on")
    blocks = sorted(
        [
            (int(header.off_mem_rsvmap), "rsvmap"),
            (int(header.off_dt_struct), "struct"),
            (int(header.off_dt_strings), "strings"),
        ]
    )
    reservations: list[tuple[int, int]] = []
    strings = b""
    raw: list[tuple[Node, str, int, bytes | LargeValue]] = []
    root: Node | None = None
    for offset, kind in blocks:
        reader.skip_to(offset)
        if kind == "rsvmap":
            while True:
                address, size = struct.unpack(">QQ", reader.read(16))
                if size == 0:
                    break
                reservations.append((address, size))
        elif kind == "strings":
            strings = reader.read(int(header.size_dt_strings))
        else:
            root = _scan_structure(reader, int(header.size_dt_struct), inline_limit, digests, raw)
    assert root is not None
    names: dict[int, str] = {}
    large: dict[tuple[str, str], LargeValue] = {}
    for node, path, nameoff, value in raw:
        name = _string_at(strings, nameoff, names)
        if name in node.properties:
            raise FormatError(f"malformed device tree: node {node.name} has two {name} properties")
        if isinstance(value, LargeValue):
            large[(path, name)] = value
            node.properties[name] = b""
        else:
            node.properties[name] = value
    return Outline(DeviceTree(root, reservations, int(header.boot_cpuid_phys)), large,
                   int(header.totalsize))  # fmt: skip


def _scan_structure(
    reader: _ChunkReader,
    size: int,
    inline_limit: int,
    digests: bool,
    raw: list[tuple[Node, str, int, bytes | LargeValue]],
) -> Node:
    end = reader.position + size
    stack: list[tuple[Node, str, set[str]]] = []
    root: Node | None = None
    while reader.position < end:
        (kind,) = struct.unpack(">I", reader.read(4))
        if kind == FDT_NOP:
            continue
        if kind == FDT_END:
            if root is None or stack:
                raise FormatError("malformed device tree: FDT_END inside a node or before root")
            return root
        if kind == FDT_BEGIN_NODE:
            encoded = b""
            while b"\0" not in encoded:
                if len(encoded) > 4096:
                    raise FormatError("malformed device tree: a node name runs on")
                encoded += reader.read(4)
            name = _decode_name(encoded.split(b"\0", 1)[0], "node")
            if not stack:
                if root is not None or name:
                    raise FormatError("malformed device tree: a second or named root node")
                root = node = Node("")
                path = "/"
            else:
                parent, parent_path, seen = stack[-1]
                _check_node_name(name)
                if name in seen or len(stack) >= MAX_DEPTH:
                    raise FormatError(f"malformed device tree: node {name} twice, or too deep")
                seen.add(name)
                node = Node(name)
                parent.children.append(node)
                path = f"{parent_path.rstrip('/')}/{name}"
            stack.append((node, path, set()))
        elif kind == FDT_END_NODE:
            if not stack:
                raise FormatError("malformed device tree: FDT_END_NODE outside any node")
            stack.pop()
        elif kind == FDT_PROP:
            if not stack:
                raise FormatError("malformed device tree: a property outside any node")
            length, nameoff = struct.unpack(">II", reader.read(8))
            node, path, _ = stack[-1]
            value: bytes | LargeValue
            if length > inline_limit:
                start = reader.position
                digest = hashlib.sha256() if digests else None
                reader.skip(length, digest)
                value = LargeValue(start, length, digest.hexdigest() if digest else None)
            else:
                value = reader.read(length)
            reader.skip(-length % 4)
            raw.append((node, path, nameoff, value))
        else:
            raise FormatError(f"malformed device tree: unknown token 0x{kind:x}")
    raise FormatError("malformed device tree: the structure block has no FDT_END")


def _string_at(strings: bytes, offset: int, cache: dict[int, str]) -> str:
    name = cache.get(offset)
    if name is None:
        end = strings.find(b"\0", offset)
        if offset >= len(strings) or end < 0:
            raise FormatError("malformed device tree: a property name is outside the strings block")
        name = cache[offset] = _decode_name(strings[offset:end], "property")
        _check_property_name(name)
    return name


def _decode_name(raw: bytes, what: str) -> str:
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise FormatError(f"malformed device tree: a {what} name is not ASCII") from None


def _check_node_name(name: str) -> None:
    if not name or "/" in name or not _is_ascii_without_nul(name):
        raise FormatError(f"bad device tree node name {name!r}: need ASCII, no '/' or NUL")


def _check_property_name(name: str) -> None:
    if not name or not _is_ascii_without_nul(name):
        raise FormatError(f"bad device tree property name {name!r}: need ASCII, no NUL")


def _is_ascii_without_nul(name: str) -> bool:
    return name.isascii() and "\0" not in name


def _split_path(path: str) -> list[str]:
    if not path.startswith("/"):
        raise FormatError(f"device tree path {path!r} is not absolute")
    return [name for name in path.split("/") if name]


# Values. Cells are big-endian 32-bit words; strings are NUL-terminated.


def u32(value: int) -> bytes:
    return cells(value)


def u64(value: int) -> bytes:
    if not 0 <= value <= U64_MAX:
        raise FormatError(f"{value} does not fit in 64 bits")
    return struct.pack(">Q", value)


def cells(*values: int) -> bytes:
    for value in values:
        if not 0 <= value <= U32_MAX:
            raise FormatError(f"{value} does not fit in a 32-bit cell")
    return struct.pack(f">{len(values)}I", *values)


def string(value: str) -> bytes:
    return strings([value])


def strings(values: Iterable[str]) -> bytes:
    out = bytearray()
    for value in values:
        if "\0" in value:
            raise FormatError(f"device tree string {value!r} contains a NUL")
        out += value.encode() + b"\0"
    return bytes(out)


def empty() -> bytes:
    return b""


def as_u32(value: bytes) -> int:
    if len(value) != 4:
        raise FormatError(f"expected a 32-bit cell, got {len(value)} bytes")
    return int.from_bytes(value, "big")


def as_u64(value: bytes) -> int:
    if len(value) != 8:
        raise FormatError(f"expected a 64-bit value (two cells), got {len(value)} bytes")
    return int.from_bytes(value, "big")


def as_cells(value: bytes) -> tuple[int, ...]:
    if len(value) % 4:
        raise FormatError(f"expected 32-bit cells, got {len(value)} bytes")
    return struct.unpack(f">{len(value) // 4}I", value)


def as_string(value: bytes) -> str:
    decoded = as_strings(value)
    if len(decoded) != 1:
        raise FormatError(f"expected one string, got {len(decoded)}")
    return decoded[0]


def as_strings(value: bytes) -> list[str]:
    if not value:
        return []
    if not value.endswith(b"\0"):
        raise FormatError("expected NUL-terminated strings")
    try:
        return value[:-1].decode().split("\0")
    except UnicodeDecodeError:
        raise FormatError("device tree string is not UTF-8") from None


# DTS output.

_DTS_ESCAPES = {'"': '\\"', "\\": "\\\\"}


def _dts_node(node: Node, depth: int, lines: list[str]) -> None:
    indent = "\t" * depth
    lines.append(f"{indent}{node.name or '/'} {{")
    for name, value in node.properties.items():
        lines.append(f"{indent}\t{name}{_dts_value(value)};")
    for child in node.children:
        lines.append("")
        _dts_node(child, depth + 1, lines)
    lines.append(f"{indent}}};")


def _dts_value(value: bytes) -> str:
    if not value:
        return ""
    if _is_string_list(value):
        parts = value[:-1].decode("ascii").split("\0")
        quoted = ('"' + "".join(_DTS_ESCAPES.get(ch, ch) for ch in part) + '"' for part in parts)
        return " = " + ", ".join(quoted)
    if len(value) % 4 == 0:
        return " = <" + " ".join(f"0x{cell:x}" for cell in as_cells(value)) + ">"
    return " = [" + value.hex(" ") + "]"


def _is_string_list(value: bytes) -> bool:
    """dtc's rule: printable text, NUL-terminated, no empty string in the list."""
    if not value.endswith(b"\0"):
        return False
    parts = value[:-1].split(b"\0")
    return all(part and all(0x20 <= byte < 0x7F for byte in part) for part in parts)
