"""The text files systemd-boot reads: os-release data (a unified image's `.osrel`), Boot Loader
Specification Type #1 entries (`loader/entries/*.conf`) and `loader/loader.conf`.

What systemd-boot 252 accepts (src/boot/efi/boot.c): one `key value` per line, the key up to
the first space or tab and the value the rest of the line; lines starting with `#` are
comments. os-release is `KEY=value` with the value optionally in double quotes. Values cannot
hold a line break, so every value is checked here rather than written broken.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from hlimage.errors import FormatError

# os-release(5): a value needing no quotes; anything else goes in double quotes. systemd-boot
# strips the quotes and undoes no escapes, so what would need one is refused.
_BARE = re.compile(r"[A-Za-z0-9._+:/-]+")
_UNQUOTABLE = '"\\$`'


def _line_value(key: str, value: str) -> str:
    if any(ord(char) < 32 or ord(char) == 127 for char in value):
        raise FormatError(f"{key}: {value!r} holds a control character or line break")
    if value != value.strip():
        raise FormatError(f"{key}: {value!r} starts or ends with a space, which is lost")
    return value


def os_release(fields: Sequence[tuple[str, str]]) -> bytes:
    """os-release text of (KEY, value) pairs, in order."""
    lines = []
    for key, value in fields:
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key):
            raise FormatError(f"{key!r} is not an os-release key (capitals, digits, '_')")
        _line_value(key, value)
        bad = next((char for char in value if char in _UNQUOTABLE), None)
        if bad is not None:
            raise FormatError(f"{key}: {value!r} holds {bad!r}, which os-release cannot quote")
        if not _BARE.fullmatch(value):
            value = f'"{value}"'
        lines.append(f"{key}={value}\n")
    return "".join(lines).encode("utf-8")


def key_value_file(fields: Sequence[tuple[str, str]], comments: Sequence[str] = ()) -> bytes:
    """A Type #1 entry or loader.conf: `# comment` lines, then `key value` lines in order."""
    lines = [f"# {comment}\n".replace("# \n", "#\n") for comment in comments]
    for key, value in fields:
        if not re.fullmatch(r"[a-z][a-z0-9-]*", key):
            raise FormatError(f"{key!r} is not a boot loader entry key")
        lines.append(f"{key} {_line_value(key, value)}\n")
    return "".join(lines).encode("utf-8")


def efi_path(path: str) -> str:
    """An ESP path as an entry names it: from the ESP's root, '/' separators."""
    if "\\" in path or " " in path:
        raise FormatError(f"{path!r}: an entry's path has no backslashes or spaces")
    return "/" + path.lstrip("/")
