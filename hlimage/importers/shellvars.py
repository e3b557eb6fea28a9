"""Shell variable assignments, read as data: what a file of `VAR=value` lines sets, without
running it.

Tools such as Xen's ImageBuilder `source` their configuration, so a config may use what bash
gives an assignment: `VAR=value`, `VAR="value"`, `VAR='value'`, array elements
(`VAR[0]=...`, `VAR[0,1]=...` for an associative array), whole arrays (`VAR=(a b)`), `+=`,
comments, several assignments on a line, quoted values over several lines, and `$VAR` or
`${VAR[0]}` of a variable the file set before. Anything that would run something (a command,
`$(...)`, backquotes, redirections) or read the environment (`$HOME`, `~`) is refused with the
line it is on, since the file's meaning would then depend on what is not in it. A later
assignment wins, as in a shell.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from hlimage.errors import HlimageError

_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_HEAD = re.compile(rf"({_NAME})(?:\[([^\]\n]*)\])?(\+?)=")
_INDEX = re.compile(r"^\s*(\d+)\s*(?:,\s*(\d+)\s*)?$")
_WORD_END = " \t\n;"
_METACHARACTERS = "|&<>()"
# Bash's own special parameters ($1, $@, $?, ...): never something the file set.
_SPECIAL = "0123456789@*#?-$!"


@dataclass(frozen=True)
class Entry:
    """One element's value, where it was set, and how it was written (`DOMU_KERNEL[0]`)."""

    value: str
    line: int
    written: str


@dataclass
class Variables:
    """What the file set: each variable's elements by index ("0" for a plain VAR=value, as
    in bash, where VAR and VAR[0] are the same element), and which variables the file's
    own `$VAR` expansions used."""

    path: Path
    elements: dict[str, dict[str, Entry]] = field(default_factory=dict)
    referenced: set[str] = field(default_factory=set)

    def get(self, name: str, index: str = "0") -> Entry | None:
        return self.elements.get(name, {}).get(index)

    def indices(self, name: str) -> list[str]:
        return list(self.elements.get(name, {}))

    def names(self) -> list[str]:
        return list(self.elements)


def _index_key(raw: str) -> str | None:
    """'0' -> '0', ' 1 , 2 ' -> '1,2'; None for what bash would evaluate (i+1, $i)."""
    match = _INDEX.match(raw)
    if not match:
        return None
    first = str(int(match.group(1)))
    return first if match.group(2) is None else f"{first},{int(match.group(2))}"


