"""Authenticode signing against the reference tools: sbsign's hash, sbverify's verdict."""

from __future__ import annotations

import contextlib
import datetime
import functools
import io
import shutil
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import cryptography
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import authenticode, der, pe
from hlimage.formats.payload import CHUNK, BytesPayload
from hlimage.secureboot import sign
from tests.conftest import require
from tests.support import payloads

SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
SNAKEOIL_PASSWORD = b"snakeoil"
GRUB = Path("/usr/lib/grub/x86_64-efi/monolithic/grubx64.efi")
SHIM_FALLBACK = Path("/usr/lib/shim/fbx64.efi")
XEN = payloads.path("x86_64/xen.efi")
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

CRYPTOGRAPHY_MAJOR = int(cryptography.__version__.split(".")[0])


def tool(name: str) -> str:
    program = shutil.which(name)
    require(program is not None, f"{name} is not installed (Debian: sbsigntool)")
    assert program is not None
    return program


@functools.cache
def snakeoil() -> tuple[bytes, bytes]:
    require(SNAKEOIL_KEY.exists(), f"{SNAKEOIL_KEY} is missing (Debian: ovmf)")
    return SNAKEOIL_KEY.read_bytes(), SNAKEOIL_CERT.read_bytes()


@functools.cache
def snakeoil_key() -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(snakeoil()[0], SNAKEOIL_PASSWORD)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


