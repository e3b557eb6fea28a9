"""SBAT data as shim reads it, the one-pass digests of the manifest, signing-key loading."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import authenticode, pe, sbat
from hlimage.secureboot import trust
from tests.conftest import require
from tests.support import payloads

HEADER = b"sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md"
XEN = b"xen,1,Xen Project,xen,4.17,https://xenproject.org/"
GRUB = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")
SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")


@pytest.mark.parametrize(
    ("data", "section"),
    [
        (HEADER + b"\n" + XEN + b"\n", HEADER + b"\n" + XEN + b"\n"),
        (HEADER + b"\r\n" + XEN + b"\r\n", HEADER + b"\r\n" + XEN + b"\r\n"),
        # shim overwrites the byte after a line with NUL: the last line gets its line end.
        (HEADER + b"\n" + XEN, HEADER + b"\n" + XEN + b"\n"),
        # Comments and blank lines (even of spaces, which shim would take as an entry) go.
        (b"# about\n" + HEADER + b"\n\n   \n# " + XEN + b"\n", HEADER + b"\n"),
        # Fields may be empty; six of them are what counts.
        (HEADER + b"\nx,1,,,,\n", HEADER + b"\nx,1,,,,\n"),
    ],
    ids=["lf", "crlf", "no-final-newline", "comments", "empty-fields"],
)
def test_sbat_section_data(data: bytes, section: bytes) -> None:
    assert sbat.section_data(data) == section


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (XEN + b"\n", 'line 1 is the first entry and does not start with "sbat,"'),
        (b"\n# c\n" + XEN + b"\n", 'line 3 is the first entry and does not start with "sbat,"'),
        (HEADER + b"\nxen,1\n", "line 2 has 2 comma-separated fields, shim needs at least 6"),
        (HEADER + b"\nxen,1,a\tb,c\x07,d,e\n", r"byte \d+ is a control character \(0x07\)"),
        (HEADER + "\nxén,1,a,b,c,d\n".encode(), r"byte \d+ is not ASCII"),
        (b"", "has no entries"),
    ],
    ids=["no-header", "no-header-after-comments", "short", "control", "utf-8", "empty"],
)
def test_sbat_refused(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        sbat.section_data(data)


def test_sbat_template_is_valid() -> None:
    template = Path(__file__).resolve().parents[2] / "uefi" / "sbat.csv"
    assert sbat.section_data(template.read_bytes()) == HEADER + b"\n"
    # Its example line, uncommented, is a valid entry too.
    uncommented = template.read_bytes().replace(b"# xen,", b"xen,")
    assert sbat.section_data(uncommented).splitlines()[-1].startswith(b"xen,1,")


@pytest.mark.parametrize("source", ["xen", "grub"])
def test_file_digests_in_one_pass(source: str) -> None:
    """Equal to a plain sha256 and to authenticode.image_digest, with extra data after the
    sections (Debian's xen.efi) or without."""
    path = payloads.path("x86_64/xen.efi") if source == "xen" else GRUB
    require(path.exists(), f"{path} is missing")
    with path.open("rb") as stream:
        image = pe.parse(stream)
        whole, image_hash = trust.file_digests(stream, image)
        assert image_hash == authenticode.image_digest(stream, image).hex()
    assert whole == hashlib.sha256(path.read_bytes()).hexdigest()


def test_signing_key_passphrase_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require(SNAKEOIL_KEY.is_file(), f"{SNAKEOIL_KEY} is missing (Debian: ovmf)")
    monkeypatch.delenv(trust.PASSWORD_ENV, raising=False)
    with pytest.raises(HlimageError, match="--key-password-file FILE or in the HLIMAGE_KEY"):
        trust.load_signing_key(SNAKEOIL_KEY, SNAKEOIL_CERT)
    monkeypatch.setenv(trust.PASSWORD_ENV, "snakeoil")
    assert trust.load_signing_key(SNAKEOIL_KEY, SNAKEOIL_CERT).password == b"snakeoil"
    # A file wins over the environment; its one final line end is not part of the passphrase.
    monkeypatch.setenv(trust.PASSWORD_ENV, "wrong")
    for text in (b"snakeoil", b"snakeoil\n", b"snakeoil\r\n"):
        (password := tmp_path / "password").write_bytes(text)
        key = trust.load_signing_key(SNAKEOIL_KEY, SNAKEOIL_CERT, password)
        assert key.password == b"snakeoil"
    with pytest.raises(HlimageError, match="wrong passphrase"):
        trust.load_signing_key(SNAKEOIL_KEY, SNAKEOIL_CERT)
