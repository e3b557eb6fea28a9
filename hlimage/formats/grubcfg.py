"""GRUB script text: quoting words and writing menu entries (grub-script-check accepts it)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

# Characters GRUB's lexer treats as plain word characters; anything else is quoted.
_PLAIN = re.compile(r"^[A-Za-z0-9_./:,=+@%^()\[\]-]+$")


def quote(word: str) -> str:
    """One GRUB script word: bare when safe, else single-quoted ('\\'' for a quote)."""
    if word and _PLAIN.match(word):
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def words(text: str) -> str:
    """A command line as GRUB words: GRUB joins its arguments with single spaces again."""
    return " ".join(quote(word) for word in text.split())


@dataclass
class MenuEntry:
    title: str
    entry_id: str
    lines: list[str] = field(default_factory=list)

    def render(self) -> str:
        body = "".join(f"\t{line}\n" if line else "\n" for line in self.lines)
        return f"menuentry {quote(self.title)} --id {quote(self.entry_id)} {{\n{body}}}\n"


def render(entries: Sequence[MenuEntry], *, header: Sequence[str] = ()) -> str:
    parts = [line + "\n" for line in header]
    if header:
        parts.append("\n")
    parts += [entry.render() for entry in entries]
    return "".join(parts)
