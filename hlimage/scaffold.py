"""`hlimage init`: start from one of the commented descriptions shipped in the package.

The templates live in `hlimage/templates/` (package data, so that they install with the wheel;
the repository's top-level `templates/` is a symlink to it). Each starts with a summary line and
a `# Builds:` line naming the formats it builds with the files it names; the tests build every
one of them against the test payloads.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path

from hlimage.errors import HlimageError

SUFFIX = ".toml"
DESCRIPTION_NAME = "hlimage.toml"
_PARENTHESES = re.compile(r"\([^)]*\)")
XEN_FILE_KEYS = ("efi", "multiboot", "xsm", "ucode", "dtb", "sbat")
DOMAIN_FILE_KEYS = ("kernel", "initrd", "passthrough_dtb")


@dataclass(frozen=True)
class Template:
    name: str
    text: str

    @property
    def summary(self) -> str:
        first = self.text.splitlines()[0] if self.text else ""
        return first.lstrip("#").strip()

    @property
    def builds(self) -> tuple[str, ...]:
        """The formats (and `lcm`) of the `# Builds:` line, parenthesised remarks left out."""
        for line in self.text.splitlines():
            if line.startswith("# Builds:"):
                listed = _PARENTHESES.sub("", line.removeprefix("# Builds:"))
                words = (word.strip(" .") for word in re.split(r"[,;]", listed))
                return tuple(word for word in words if word)
        return ()

    def files(self) -> list[str]:
        """The file names the description gives, in order, each once."""
        document = tomllib.loads(self.text)
        names: list[str] = []
        tables: list[tuple[dict[str, object], tuple[str, ...]]]
        tables = [(document.get("xen", {}), XEN_FILE_KEYS)]
        tables += [(domain, DOMAIN_FILE_KEYS) for domain in document.get("domain", [])]
        for table, keys in tables:
            for key in keys:
                value = table.get(key)
                for name in value if isinstance(value, list) else [value]:
                    if isinstance(name, str) and name not in names:
                        names.append(name)
        return names


def _directory() -> Traversable:
    return resources.files("hlimage").joinpath("templates")


def templates() -> list[Template]:
    found = [
        Template(entry.name.removesuffix(SUFFIX), entry.read_text(encoding="utf-8"))
        for entry in _directory().iterdir()
        if entry.name.endswith(SUFFIX) and entry.is_file()
    ]
    return sorted(found, key=lambda template: template.name)


def find(name: str) -> Template:
    known = templates()
    for template in known:
        if name in (template.name, template.name + SUFFIX):
            return template
    names = ", ".join(template.name for template in known)
    raise HlimageError(
        f'init: no template "{name}"; choose one of {names} (`hlimage init` lists them)'
    )


@dataclass(frozen=True)
class Written:
    path: Path
    template: Template
    missing: list[str]
    """File names the description gives that are not beside it yet."""


def init(name: str, directory: Path, *, force: bool = False) -> Written:
    from hlimage.plumbing.atomic import atomic_file

    template = find(name)
    if directory.exists() and not directory.is_dir():
        raise HlimageError(
            "init: is not a directory; name a directory to write into", where=directory
        )
    target = directory / DESCRIPTION_NAME
    if target.is_dir():
        raise HlimageError(
            "init: is a directory; remove it or choose another DIRECTORY", where=target
        )
    if target.exists() and not force:
        raise HlimageError(
            "init: already exists; pass --force to overwrite it, or choose another DIRECTORY",
            where=target,
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise HlimageError(f"init: cannot create: {error.strerror}", where=directory) from None
    with atomic_file(target) as out:
        out.write(template.text.encode("utf-8"))
    missing = [file for file in template.files() if not (directory / file).exists()]
    return Written(target, template, missing)
