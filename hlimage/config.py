"""`hlimage.toml` to the model. Every key is declared once in an option table (the shape of
ukify's CONFIG_ITEMS); every error names the file and the key and says what to do."""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hlimage.errors import HlimageError
from hlimage.model import (
    Arch,
    Binding,
    Capability,
    CpuPool,
    Domain,
    EventChannel,
    InitrdCompression,
    MemoryRange,
    Mode,
    SharedMemory,
    ShmRole,
    System,
    UBoot,
    Xen,
)
from hlimage.xen import policy

_SIZE_RE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(?:i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,30}$")


def parse_size(text: str) -> int | None:
    """'512M' -> 536870912; None when the text is not a size. Units are binary."""
    match = _SIZE_RE.match(text)
    if not match:
        return None
    return int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]


@dataclass(frozen=True)
class Field:
    """Where a value came from, so that an error can say so."""

    file: Path
    section: str
    key: str

    @property
    def base(self) -> Path:
        return self.file.parent

    def fail(self, problem: str, fix: str) -> HlimageError:
        return HlimageError(f"{self.section}{self.key}: {problem}; {fix}", where=self.file)


Parser = Callable[[Field, object], Any]


@dataclass(frozen=True)
class Option:
    key: str
    parse: Parser
    help: str
    required: bool = False


def _show(value: object) -> str:
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value)


def _type_name(value: object) -> str:
    return {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a table",
    }.get(type(value), type(value).__name__)


def text(where: Field, value: object) -> str:
    if not isinstance(value, str):
        raise where.fail(f"expected a string, got {_type_name(value)}", 'quote it: key = "..."')
    # Every string ends up on one line of something (xen.cfg, grub.cfg, a device-tree string,
    # a kernel command line), where a NUL or a newline would cut it short or start a new one.
    for index, char in enumerate(value):
        if (ord(char) < 0x20 and char != "\t") or ord(char) == 0x7F:
            raise where.fail(
                f"control character U+{ord(char):04X} at position {index + 1}",
                "write the text on one line, without control characters",
            )
    return value


def name(where: Field, value: object) -> str:
    value = text(where, value)
    if not _NAME_RE.match(value):
        raise where.fail(
            f"{_show(value)} is not a usable name",
            "use 1 to 31 letters, digits, '_', '.', '+' or '-', starting with a letter or digit",
        )
    return value


def existing_file(where: Field, value: object) -> Path:
    value = text(where, value)
    if not value:
        raise where.fail("the path is empty", "name a file, relative to the description")
    path = where.base / value
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as error:  # a name too long, a directory that cannot be searched
        raise where.fail(
            f"{value}: {error.strerror}", "fix the path; it is relative to the description"
        ) from None
    if not exists:
        raise where.fail(
            f"{value} does not exist (looked for {path})",
            "fix the path; it is relative to the description's directory",
        )
    if not is_file:
        raise where.fail(f"{value} is not a regular file", "name a file, not a directory")
    return path


def file_list(where: Field, value: object) -> tuple[Path, ...]:
    if isinstance(value, str):
        return (existing_file(where, value),)
    if isinstance(value, list) and value:
        return tuple(
            existing_file(Field(where.file, where.section, f"{where.key}[{i}]"), item)
            for i, item in enumerate(value)
        )
    raise where.fail(
        f"expected a path or a non-empty list of paths, got {_type_name(value)}",
        'write key = "file" or key = ["part1", "part2"]',
    )


def size(where: Field, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, str):
        raise where.fail(
            f"expected a size as a string, got {_type_name(value)} {_show(value)}",
            'write it with a unit, like "512M" or "1G"',
        )
    parsed = parse_size(value)
    if parsed is None:
        raise where.fail(
            f"{_show(value)} is not a size",
            'write a whole number with a K, M or G suffix (binary units), like "512M"',
        )
    return parsed


# Above Xen's own limit (123 TiB of host RAM on x86, less on Arm); it bounds the device-tree
# and command-line values made from it.
MAX_MEMORY = 128 << 40


def memory(where: Field, value: object) -> int:
    parsed = size(where, value)
    if parsed < (1 << 20) or parsed > MAX_MEMORY or parsed % 1024:
        raise where.fail(
            f"{_show(value)} is not a usable amount of memory",
            'give from 1M to 128T in whole KiB, like "256M"',
        )
    return parsed


