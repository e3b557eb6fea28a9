"""TOML text for an imported description: tables of keys, each with a comment saying where its
value came from, so that the user can check the import line by line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

Value = str | int | bool | Sequence["Value"] | Mapping[str, "Value"]

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f",
            "\r": "\\r"}  # fmt: skip


def string(text: str) -> str:
    out = []
    for char in text:
        if char in _ESCAPES:
            out.append(_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04X}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def value(item: Value) -> str:
    if isinstance(item, bool):
        return "true" if item else "false"
    if isinstance(item, int):
        return str(item)
    if isinstance(item, str):
        return string(item)
    if isinstance(item, Mapping):
        pairs = ", ".join(f"{key} = {value(inner)}" for key, inner in item.items())
        return "{ " + pairs + " }" if pairs else "{}"
    return "[" + ", ".join(value(inner) for inner in item) + "]"


ALIGN = 40


@dataclass
class Table:
    """`[name]`, or `[[name]]` when `array`; its keys in the order they were added."""

    name: str
    array: bool = False
    comment: str = ""
    entries: list[tuple[str, Value, str]] = field(default_factory=list)

    def add(self, key: str, item: Value, comment: str = "") -> None:
        self.entries.append((key, item, comment))

    def render(self) -> str:
        header = f"[[{self.name}]]" if self.array else f"[{self.name}]"
        lines = [f"{header}  # {self.comment}" if self.comment else header]
        rendered = [(f"{key} = {value(item)}", comment) for key, item, comment in self.entries]
        # Comments line up in a column, except after a value too long for it (a command line).
        short = [len(text) for text, comment in rendered if comment and len(text) <= ALIGN]
        width = max(short, default=0)
        for text, comment in rendered:
            lines.append(f"{text:<{width}}  # {comment}" if comment else text)
        return "\n".join(lines) + "\n"


def document(preamble: Sequence[str], tables: Sequence[Table]) -> str:
    head = "".join(f"# {line}\n" if line else "#\n" for line in preamble)
    return head + "".join("\n" + table.render() for table in tables)
