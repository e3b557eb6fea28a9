"""SBAT: the CSV that shim and systemd-boot read from a `.sbat` section to revoke by generation.

What shim accepts (its csv.c and sbat.c): lines split on CR or LF, fields on commas, no quoting
and no comments, and every non-empty line at least six fields (component, generation, vendor,
package, version, URL); a shorter line makes it refuse the whole image. The first entry names
the SBAT format itself: `sbat,1,...`.

hlimage lets the file carry `#` comment lines (the template in uefi/ has one) and leaves them
out of the section, since shim would read a comment as a short entry and refuse the image.
"""

from __future__ import annotations

from pathlib import Path

from hlimage.errors import FormatError

# Real SBAT data is a few hundred bytes; a bound keeps a wrong path from being read whole.
MAX_SIZE = 64 << 10
FIELDS = 6
HEADER = "sbat,"


def read(path: Path) -> bytes:
    """The file's bytes, or FormatError if it is too large to be SBAT data."""
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_SIZE + 1)
    except OSError as error:
        raise FormatError(f"cannot read {path.name}: {error.strerror}") from None
    if len(data) > MAX_SIZE:
        raise FormatError(f"{path.name} is over {MAX_SIZE >> 10} KiB, too large for SBAT data")
    return data


def section_data(data: bytes) -> bytes:
    """What goes into `.sbat`: the lines that are neither comments nor blank, ending in a
    newline.

    FormatError names the first line shim would refuse (numbered as in the file).
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise FormatError(
            f"byte {error.start} is not ASCII; SBAT data is plain ASCII CSV"
        ) from None
    control = next(
        (i for i, char in enumerate(text) if ord(char) < 32 and char not in "\t\r\n"), None
    )
    if control is not None:
        raise FormatError(
            f"byte {control} is a control character (0x{ord(text[control]):02x}); SBAT data is "
            "plain ASCII CSV"
        )
    kept: list[str] = []
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        content = line.rstrip("\r\n")
        # Blank lines go too: shim skips empty ones but reads one of spaces as a short entry.
        if not content.strip() or content.lstrip().startswith("#"):
            continue
        if not kept and not content.startswith(HEADER):
            raise FormatError(
                f'line {number} is the first entry and does not start with "{HEADER}"; '
                "begin with the line "
                "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
            )
        fields = content.split(",")
        if len(fields) < FIELDS:
            raise FormatError(
                f"line {number} has {len(fields)} comma-separated fields, shim needs at "
                "least 6 (component,generation,vendor,package,version,url)"
            )
        kept.append(line)
    if not kept:
        raise FormatError(f'has no entries; the first line must start with "{HEADER}"')
    result = "".join(kept)
    # shim ends each line by writing a NUL over the byte after it, which for a last line
    # without a line end at the very end of the section is its last character.
    if not result.endswith(("\n", "\r")):
        result += "\n"
    return result.encode("ascii")