def count(where: Field, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise where.fail(f"expected a whole number, got {_type_name(value)}", "write e.g. key = 2")
    if value < 1 or value > 4096:
        raise where.fail(f"{value} is out of range", "give a number from 1 to 4096")
    return value


# A GIC has interrupt IDs up to 1019, the first 32 per CPU: 988 shared ones (SPIs) at most,
# which is also what Xen's vGIC accepts.
MAX_SPIS = 1020 - 32


def spi_count(where: Field, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SPIS:
        raise where.fail(
            f"expected a whole number from 0 to {MAX_SPIS}, got {_show(value)}",
            "write e.g. key = 0",
        )
    return value


def boolean(where: Field, value: object) -> bool:
    if not isinstance(value, bool):
        raise where.fail(f"expected true or false, got {_show(value)}", "write key = true")
    return value


def choice(enum_type: Any) -> Parser:
    values = [member.value for member in enum_type]

    def parse(where: Field, value: object) -> Any:
        for member in enum_type:
            if value == member.value:
                return member
        raise where.fail(
            f"{_show(value)} is not one of {', '.join(values)}",
            f"use one of {', '.join(values)}",
        )

    return parse


def one_of(*values: str) -> Parser:
    def parse(where: Field, value: object) -> str:
        if value not in values:
            raise where.fail(
                f"{_show(value)} is not one of {', '.join(values)}",
                f"use one of {', '.join(values)}",
            )
        return str(value)

    return parse


def capabilities(where: Field, value: object) -> frozenset[Capability]:
    known = [c.value for c in Capability]
    if not isinstance(value, list):
        raise where.fail(
            f"expected a list, got {_type_name(value)}", 'write key = ["control", "hardware"]'
        )
    result = set()
    for item in value:
        if item not in known:
            raise where.fail(f"{_show(item)} is not a capability", f"use {', '.join(known)}")
        if Capability(item) in result:
            raise where.fail(f"{_show(item)} is listed twice", "list each capability once")
        result.add(Capability(item))
    return frozenset(result)


def memory_ranges(where: Field, value: object) -> tuple[MemoryRange, ...]:
    fix = 'write key = [["0x50000000", "256M"], ...]: pairs of address and size'
    if not isinstance(value, list) or not value:
        raise where.fail("expected a list of [address, size] pairs", fix)
    ranges = []
    for item in value:
        if not (isinstance(item, list) and len(item) == 2):
            raise where.fail(f"{_show(item)} is not an [address, size] pair", fix)
        address, length = item
        if isinstance(address, str):
            try:
                address = int(address, 0)
            except ValueError:
                raise where.fail(f"{_show(address)} is not an address", fix) from None
        if isinstance(address, bool) or not isinstance(address, int) or address < 0:
            raise where.fail(f"{_show(address)} is not an address", fix)
        length = size(where, length)
        # Xen reads each range as two 64-bit numbers (two cells each).
        if address + length > 1 << 64:
            raise where.fail(f"{_show(item)} ends beyond 64-bit addresses", fix)
        ranges.append(MemoryRange(address, length))
    return tuple(ranges)


def whole_number(low: int, high: int, example: int) -> Parser:
    def parse(where: Field, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise where.fail(
                f"expected a whole number from {low} to {high}, got {_show(value)}",
                f"write e.g. key = {example}",
            )
        return value

    return parse


# Xen reads grant limits as u32 and refuses those above INT32_MAX ("max_grant_frames (%u)
# overflow"); a grant table needs at least one frame (INITIAL_NR_GRANT_FRAMES).
INT32_MAX = (1 << 31) - 1
# booting.txt: "allowed values are from 128 to maximum 2048, being multiple of 128"; 0 is off.
SVE_STEP, SVE_MAX = 128, 2048


def sve_length(where: Field, value: object) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or not 0 <= value <= SVE_MAX
        or value % SVE_STEP
    ):
        raise where.fail(
            f"{_show(value)} is not an SVE vector length",
            f"give the length in bits, a multiple of {SVE_STEP} up to {SVE_MAX} (0: off), like 256",
        )
    return value


_NUMBER_LIST_RE = re.compile(r"^\d+(?:-\d+)?(?:,\d+(?:-\d+)?)*$")


def number_list(what: str) -> Parser:
    """A list of numbers and inclusive ranges as Xen parses it: "0-3,8" (hard-affinity,
    llc-colors)."""

    def parse(where: Field, value: object) -> str:
        value = text(where, value)
        if not _NUMBER_LIST_RE.match(value) or any(
            int(low) > int(high)
            for low, _, high in (part.partition("-") for part in value.split(","))
            if high
        ):
            raise where.fail(
                f"{_show(value)} is not a list of {what}",
                'write numbers and ranges separated by commas, like "0-3,8"',
            )
        return value

    return parse


def affinities(where: Field, value: object) -> tuple[str, ...]:
    fix = 'write key = ["0-1", "3"]: one list of physical CPUs per vCPU, vCPU 0 first'
    if not isinstance(value, list) or not value:
        raise where.fail(f"expected a non-empty list of strings, got {_type_name(value)}", fix)
    parse = number_list("physical CPUs")
    return tuple(
        parse(Field(where.file, where.section, f"{where.key}[{index}]"), item)
        for index, item in enumerate(value)
    )


def address(where: Field, value: object, fix: str) -> int:
    if isinstance(value, str):
        try:
            value = int(value, 0)
        except ValueError:
            raise where.fail(f"{_show(value)} is not an address", fix) from None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise where.fail(f"{_show(value)} is not an address", fix)
    return value


def _table_items(
    where: Field, value: object, fix: str
) -> list[tuple[Callable[[str], Field], dict[str, object]]]:
    """The tables of a list of tables, each with a Field maker for its keys."""
    if not isinstance(value, list) or not value:
        raise where.fail(f"expected a non-empty list of tables, got {_type_name(value)}", fix)
    items: list[tuple[Callable[[str], Field], dict[str, object]]] = []
    for index, item in enumerate(value):
        if not isinstance(item, dict):
            raise where.fail(f"item {index + 1} is {_type_name(item)}, not a table", fix)
        items.append((functools.partial(_item_field, where, index), item))
    return items


def _item_field(where: Field, index: int, key: str) -> Field:
    return Field(where.file, where.section, f"{where.key}[{index}].{key}")


def _check_keys(field: Callable[[str], Field], item: Mapping[str, object],
                known: Sequence[str], required: Sequence[str], fix: str) -> None:  # fmt: skip
    for key in item:
        if key not in known:
            raise field(key).fail(f"unknown key; {_did_you_mean(key, list(known))}", fix)
    for key in required:
        if key not in item:
            raise field(key).fail("is missing", fix)


# Xen keeps a shm id with its NUL in MAX_SHM_ID_LENGTH (16) bytes.
MAX_SHM_ID = 15
PAGE = 4096


def shared_memories(where: Field, value: object) -> tuple[SharedMemory, ...]:
    fix = (
        'write key = [{ id = "shm0", host = "0x50000000", guest = "0x60000000", size = "16M", '
        'role = "owner" }] (host and role optional)'
    )
    regions = []
    for field, item in _table_items(where, value, fix):
        _check_keys(field, item, ("id", "host", "guest", "size", "role"), ("id", "guest", "size"),
                    fix)  # fmt: skip
        shm_id = text(field("id"), item["id"])
        if not 0 < len(shm_id.encode()) <= MAX_SHM_ID:
            raise field("id").fail(
                f"{_show(shm_id)} is not a usable id", f"give 1 to {MAX_SHM_ID} characters"
            )
        guest = address(field("guest"), item["guest"], fix)
        host = address(field("host"), item["host"], fix) if "host" in item else None
        length = size(field("size"), item["size"])
        for key, number in (("guest", guest), ("host", host), ("size", length)):
            # "not suitably aligned" (static-shmem.c): Xen maps whole pages.
            if number is not None and number % PAGE:
                raise field(key).fail(
                    f"{_show(item[key])} is not a multiple of 4 KiB",
                    "Xen maps whole pages: align it to 4 KiB",
                )
        if not length:
            raise field("size").fail("is zero", 'give the size of the region, like "16M"')
        role = choice(ShmRole)(field("role"), item["role"]) if "role" in item else None
        regions.append(SharedMemory(shm_id, guest, length, host, role))
    return tuple(regions)


# Static event channels are bound before the guest picks its ABI: the 2-level ABI's 4096
# ports (64 x 64 on a 64-bit guest); port 0 is never usable.
MAX_EVTCHN_PORT = 4095


def event_channels(where: Field, value: object) -> tuple[EventChannel, ...]:
    fix = 'write key = [{ port = 10, peer = "guest2", peer_port = 20 }]'
    channels = []
    port = whole_number(1, MAX_EVTCHN_PORT, 10)
    for field, item in _table_items(where, value, fix):
        _check_keys(field, item, ("port", "peer", "peer_port"), ("port", "peer", "peer_port"),
                    fix)  # fmt: skip
        channels.append(
            EventChannel(
                port(field("port"), item["port"]),
                name(field("peer"), item["peer"]),
                port(field("peer_port"), item["peer_port"]),
            )
        )
    return tuple(channels)


def cpu_names(where: Field, value: object) -> tuple[str, ...]:
    fix = 'write key = ["cpu@1", "cpu@2"]: node names under /cpus of [xen] dtb'
    if not isinstance(value, list) or not value:
        raise where.fail(f"expected a non-empty list of node names, got {_type_name(value)}", fix)
    names = []
    for index, item in enumerate(value):
        item_field = Field(where.file, where.section, f"{where.key}[{index}]")
        node = text(item_field, item)
        if not node or "/" in node:
            raise item_field.fail(f"{_show(node)} is not a node name", fix)
        if node in names:
            raise item_field.fail(f"{_show(node)} is listed twice", "list each CPU once")
        names.append(node)
    return tuple(names)


def load_address(where: Field, value: object) -> int:
    """A physical address: a whole number, or a string in hex like "0x40200000"."""
    return address(where, value, 'write it as a number or a hex string, like "0x40200000"')


def sbat_file(where: Field, value: object) -> Path:
    from hlimage.errors import FormatError
    from hlimage.formats import sbat

    path = existing_file(where, value)
    try:
        sbat.section_data(sbat.read(path))
    except FormatError as error:
        # The format's message says what to fix; it only lacks the key and the file.
        raise HlimageError(
            f"{where.section}{where.key}: {path.name}: {error}", where=where.file
        ) from None
    return path


IMAGE_OPTIONS = (
    Option("arch", choice(Arch), "target architecture: x86_64 or arm64", required=True),
    Option(
        "binding", choice(Binding), "how domains reach Xen: auto, classic, dom0less, hyperlaunch"
    ),
    Option("name", name, "short name for menu entry ids and file names (default: xen)"),
    Option("title", text, "menu entry title (default: 'Xen' and the name)"),
)

UBOOT_OPTIONS = (
    Option("scriptaddr", load_address, "the board's scriptaddr, where U-Boot reads boot.scr"),
    Option("reserve", size, "the top of RAM U-Boot keeps for itself (default 64M)"),
    Option("memory_start", load_address, "the lowest address anything is loaded to"),
    Option("memory_end", load_address, "the first address past the RAM things are loaded into"),
)

XEN_OPTIONS = (
    Option("efi", existing_file, "Xen PE image (xen.efi): unified, esp, disk, pxe outputs"),
    Option("multiboot", existing_file, "Xen multiboot2 ELF, plain or gzipped: grub outputs"),
    Option("cmdline", text, "Xen's command line"),
    Option("xsm", existing_file, "FLASK policy"),
    Option("ucode", existing_file, "CPU microcode (x86)"),
    Option("dtb", existing_file, "host device tree (arm64)"),
    Option("sbat", sbat_file, "SBAT data (CSV) for shim: the unified image's .sbat section"),
    Option("static_heap", memory_ranges, "arm64: xen,static-heap address/size pairs"),
    Option("colors", number_list("LLC colours"), "arm64: Xen's own LLC colours, like '0-1'"),
)

DOMAIN_OPTIONS = (
    Option("name", name, "unique name; becomes the device-tree node name", required=True),
    Option("kernel", existing_file, "the domain's kernel", required=True),
    Option("initrd", file_list, "initrd, or a list of parts concatenated with 4-byte padding"),
    Option("initrd_compression", choice(InitrdCompression), "recompress the initrd (lz4)"),
    Option("cmdline", text, "the domain kernel's command line"),
    Option("memory", memory, "memory, like 512M"),
    Option("vcpus", count, "number of virtual CPUs"),
    Option("capabilities", capabilities, "control, hardware, xenstore"),
    Option("mode", choice(Mode), "x86: pv or pvh"),
    Option("vpl011", boolean, "arm64: virtual PL011 UART"),
    Option(
        "enhanced",
        one_of("enabled", "legacy", "disabled", "no-xenstore"),
        "arm64: xen,enhanced (PV interfaces)",
    ),
    Option("passthrough", one_of("enabled", "disabled"), "arm64: IOMMU passthrough setting"),
    Option("passthrough_dtb", existing_file, "arm64: partial device tree for passthrough"),
    Option("static_mem", memory_ranges, "arm64: xen,static-mem address/size pairs"),
    Option("direct_map", boolean, "arm64: direct-map (needs static_mem)"),
    Option("cpupool", name, "arm64: name of the cpupool the domain runs in"),
    Option("colors", number_list("LLC colours"), "arm64: LLC colours, like '0-3,8'"),
    Option("nr_spis", spi_count, "arm64: number of SPIs for the domain"),
    Option("max_grant_version", whole_number(1, 2, 1), "arm64: highest grant table version"),
    Option("max_grant_frames", whole_number(1, INT32_MAX, 64), "arm64: grant table frames"),
    Option("max_maptrack_frames", whole_number(0, INT32_MAX, 1024), "arm64: grant maptrack frames"),
    Option("sve", sve_length, "arm64: SVE vector length in bits (0: off)"),
    Option("shared_mem", shared_memories, "arm64: static shared memory regions"),
    Option("event_channels", event_channels, "arm64: static event channels to other domains"),
    Option("vcpu_affinity", affinities, "arm64: physical CPUs per vCPU, like ['0-1', '3']"),
    Option("trap_unmapped_accesses", boolean, "arm64: trap accesses to unmapped addresses"),
    Option("sci_type", one_of("none", "scmi_smc"), "arm64: Arm SCI (SCMI) for the domain"),
)

CPUPOOL_OPTIONS = (
    Option("name", name, "the pool's name; a domain's cpupool names it", required=True),
    Option("cpus", cpu_names, "node names under /cpus of [xen] dtb", required=True),
    Option(
        "scheduler",
        one_of("credit", "credit2", "rtds", "arinc653", "null"),
        "Xen's scheduler for the pool (default: Xen's own)",
    ),
)

SECTIONS: Mapping[str, Sequence[Option]] = {
    "image": IMAGE_OPTIONS,
    "xen": XEN_OPTIONS,
    "domain": DOMAIN_OPTIONS,
    "cpupool": CPUPOOL_OPTIONS,
    "uboot": UBOOT_OPTIONS,
}


def _did_you_mean(word: str, candidates: Sequence[str], noun: str = "keys") -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    if close:
        return f'did you mean "{close[0]}"?'
    return f"known {noun}: " + ", ".join(candidates)


def _parse_table(
    file: Path, label: str, table: Mapping[str, object], options: Sequence[Option]
) -> dict[str, Any]:
    by_key = {option.key: option for option in options}
    for key in table:
        if key not in by_key:
            raise HlimageError(
                f"{label}{key}: unknown key; {_did_you_mean(key, list(by_key))}", where=file
            )
    values: dict[str, Any] = {}
    for option in options:
        where = Field(file, label, option.key)
        if option.key in table:
            values[option.key] = option.parse(where, table[option.key])
        elif option.required:
            raise where.fail("is missing", f"add {option.key} = ... ({option.help})")
    return values


def load(path: Path) -> System:
    """Read and validate a description file."""
    try:
        exists, is_file = path.exists(), path.is_file()
    except OSError as error:  # a name too long, a directory that cannot be searched
        raise HlimageError(
            f"{error.strerror}; give the path to an hlimage.toml", where=path
        ) from None
    if not exists:
        raise HlimageError("no such description file; give the path to an hlimage.toml", where=path)
    if not is_file:
        raise HlimageError("is not a file; give the path to an hlimage.toml", where=path)
    try:
        raw = path.read_bytes()
        document = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise HlimageError(
            f"not UTF-8 text (byte {error.start}); save the description as UTF-8", where=path
        ) from None
    except tomllib.TOMLDecodeError as error:
        raise HlimageError(
            f"TOML syntax error: {error}; fix the syntax there", where=path
        ) from None
    except OSError as error:
        raise HlimageError(f"cannot read: {error.strerror}", where=path) from None
    return from_document(path.resolve(), document)


def from_document(path: Path, document: Mapping[str, Any]) -> System:
    for key in document:
        if key not in SECTIONS:
            hint = _did_you_mean(key, list(SECTIONS), "sections")
            raise HlimageError(f"[{key}]: unknown section; {hint}", where=path)
    image_table = document.get("image")
    if not isinstance(image_table, dict):
        raise HlimageError(
            '[image] is missing; add [image] with arch = "x86_64" or "arm64"', where=path
        )
    xen_table = document.get("xen", {})
    if not isinstance(xen_table, dict):
        raise HlimageError("[xen] must be a table; write [xen] and its keys below it", where=path)
    domain_tables = document.get("domain")
    if not isinstance(domain_tables, list) or not domain_tables:
        raise HlimageError(
            "[[domain]] is missing; add at least one [[domain]] with name and kernel", where=path
        )

    image = _parse_table(path, "[image] ", image_table, IMAGE_OPTIONS)
    xen = Xen(**_parse_table(path, "[xen] ", xen_table, XEN_OPTIONS))
    uboot_table = document.get("uboot", {})
    if not isinstance(uboot_table, dict):
        raise HlimageError(
            "[uboot] must be a table; write [uboot] and its keys below it", where=path
        )
    uboot = UBoot(**_parse_table(path, "[uboot] ", uboot_table, UBOOT_OPTIONS))
    start, end = uboot.memory_start, uboot.memory_end
    if start is not None and end is not None and end <= start:
        raise HlimageError(
            f"[uboot] memory_end: 0x{end:x} is not above memory_start (0x{start:x}); give the "
            "first address past the load window",
            where=path,
        )

    parsed_domains: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for index, table in enumerate(domain_tables, start=1):
        if not isinstance(table, dict):
            raise HlimageError(f"[[domain]] #{index}: must be a table", where=path)
        raw_name = table.get("name")
        label = (
            f'[[domain]] "{raw_name}" ' if isinstance(raw_name, str) else f"[[domain]] #{index} "
        )
        values = _parse_table(path, label, table, DOMAIN_OPTIONS)
        if values["name"] in seen:
            raise HlimageError(
                f'{label}name: "{values["name"]}" is used by domain #{seen[values["name"]]} too; '
                "give every domain its own name",
                where=path,
            )
        seen[values["name"]] = index
        parsed_domains.append(values)

    pools = _parse_cpupools(path, document.get("cpupool", []))

    # Which domain is dom0: with no capabilities anywhere, the one named dom0 gets all three.
    if not any("capabilities" in values for values in parsed_domains):
        for values in parsed_domains:
            values["capabilities"] = policy.default_capabilities(values["name"])
    domains = tuple(
        Domain(**{**values, "initrd": values.get("initrd", ())}) for values in parsed_domains
    )
    _check_references(path, domains)
    return System(
        source=path,
        arch=image["arch"],
        binding=image.get("binding", Binding.AUTO),
        xen=xen,
        domains=domains,
        name=image.get("name", "xen"),
        title=image.get("title"),
        cpupools=pools,
        uboot=uboot,
    )


def _parse_cpupools(path: Path, tables: object) -> tuple[CpuPool, ...]:
    if not isinstance(tables, list):
        raise HlimageError("[[cpupool]] must be a list of tables; write [[cpupool]]", where=path)
    pools: list[CpuPool] = []
    for index, table in enumerate(tables, start=1):
        if not isinstance(table, dict):
            raise HlimageError(f"[[cpupool]] #{index}: must be a table", where=path)
        raw_name = table.get("name")
        label = (
            f'[[cpupool]] "{raw_name}" ' if isinstance(raw_name, str) else f"[[cpupool]] #{index} "
        )
        values = _parse_table(path, label, table, CPUPOOL_OPTIONS)
        for pool in pools:
            if pool.name == values["name"]:
                raise HlimageError(
                    f'{label}name: "{pool.name}" names another pool too; give every pool its own '
                    "name",
                    where=path,
                )
            shared = sorted(set(pool.cpus) & set(values["cpus"]))
            if shared:
                # "Logical cpu %d already added to a cpupool!" (boot-cpupool.c)
                raise HlimageError(
                    f'{label}cpus: {", ".join(shared)} also in pool "{pool.name}"; Xen panics '
                    '"Logical cpu ... already added to a cpupool!": put each CPU in one pool',
                    where=path,
                )
        pools.append(CpuPool(values["name"], values["cpus"], values.get("scheduler")))
    return tuple(pools)


def _check_references(path: Path, domains: Sequence[Domain]) -> None:
    """What one domain says about another: event channel peers."""
    names = [domain.name for domain in domains]
    for domain in domains:
        for index, channel in enumerate(domain.event_channels):
            key = f'[[domain]] "{domain.name}" event_channels[{index}].peer'
            if channel.peer not in names:
                raise HlimageError(
                    f'{key}: no domain is named "{channel.peer}"; '
                    f"{_did_you_mean(channel.peer, names, 'domains')}",
                    where=path,
                )
            if channel.peer == domain.name:
                raise HlimageError(
                    f"{key}: a static event channel joins two domains; name the other one",
                    where=path,
                )