@pytest.fixture(scope="module")
def plain_key(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The snakeoil key without its passphrase: sbsign asks for one on the terminal."""
    path = tmp_path_factory.mktemp("key") / "snakeoil.key"
    path.write_bytes(
        snakeoil_key().private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return path


def writer_image(source: Path, target: Path) -> Path:
    """An image from our own section writer, as the unified output makes one."""
    with source.open("rb") as stream, target.open("w+b") as out:
        image = pe.parse(stream)
        writer = pe.PeWriter(stream, image, drop=lambda section: section.is_debug)
        writer.write(
            [
                pe.NewSection(".config", BytesPayload(b"[global]\ndefault=xen\n", "config")),
                pe.NewSection(".kernel", BytesPayload(bytes(range(256)) * 4099, "kernel")),
                pe.NewSection(".ramdisk", BytesPayload(b"\x5a" * 100_003, "ramdisk")),
            ],
            out,
        )
    return target


INPUTS: dict[str, Callable[[Path], Path]] = {
    "grub": lambda tmp: GRUB,
    "shim-fallback": lambda tmp: SHIM_FALLBACK,
    "xen": lambda tmp: XEN,
    "writer-xen": lambda tmp: writer_image(XEN, tmp / "writer-xen.efi"),
    "writer-grub": lambda tmp: writer_image(GRUB, tmp / "writer-grub.efi"),
}
SOURCES = {"grub": GRUB, "shim-fallback": SHIM_FALLBACK, "xen": XEN}


@pytest.fixture(params=sorted(INPUTS))
def unsigned(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    name: str = request.param
    source = SOURCES.get(name) or SOURCES[name.removeprefix("writer-")]
    require(source.exists(), f"{source} is missing")
    return INPUTS[name](tmp_path)


def parse(path: Path) -> pe.PeImage:
    with path.open("rb") as stream:
        return pe.parse(stream)


def digest_of(path: Path) -> bytes:
    with path.open("rb") as stream:
        return authenticode.image_digest(stream, pe.parse(stream))


def signature_of(path: Path) -> authenticode.AuthenticodeSignature:
    with path.open("rb") as stream:
        (signature,) = authenticode.read_signatures(stream, pe.parse(stream))
    return signature


def sbsign(plain_key: Path, unsigned: Path, output: Path) -> Path:
    done = subprocess.run(
        [tool("sbsign"), "--key", plain_key, "--cert", SNAKEOIL_CERT, "--output", output, unsigned],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return output


def sbverify(path: Path, cert: Path = SNAKEOIL_CERT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [tool("sbverify"), "--cert", cert, path], capture_output=True, text=True, check=False
    )


def sign_to(unsigned: Path, output: Path, *, replace: bool = False) -> sign.SignResult:
    key_pem, cert_pem = snakeoil()
    with output.open("w+b") as out:
        return sign.sign_image(
            unsigned,
            out,
            key_pem,
            cert_pem,
            password=SNAKEOIL_PASSWORD,
            replace_signature=replace,
        )


def has_extra_data(path: Path) -> bool:
    return authenticode.hash_layout(parse(path)).extra is not None


# --- Against sbsign and sbverify ------------------------------------------------------------


def test_digest_equals_what_sbsign_embeds(unsigned: Path, plain_key: Path, tmp_path: Path) -> None:
    signed = sbsign(plain_key, unsigned, tmp_path / "sbsigned.efi")
    embedded = signature_of(signed)
    assert embedded.digest_algorithm == "sha256"
    # sbsign pads the image to 8 bytes before hashing (and hashes the padding), so an input of
    # another length is compared as padded; the signed file itself must hash the same anyway.
    data = unsigned.read_bytes()
    padded = tmp_path / "padded.efi"
    padded.write_bytes(data + b"\0" * (-len(data) % 8))
    assert digest_of(padded) == embedded.image_digest
    assert digest_of(signed) == embedded.image_digest
    if len(data) % 8 == 0:
        assert digest_of(unsigned) == embedded.image_digest
    # The content sbsign signs is byte for byte the one we build.
    assert (
        embedded.indirect_data
        == der.Element.parse(authenticode.spc_indirect_data_content(embedded.image_digest)).content
    )


def test_sbverify_accepts_what_we_sign(unsigned: Path, plain_key: Path, tmp_path: Path) -> None:
    ours = tmp_path / "signed.efi"
    result = sign_to(unsigned, ours)
    verdict = sbverify(ours)
    assert verdict.returncode == 0, verdict.stderr
    assert verdict.stdout.strip() == "Signature verification OK"
    if has_extra_data(unsigned):
        # Data after the sections (a COFF symbol table) is signed, as firmware hashes it;
        # sbverify warns about any such data, on sbsign's output just the same.
        assert result.extra_bytes > 0
        warnings = verdict.stderr.splitlines()
        assert warnings and all("gaps between PE/COFF sections?" in w for w in warnings)
        assert (
            "gaps between PE/COFF sections?"
            in sbverify(sbsign(plain_key, unsigned, tmp_path / "sbsigned.efi")).stderr
        )
    else:
        assert result.extra_bytes == 0
        assert verdict.stderr == ""
    assert result.gapless
    # Everything before the certificate table is what sbsign writes, but for CheckSum and the
    # Certificate Table entry, which depend on the signature.
    theirs = sbsign(plain_key, unsigned, tmp_path / "sbsigned.efi").read_bytes()
    mine = ours.read_bytes()
    offset, size = result.certificate_table
    assert signature_of(tmp_path / "sbsigned.efi").image_digest == result.digest
    image = parse(ours)
    assert theirs[offset - 8 : offset] == mine[offset - 8 : offset]
    for field, length in (
        (authenticode.checksum_offset(image), 4),
        (authenticode.security_directory_offset(image), 8),
    ):
        assert field is not None
        mine = mine[:field] + b"\0" * length + mine[field + length :]
        theirs = theirs[:field] + b"\0" * length + theirs[field + length :]
    assert mine[:offset] == theirs[:offset]
    assert len(mine) == offset + size
    assert image.signature == (offset, size)
    assert offset % 8 == 0 and size % 8 == 0
    assert sign.verify_image(ours, SNAKEOIL_CERT.read_bytes()).valid


def test_sbverify_refuses_a_changed_byte(unsigned: Path, tmp_path: Path) -> None:
    signed = tmp_path / "signed.efi"
    sign_to(unsigned, signed)
    image = parse(signed)
    largest = max(image.sections, key=lambda section: section.raw_size)
    data = bytearray(signed.read_bytes())
    data[largest.raw_offset + largest.raw_size // 2] ^= 0x01
    tampered = tmp_path / "tampered.efi"
    tampered.write_bytes(bytes(data))
    verdict = sbverify(tampered)
    assert verdict.returncode != 0
    assert "Image fails hash check" in verdict.stderr
    result = sign.verify_image(tampered, SNAKEOIL_CERT.read_bytes())
    assert result.signed and not result.valid
    assert not result.signatures[0].digest_matches
    assert result.signatures[0].problem is None  # the signature itself is intact
    assert not result.checksum_matches


def test_osslsigncode_accepts_what_we_sign(tmp_path: Path) -> None:
    require(GRUB.exists(), f"{GRUB} is missing")
    program = shutil.which("osslsigncode")
    require(program is not None, "osslsigncode is not installed")
    assert program is not None
    signed = tmp_path / "signed.efi"
    sign_to(GRUB, signed)
    verdict = subprocess.run(
        [program, "verify", "-in", signed, "-CAfile", SNAKEOIL_CERT],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    assert "Signature verification: ok" in verdict.stdout


# --- Signing: replacing, errors, determinism ------------------------------------------------


def test_signing_twice_needs_replace(tmp_path: Path) -> None:
    require(SHIM_FALLBACK.exists(), f"{SHIM_FALLBACK} is missing")
    first = tmp_path / "first.efi"
    sign_to(SHIM_FALLBACK, first)
    with pytest.raises(HlimageError, match="already signed; pass --replace-signature") as error:
        sign_to(first, tmp_path / "second.efi")
    assert "\n" not in str(error.value)
    second = tmp_path / "second.efi"
    result = sign_to(first, second, replace=True)
    assert result.replaced_signature
    assert sbverify(second).returncode == 0
    # Without a signing time the signature is a function of its input: re-signing gives the
    # very same file, with one certificate table, not two.
    assert second.read_bytes() == first.read_bytes()
    assert (
        len(authenticode.read_certificate_table(io.BytesIO(second.read_bytes()), parse(second)))
        == 1
    )


def test_replacing_an_sbsign_signature(plain_key: Path, tmp_path: Path) -> None:
    require(XEN.exists(), f"{XEN} is missing")
    theirs = sbsign(plain_key, XEN, tmp_path / "sbsigned.efi")
    ours = tmp_path / "ours.efi"
    sign_to(XEN, ours)
    resigned = tmp_path / "resigned.efi"
    sign_to(theirs, resigned, replace=True)
    assert sbverify(resigned).returncode == 0
    assert resigned.read_bytes() == ours.read_bytes()


def test_bad_keys_and_certificates_are_one_line_errors(tmp_path: Path) -> None:
    require(GRUB.exists(), f"{GRUB} is missing")
    key_pem, cert_pem = snakeoil()
    plain = snakeoil_key().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    cases: list[tuple[bytes, bytes, bytes | None, str]] = [
        (key_pem, cert_pem, b"wrong", r"--key: cannot load the private key \(wrong passphrase\?\)"),
        (key_pem, cert_pem, None, "--key: the private key is encrypted; give its passphrase"),
        (plain, cert_pem, b"snakeoil", "--key: the private key is not encrypted"),
        (b"not a key", cert_pem, None, "--key: cannot load the private key"),
        (ec_key, cert_pem, None, "--key: is not an RSA key"),
        (key_pem, b"not a certificate", SNAKEOIL_PASSWORD, "--cert: cannot load a certificate"),
        (key_pem, self_signed(other_key), SNAKEOIL_PASSWORD, "--cert: no certificate in it is for"),
    ]
    for key, cert, password, message in cases:
        with (tmp_path / "out.efi").open("w+b") as out, pytest.raises(HlimageError) as error:
            sign.sign_image(GRUB, out, key, cert, password=password, replace_signature=False)
        assert type(error.value) is HlimageError
        assert "\n" not in str(error.value)
        assert error.match(message)


def self_signed(key: rsa.RSAPrivateKey, name: str = "hlimage test", *, ca: bool = False) -> bytes:
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def test_verify_needs_a_chain_to_the_given_certificate(tmp_path: Path) -> None:
    require(GRUB.exists(), f"{GRUB} is missing")
    signed = tmp_path / "signed.efi"
    sign_to(GRUB, signed)
    other = self_signed(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    assert sign.verify_image(signed).valid  # intact, trust not asked
    untrusted = sign.verify_image(signed, other)
    assert not untrusted.valid and untrusted.signatures[0].digest_matches
    assert untrusted.signatures[0].problem is not None
    assert "does not chain" in untrusted.signatures[0].problem
    (other_path := tmp_path / "other.pem").write_bytes(other)
    assert sbverify(signed, other_path).returncode != 0
    unsigned = sign.verify_image(GRUB)
    assert not unsigned.signed and not unsigned.valid


@pytest.mark.parametrize("ca_flag", [True, False], ids=["ca", "not-a-ca"])
def test_a_chain_is_embedded_and_verified(tmp_path: Path, ca_flag: bool) -> None:
    """A leaf issued by a CA signs; trust in the CA covers it, as sbverify sees it."""
    require(GRUB.exists(), f"{GRUB} is missing")
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ca_pem = self_signed(ca_key, "hlimage test CA", ca=ca_flag)
    ca = x509.load_pem_x509_certificate(ca_pem)
    leaf_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hlimage leaf")]))
        .issuer_name(ca.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(ca_key, hashes.SHA256())
    )
    leaf_pem = leaf.public_bytes(serialization.Encoding.PEM)
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    signed = tmp_path / "signed.efi"
    with signed.open("w+b") as out:
        # The CA first: the signer is found by its key, not by its place in the file.
        result = sign.sign_image(GRUB, out, key_pem, ca_pem + leaf_pem)
    assert result.signer == "CN=hlimage leaf"
    signature = signature_of(signed)
    assert len(signature.certificates) == 2 and signature.signer == leaf
    (ca_path := tmp_path / "ca.pem").write_bytes(ca_pem)
    # Trusting the leaf itself works, as in firmware (EDK2 allows a partial chain; sbverify
    # does not); trusting the CA only if it is one, as in sbverify.
    assert sign.verify_image(signed, leaf_pem).valid
    assert (sbverify(signed, ca_path).returncode == 0) is ca_flag
    assert sign.verify_image(signed, ca_pem).valid is ca_flag


# --- Format details -------------------------------------------------------------------------


def test_signature_layout_is_what_firmware_expects() -> None:
    digest = bytes(range(32))
    signed_data = authenticode.build_signed_data(
        digest, snakeoil_key(), [x509.load_pem_x509_certificate(snakeoil()[1])]
    )
    # EDK2 reads the digest algorithm at offset 32, which holds only with two-byte lengths.
    assert signed_data[1] == 0x82
    assert signed_data[32 : 32 + 9] == der.oid(authenticode.DIGEST_OIDS["sha256"])[2:]
    signature = authenticode.parse_signature(signed_data)
    assert signature.image_digest == digest
    assert signature.signer_subject == "O=SnakeOil,L=Fort Collins,ST=Colorado,C=US"
    assert signature.content_type == authenticode.SPC_INDIRECT_DATA
    assert signature.signer is not None
    assert authenticode.signature_problem(signature, signature.signer) is None
    # EDK2 compares the image hash with the last bytes of the SpcIndirectDataContent.
    assert signature.indirect_data.endswith(digest)
    entry = authenticode.win_certificate(signed_data)
    length, revision, kind = struct.unpack_from("<IHH", entry)
    assert (length, revision, kind) == (len(signed_data) + 8, 0x0200, 0x0002)
    assert len(entry) % 8 == 0 and entry[length:] == b"\0" * (len(entry) - length)


def test_a_forged_attribute_is_caught() -> None:
    signed_data = bytearray(
        authenticode.build_signed_data(
            bytes(32), snakeoil_key(), [x509.load_pem_x509_certificate(snakeoil()[1])]
        )
    )
    signature = authenticode.parse_signature(bytes(signed_data))
    assert signature.message_digest is not None
    # A different image digest in the content: the messageDigest attribute no longer matches.
    at = bytes(signed_data).rindex(bytes(32))
    signed_data[at] = 1
    forged = authenticode.parse_signature(bytes(signed_data))
    assert forged.signer is not None
    problem = authenticode.signature_problem(forged, forged.signer)
    assert problem is not None and "messageDigest" in problem


@pytest.mark.parametrize(
    ("value", "encoding"),
    [
        (0, "020100"),
        (127, "02017f"),
        (128, "02020080"),
        (256, "02020100"),
        (-1, "0201ff"),
        (-128, "020180"),
        (-129, "0202ff7f"),
    ],
)
def test_der_integer(value: int, encoding: str) -> None:
    assert der.integer(value).hex() == encoding
    assert der.Element.parse(bytes.fromhex(encoding)).integer("x") == value


@pytest.mark.parametrize(
    ("length", "encoding"), [(0, "00"), (127, "7f"), (128, "8180"), (255, "81ff"), (256, "820100")]
)
def test_der_length(length: int, encoding: str) -> None:
    assert der.length(length).hex() == encoding


@FUZZ
@given(
    st.integers(0, 2),
    st.integers(0, 39),
    st.lists(st.integers(0, 1 << 70), max_size=8),
    st.integers(-(1 << 200), 1 << 200),
)
def test_der_round_trips(first: int, second: int, rest: list[int], value: int) -> None:
    dotted = ".".join(map(str, [first, second, *rest]))
    encoded = der.oid(dotted)
    assert der.Element.parse(encoded).oid("x") == dotted
    # cryptography (the oracle) takes OIDs of at most 63 content bytes (its asn1 crate's limit);
    # before 40 (Debian 12 has 38) its parser panics on some valid ones.
    if len(encoded) - 2 <= 63 and CRYPTOGRAPHY_MAJOR >= 40:
        assert x509.ObjectIdentifier(dotted).dotted_string == dotted
    assert der.Element.parse(der.integer(value)).integer("x") == value


def test_digest_is_streamed(tmp_path: Path) -> None:
    require(GRUB.exists(), f"{GRUB} is missing")

    class Recording(io.FileIO):
        largest = 0

        def read(self, size: int | None = -1, /) -> bytes:
            assert size is not None and 0 <= size <= CHUNK, f"read({size})"
            Recording.largest = max(Recording.largest, size)
            return super().read(size)

    with Recording(GRUB, "r") as raw:
        stream: BinaryIO = raw
        image = pe.parse(stream)
        assert image.file_size > 2 * CHUNK
        assert authenticode.image_digest(stream, image) == digest_of(GRUB)
    assert Recording.largest == CHUNK


def test_certificate_table_not_at_the_end_is_refused(tmp_path: Path) -> None:
    require(SHIM_FALLBACK.exists(), f"{SHIM_FALLBACK} is missing")
    signed = tmp_path / "signed.efi"
    sign_to(SHIM_FALLBACK, signed)
    moved = tmp_path / "moved.efi"
    moved.write_bytes(signed.read_bytes() + b"\0" * 8)
    with pytest.raises(FormatError, match="does not end at the end of the file"):
        digest_of(moved)
    with pytest.raises(HlimageError, match="not at the end of the file"):
        sign_to(moved, tmp_path / "again.efi", replace=True)


# --- Junk gives FormatError and nothing else ------------------------------------------------


@functools.cache
def sample_signature() -> bytes:
    return authenticode.build_signed_data(
        bytes(range(32)), snakeoil_key(), [x509.load_pem_x509_certificate(snakeoil()[1])]
    )


def read_or_format_error(data: bytes) -> None:
    try:
        signature = authenticode.parse_signature(data)
    except FormatError:
        return
    # Whatever parsed must also be safe to describe and check.
    assert isinstance(signature.signer_subject, str)
    if signature.signer is not None:
        authenticode.signature_problem(signature, signature.signer)


@FUZZ
@given(st.binary(max_size=4096))
def test_junk_bytes_give_format_errors(data: bytes) -> None:
    read_or_format_error(data)


def _tlv(tag: int, content: bytes) -> bytes:
    return der.tlv(tag, content)


_DER_TREES = st.recursive(
    st.builds(
        _tlv, st.sampled_from([0x02, 0x03, 0x04, 0x05, 0x06, 0x0C, 0x80]), st.binary(max_size=40)
    ),
    lambda children: st.builds(
        lambda tag, items: _tlv(tag, b"".join(items)),
        st.sampled_from([0x30, 0x31, 0xA0, 0xA1, 0xA2]),
        st.lists(children, max_size=6),
    ),
    max_leaves=40,
)


@FUZZ
@given(_DER_TREES)
def test_well_formed_junk_gives_format_errors(data: bytes) -> None:
    read_or_format_error(data)


@FUZZ
@given(st.data())
def test_mutated_signatures_give_format_errors(data: st.DataObject) -> None:
    signed_data = bytearray(sample_signature())
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        at = data.draw(st.integers(0, len(signed_data) - 1))
        if kind == "flip":
            signed_data[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "set":
            signed_data[at] = data.draw(
                st.sampled_from([0x00, 0x80, 0x81, 0x82, 0x84, 0x85, 0xFF, 0x30])
            )
        elif kind == "insert":
            signed_data[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "delete":
            del signed_data[at : at + data.draw(st.integers(1, 16))]
        else:
            del signed_data[at:]
        if not signed_data:
            break
    read_or_format_error(bytes(signed_data))


@pytest.fixture(scope="module")
def signed_shim(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    require(SHIM_FALLBACK.exists(), f"{SHIM_FALLBACK} is missing")
    path = tmp_path_factory.mktemp("signed") / "signed.efi"
    sign_to(SHIM_FALLBACK, path)
    return path.read_bytes()


@FUZZ
@given(st.data())
def test_mutated_certificate_tables_give_format_errors(
    signed_shim: bytes, data: st.DataObject
) -> None:
    image = pe.parse(io.BytesIO(signed_shim))
    assert image.signature is not None
    offset, _ = image.signature
    table = bytearray(signed_shim[offset:])
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, min(len(table), 64) - 1))  # the header and DER prefix
        table[at] = data.draw(st.integers(0, 255))
    stream = io.BytesIO(signed_shim[:offset] + bytes(table))
    with contextlib.suppress(FormatError):
        authenticode.read_signatures(stream, pe.parse(stream))


def test_layout_skips_exactly_checksum_and_directory() -> None:
    require(GRUB.exists(), f"{GRUB} is missing")
    image = parse(GRUB)
    layout = authenticode.hash_layout(image)
    covered = sum(length for _, length in layout.all_ranges)
    assert covered == image.file_size - 4 - 8
    assert layout.extra is None and layout.gapless
