"""`hlimage.toml` to the model. Every key is declared once in an option table (the shape of
ukify's CONFIG_ITEMS); every error names the file and the key and says what to do."""

from __future__ import annotations

import difflib
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
    Domain,
    InitrdCompression,
    MemoryRange,
    Mode,
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


def address(where: Field, value: object) -> int:
    """A physical address: a whole number, or a string in hex like "0x40200000"."""
    fix = 'write it as a number or a hex string, like "0x40200000"'
    parsed = value
    if isinstance(value, str):
        try:
            parsed = int(value, 0)
        except ValueError:
            raise where.fail(f"{_show(value)} is not an address", fix) from None
    if isinstance(parsed, bool) or not isinstance(parsed, int) or not 0 <= parsed < 1 << 64:
        raise where.fail(f"{_show(value)} is not an address", fix)
    return parsed


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
    Option("scriptaddr", address, "the board's scriptaddr, where U-Boot reads boot.scr"),
    Option("reserve", size, "the top of RAM U-Boot keeps for itself (default 64M)"),
    Option("memory_start", address, "the lowest address anything is loaded to"),
    Option("memory_end", address, "the first address past the RAM things are loaded into"),
)

XEN_OPTIONS = (
    Option("efi", existing_file, "Xen PE image (xen.efi): unified, esp, disk, pxe outputs"),
    Option("multiboot", existing_file, "Xen multiboot2 ELF, plain or gzipped: grub outputs"),
    Option("cmdline", text, "Xen's command line"),
    Option("xsm", existing_file, "FLASK policy"),
    Option("ucode", existing_file, "CPU microcode (x86)"),
    Option("dtb", existing_file, "host device tree (arm64)"),
    Option("sbat", sbat_file, "SBAT data (CSV) for shim: the unified image's .sbat section"),
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
    Option("colors", text, "arm64: LLC colours, like '0-3,8'"),
    Option("nr_spis", spi_count, "arm64: number of SPIs for the domain"),
)

SECTIONS: Mapping[str, Sequence[Option]] = {
    "image": IMAGE_OPTIONS,
    "xen": XEN_OPTIONS,
    "domain": DOMAIN_OPTIONS,
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
            hint = _did_you_mean(key, ["image", "xen", "domain", "uboot"], "sections")
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

    # Which domain is dom0: with no capabilities anywhere, the one named dom0 gets all three.
    if not any("capabilities" in values for values in parsed_domains):
        for values in parsed_domains:
            values["capabilities"] = policy.default_capabilities(values["name"])
    domains = tuple(
        Domain(**{**values, "initrd": values.get("initrd", ())}) for values in parsed_domains
    )
    return System(
        source=path,
        arch=image["arch"],
        binding=image.get("binding", Binding.AUTO),
        xen=xen,
        domains=domains,
        name=image.get("name", "xen"),
        title=image.get("title"),
        uboot=uboot,
    )
