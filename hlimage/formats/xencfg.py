"""Xen's EFI configuration file (xen.cfg), written and read by the grammar of
xen/common/efi/boot.c: ASCII only, `key=value` with no space before `=`, `#` starts a comment
anywhere, `;` at the start of a line, `[section]` headers, the first match wins."""

from __future__ import annotations

from dataclasses import dataclass, field


def value_problem(value: str) -> str | None:
    """Why Xen would misread `value` on a cfg line, or None when it reads it whole."""
    for index, char in enumerate(value):
        if ord(char) > 0x7E:
            return f"non-ASCII character {char!r} at position {index + 1} (xen.cfg is ASCII only)"
        if ord(char) < 0x20:
            return f"control character {char!r} at position {index + 1} (it would end the line)"
        if char == "#":
            return f"'#' at position {index + 1} (xen.cfg starts a comment there)"
    return None


@dataclass
class XenConfig:
    default: str
    sections: dict[str, dict[str, str]] = field(default_factory=dict)
    global_options: dict[str, str] = field(default_factory=dict)

    def render(self) -> str:
        lines = ["[global]", f"default={self.default}"]
        lines += [f"{key}={value}" for key, value in self.global_options.items()]
        for name, options in self.sections.items():
            lines += ["", f"[{name}]"]
            lines += [f"{key}={value}" for key, value in options.items()]
        text = "\n".join(lines) + "\n"
        for line in lines:
            problem = value_problem(line)
            if problem:
                raise ValueError(f"xen.cfg line {line!r}: {problem}")
        return text

    def encode(self) -> bytes:
        return self.render().encode("ascii")


def parse(text: str) -> dict[str, dict[str, str]]:
    """Sections to their keys, reading as Xen does: the first value of a key in a section wins.
    Keys before any section header are in section ''."""
    sections: dict[str, dict[str, str]] = {"": {}}
    current = ""
    for raw in text.replace("\r", "\n").split("\n"):
        line = raw.lstrip(" \t")
        if not line or line.startswith(";"):
            continue
        line = line.split("#", 1)[0]
        if line.startswith("["):
            end = line.find("]")
            if end > 0:
                current = line[1:end]
                sections.setdefault(current, {})
            continue
        key, equals, value = line.partition("=")
        if not equals or not key or key != key.rstrip():
            continue
        sections[current].setdefault(key, value.lstrip(" ").rstrip(" \t"))
    if not sections[""]:
        del sections[""]
    return sections


def split_kernel_line(value: str) -> tuple[str, str]:
    """`kernel=NAME ARGS`: the file name and the dom0 command line."""
    name, _, args = value.strip().partition(" ")
    return name, args.strip()
