"""formats/bls.py: what systemd-boot reads, written so that its parser (boot.c
line_get_key_value: key up to the first separator, value to the line's end, surrounding double
quotes stripped, nothing unescaped) gets back exactly the values given; and xen/chainload.py's
choices."""

from __future__ import annotations

import pytest

from hlimage.errors import FormatError
from hlimage.formats import bls, pe
from hlimage.xen import chainload


def systemd_boot_read(text: str, separator: str) -> dict[str, str]:
    """A transcription of systemd-boot 252's line_get_key_value, for the tests."""
    found = {}
    for raw in text.splitlines():
        line = raw.strip(" \t")
        if not line or line.startswith("#"):
            continue
        cut = next((i for i, char in enumerate(line) if char in separator), None)
        if cut is None:
            continue
        key, value = line[:cut], line[cut:].lstrip(separator)
        if value.startswith('"') and line.endswith('"'):
            value = value[1:-1]
        found[key] = value
    return found


def test_os_release_round_trips_through_systemd_boots_reader() -> None:
    fields = [("NAME", "Xen"), ("ID", "xen"), ("PRETTY_NAME", "Xen with Linux 6.12 (lab)"),
              ("VERSION_ID", "4.17")]  # fmt: skip
    text = bls.os_release(fields).decode()
    assert 'PRETTY_NAME="Xen with Linux 6.12 (lab)"\n' in text and "ID=xen\n" in text
    assert systemd_boot_read(text, "=") == dict(fields)


@pytest.mark.parametrize("value", ['say "hi"', "back\\slash", "$HOME", "`x`", "two\nlines", " x"])
def test_os_release_refuses_what_it_cannot_say(value: str) -> None:
    with pytest.raises(FormatError):
        bls.os_release([("PRETTY_NAME", value)])


def test_entry_keeps_its_values_and_comments() -> None:
    fields = [("title", 'Xen "lab" (xen)'), ("efi", "/EFI/xen/xen.efi"),
              ("options", "xen.efi xen")]  # fmt: skip
    text = bls.key_value_file(fields, ["first", "", "second"]).decode()
    assert text.startswith("# first\n#\n# second\n")
    assert systemd_boot_read(text, " \t") == dict(fields)
    with pytest.raises(FormatError):
        bls.key_value_file([("options", "a\nb")])
    with pytest.raises(FormatError):
        bls.efi_path("EFI\\xen\\xen.efi")
    assert bls.efi_path("EFI/xen/xen.efi") == "/EFI/xen/xen.efi"


def xen_get_argv(options: str) -> tuple[str, list[str], str | None]:
    """A transcription of Xen's get_argv and efi_start for a plain command line: (image
    name, the section words and loader options, what follows "--")."""
    words = options.split()
    if "--" in words:
        at = words.index("--")
        return words[0], words[1:at], " ".join(words[at + 1 :])
    return words[0], words[1:], None


def test_the_load_options_say_the_section_and_nothing_else() -> None:
    class Described:
        name = "lab"

    name, rest, extra = xen_get_argv(chainload.load_options(Described()))  # type: ignore[arg-type]
    assert (name, rest, extra) == ("xen.efi", ["lab"], None)


def test_only_reloc_loses_discardable() -> None:
    class Header:
        def __init__(self, flags: int) -> None:
            self.Characteristics = flags

    flags = pe.READONLY_DATA | pe.SCN_MEM_DISCARDABLE
    reloc = pe.Section(".reloc", Header(flags))
    other = pe.Section(".debug_x", Header(flags))
    assert chainload.loaded_characteristics(reloc) == pe.READONLY_DATA
    assert chainload.loaded_characteristics(other) == flags