class _Reader:
    def __init__(self, text: str, path: Path) -> None:
        self.text = text
        self.path = path
        self.position = 0
        self.line = 1
        self.variables = Variables(path)

    # --- errors -----------------------------------------------------------------------------

    def fail(self, subject: str, problem: str, fix: str, line: int | None = None) -> HlimageError:
        where = f"{self.path}:{line if line is not None else self.line}"
        return HlimageError(f"{subject}: {problem}; {fix}", where=where)

    def _statement_text(self) -> str:
        end = self.text.find("\n", self.position)
        shown = self.text[self.position : end if end >= 0 else len(self.text)].strip()
        return shown if len(shown) <= 40 else shown[:37] + "..."

    # --- characters -------------------------------------------------------------------------

    def peek(self, offset: int = 0) -> str:
        index = self.position + offset
        return self.text[index] if index < len(self.text) else ""

    def advance(self, count: int = 1) -> str:
        taken = self.text[self.position : self.position + count]
        self.line += taken.count("\n")
        self.position += count
        return taken

    def at_end(self) -> bool:
        return self.position >= len(self.text)

    # --- statements -------------------------------------------------------------------------

    def read(self) -> Variables:
        while not self.at_end():
            char = self.peek()
            if char in " \t;\n":
                self.advance()
            elif char == "\\" and self.peek(1) == "\n":
                self.advance(2)
            elif char == "#":
                while not self.at_end() and self.peek() != "\n":
                    self.advance()
            else:
                self.assignment()
        return self.variables

    def assignment(self) -> None:
        start_line = self.line
        match = _HEAD.match(self.text, self.position)
        if not match:
            statement = self._statement_text()
            raise self.fail(
                f'"{statement}"',
                "not an assignment (VAR=value)",
                "the importer reads variable assignments only and never runs the file: "
                "remove the line or write its result as VAR=value",
            )
        name, raw_index, append = match.group(1), match.group(2), bool(match.group(3))
        written = name if raw_index is None else f"{name}[{raw_index}]"
        index = "0" if raw_index is None else _index_key(raw_index)
        if index is None:
            raise self.fail(
                written,
                f"the index [{raw_index}] is not a number",
                "write the element's number, like DOMU_KERNEL[1]=... (or [1,0] for "
                "DOMU_VCPU_HARD_AFFINITY)",
            )
        self.advance(match.end() - self.position)
        if self.peek() == "(":
            if raw_index is not None:
                raise self.fail(
                    written,
                    "an array cannot be an element of another array",
                    f"write {name}=(...) or {written}=value",
                )
            self.advance()
            values = self.array_words(written)
            self.set_array(name, values, start_line, append)
        else:
            value = self.word(written)
            self.set_element(name, index, value, start_line, written, append)
        after = self.peek()
        if after and after not in _WORD_END:
            raise self.fail(written, f"unexpected {after!r} after the value", "quote the value")

    def set_element(
        self, name: str, index: str, value: str, line: int, written: str, append: bool
    ) -> None:
        elements = self.variables.elements.setdefault(name, {})
        if append and index in elements:
            value = elements[index].value + value
        # A later assignment wins, but the element keeps its place in the order first set.
        elements[index] = Entry(value, line, written)

    def set_array(self, name: str, values: list[str], line: int, append: bool) -> None:
        elements = self.variables.elements.setdefault(name, {})
        if not append:
            elements.clear()
        numbers = [int(key) for key in elements if key.isdigit()]
        first = max(numbers) + 1 if append and numbers else 0
        for offset, value in enumerate(values):
            index = str(first + offset)
            elements[index] = Entry(value, line, f"{name}[{index}]")

    def array_words(self, written: str) -> list[str]:
        values: list[str] = []
        while True:
            if self.at_end():
                raise self.fail(written, "the ( of the array is never closed", "add the )")
            char = self.peek()
            if char in " \t\n":
                self.advance()
            elif char == "#":
                while not self.at_end() and self.peek() != "\n":
                    self.advance()
            elif char == ")":
                self.advance()
                return values
            elif char == "[":
                raise self.fail(
                    written,
                    "an element with its own [N]= inside (...)",
                    f"set such elements one by one: {written}[N]=value",
                )
            else:
                values.append(self.word(written, in_array=True))

    # --- words ------------------------------------------------------------------------------

    def word(self, written: str, *, in_array: bool = False) -> str:
        parts: list[str] = []
        first = True
        while not self.at_end():
            char = self.peek()
            if char in _WORD_END or (in_array and char == ")"):
                break
            if char == "'":
                parts.append(self.single_quoted(written))
            elif char == '"':
                parts.append(self.double_quoted(written))
            elif char == "\\":
                self.advance()
                if self.peek() == "\n":
                    self.advance()  # a continued line: nothing
                elif not self.at_end():
                    parts.append(self.advance())
            elif char == "$":
                parts.append(self.expansion(written))
            elif char == "`":
                raise self.command_substitution(written)
            elif char in _METACHARACTERS:
                raise self.fail(
                    written,
                    f"{char!r} in the value would make the shell run something",
                    "quote the value, or write what it stands for",
                )
            elif char == "~" and first:
                raise self.fail(
                    written,
                    "~ stands for a home directory, which the file does not say",
                    "write the path out",
                )
            else:
                parts.append(self.advance())
            first = False
        return "".join(parts)

    def single_quoted(self, written: str) -> str:
        line = self.line
        self.advance()
        end = self.text.find("'", self.position)
        if end < 0:
            raise self.fail(written, "the ' is never closed", "close the quote", line)
        return self.advance(end - self.position + 1)[:-1]

    def double_quoted(self, written: str) -> str:
        line = self.line
        self.advance()
        parts: list[str] = []
        while True:
            if self.at_end():
                raise self.fail(written, 'the " is never closed', "close the quote", line)
            char = self.peek()
            if char == '"':
                self.advance()
                return "".join(parts)
            if char == "\\":
                following = self.peek(1)
                if following == "\n":
                    self.advance(2)
                elif following in '$`"\\':
                    self.advance()
                    parts.append(self.advance())
                else:
                    parts.append(self.advance())
            elif char == "$":
                parts.append(self.expansion(written))
            elif char == "`":
                raise self.command_substitution(written)
            else:
                parts.append(self.advance())

    def command_substitution(self, written: str) -> HlimageError:
        return self.fail(
            written,
            "a command substitution runs a command",
            "write its output into the file instead",
        )

    def expansion(self, written: str) -> str:
        self.advance()  # the $
        char = self.peek()
        if char == "(":
            raise self.command_substitution(written)
        if char in "'\"":
            raise self.fail(
                written,
                f"${char}...{char} is bash's own quoting, which the importer does not read",
                f"write the value in plain {char}...{char} quotes",
            )
        if char == "{":
            self.advance()
            end = self.text.find("}", self.position)
            if end < 0:
                raise self.fail(written, "the ${ is never closed", "add the }")
            inner = self.advance(end - self.position + 1)[:-1]
            match = re.fullmatch(rf"({_NAME})(?:\[([^\]]*)\])?", inner)
            if not match:
                raise self.fail(
                    written,
                    f"${{{inner}}} is a shell expansion the importer does not evaluate",
                    "use $NAME or ${NAME[N]} of a variable set above, or write the value",
                )
            name, raw_index = match.group(1), match.group(2)
            index = "0" if raw_index is None else _index_key(raw_index)
            if index is None:
                raise self.fail(
                    written,
                    f"${{{inner}}}: the index is not a number",
                    "write ${NAME[N]} with a number",
                )
            return self.lookup(written, name, index, inner)
        match = re.compile(_NAME).match(self.text, self.position)
        if match:
            self.advance(match.end() - self.position)
            return self.lookup(written, match.group(0), "0", match.group(0))
        if char and char in _SPECIAL:
            raise self.fail(
                written,
                f"${char} is one of the shell's own parameters, not in the file",
                "write the value",
            )
        return "$"  # a lone $, as the shell leaves it

    def lookup(self, written: str, name: str, index: str, shown: str) -> str:
        entry = self.variables.get(name, index)
        if entry is None:
            raise self.fail(
                written,
                f"${shown} is not set earlier in this file (the environment does not count)",
                "set it above this line, or write the value",
            )
        self.variables.referenced.add(name)
        return entry.value


def read_text(text: str, path: Path) -> Variables:
    """What `text` (the file at `path`, for errors) sets."""
    return _Reader(text, path).read()


def read(path: Path) -> Variables:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise HlimageError("no such file; give the path to the config", where=path) from None
    except IsADirectoryError:
        raise HlimageError("is a directory; give the path to the config file", where=path) from None
    except OSError as error:
        raise HlimageError(f"cannot read: {error.strerror}", where=path) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HlimageError(
            f"not UTF-8 text (byte {error.start}); save the config as UTF-8", where=path
        ) from None
    if "\0" in text:
        raise HlimageError("holds a NUL byte: not a text file; give the config", where=path)
    return read_text(text.replace("\r\n", "\n"), path)
