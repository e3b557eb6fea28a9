"""Sign a PE image for UEFI Secure Boot (Authenticode), and check such a signature.

Signing copies the image in chunks, pads it to 8 bytes (the padding is part of what is hashed,
as with sbsign), appends one WIN_CERTIFICATE and points the Certificate Table directory entry at
it. The order matters: the hash leaves out CheckSum and that directory entry, so the image is
hashed once its other bytes are final; the checksum covers the signature, so it comes last.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import align_up, authenticode, pe
from hlimage.formats.payload import CHUNK, StreamRange
from hlimage.plumbing.streams import Tracked

DIGEST_ALGORITHM = "sha256"


@dataclass(frozen=True)
class SignResult:
    digest: bytes
    """The Authenticode (sha256) hash of the signed image."""
    signer: str
    certificate_table: tuple[int, int]
    """(file offset, size) of the appended certificate table."""
    checksum: int
    file_size: int
    replaced_signature: bool
    extra_bytes: int
    """Bytes after the sections (a COFF symbol table, say): signed, as firmware hashes them,
    but sbverify warns "gaps between PE/COFF sections?" about them."""
    gapless: bool
    """False where the sections' raw data has gaps or overlaps (sbverify warns about that)."""


@dataclass(frozen=True)
class SignatureCheck:
    signer: str
    digest_algorithm: str
    digest_matches: bool
    """The hash the signature carries is the file's hash."""
    problem: str | None
    """Why the signature does not hold (None: it does): a bad signature, or, when a trusted
    certificate was given, no chain from the signer to it."""

    @property
    def valid(self) -> bool:
        return self.digest_matches and self.problem is None


@dataclass(frozen=True)
class VerifyResult:
    signatures: tuple[SignatureCheck, ...]
    checksum_matches: bool
    """Whether the PE CheckSum field holds the file's checksum (firmware does not check it)."""

    @property
    def signed(self) -> bool:
        return bool(self.signatures)

    @property
    def valid(self) -> bool:
        """One signature holds, as firmware accepts an image if any of its signatures does."""
        return any(check.valid for check in self.signatures)


def load_private_key(key_pem: bytes, password: bytes | None) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(key_pem, password)
    except TypeError:
        # cryptography says TypeError for a passphrase missing or one too many.
        if password is None:
            raise HlimageError("--key: the private key is encrypted; give its passphrase") from None
        raise HlimageError(
            "--key: the private key is not encrypted, but a passphrase was given; drop it"
        ) from None
    except (ValueError, UnsupportedAlgorithm):
        raise HlimageError(
            "--key: cannot load the private key (wrong passphrase?); give a PEM RSA key"
        ) from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise HlimageError(
            f"--key: is not an RSA key ({type(key).__name__}); UEFI firmware verifies RSA "
            "signatures only, so give a PEM RSA key"
        )
    return key


_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.DOTALL
)


def load_certificates(cert_pem: bytes, what: str = "--cert") -> list[x509.Certificate]:
    try:
        if b"-----BEGIN" in cert_pem:
            # One by one rather than load_pem_x509_certificates, which cryptography has only
            # from 39 on (Debian 12 ships 38).
            blocks = _PEM_CERTIFICATE.findall(cert_pem)
            if not blocks:
                raise ValueError("no certificate")
            return [x509.load_pem_x509_certificate(block) for block in blocks]
        return [x509.load_der_x509_certificate(cert_pem)]
    except ValueError:
        raise HlimageError(
            f"{what}: cannot load a certificate from it; give a PEM X.509 certificate"
        ) from None


def _public_der(key: object) -> bytes | None:
    if isinstance(key, rsa.RSAPublicKey):
        return key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    return None


def _signer_first(
    certificates: list[x509.Certificate], key: rsa.RSAPrivateKey
) -> list[x509.Certificate]:
    """The certificate of `key` first, then the others (a chain), or an error."""
    wanted = _public_der(key.public_key())
    for index, certificate in enumerate(certificates):
        try:
            public = _public_der(certificate.public_key())
        except (ValueError, UnsupportedAlgorithm):
            continue
        if public == wanted:
            return [certificate, *certificates[:index], *certificates[index + 1 :]]
    raise HlimageError(
        "--cert: no certificate in it is for the private key given with --key; "
        "give the certificate that belongs to that key"
    )


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as error:
        raise HlimageError(f"cannot read: {error.strerror}", where=path) from None


def _parse(stream: BinaryIO, path: Path) -> pe.PeImage:
    try:
        return pe.parse(stream)
    except FormatError as error:
        raise FormatError(str(error), where=path) from None


def sign_image(
    input: Path,
    output: BinaryIO,
    key_pem: bytes,
    cert_pem: bytes,
    *,
    password: bytes | None = None,
    replace_signature: bool = False,
) -> SignResult:
    """Write a signed copy of the PE image `input` to `output` (readable, writable, seekable).

    `cert_pem` holds the signer's certificate, optionally with a chain to embed as well.
    """
    key = load_private_key(key_pem, password)
    certificates = _signer_first(load_certificates(cert_pem), key)
    with _open(input) as source:
        image = _parse(source, input)
        checksum_at = authenticode.checksum_offset(image)
        directory_at = authenticode.security_directory_offset(image)
        if directory_at is None:
            raise HlimageError(
                f"the optional header has {len(image.optional.DataDirectories)} data "
                "directories, none for a certificate table; this image cannot be signed",
                where=input,
            )
        content_end = image.file_size
        old = image.signature
        if old is not None:
            if not replace_signature:
                raise HlimageError(
                    "is already signed; pass --replace-signature to drop its signature and "
                    "sign it again",
                    where=input,
                )
            offset, size = old
            if offset + size != image.file_size or offset < image.size_of_headers:
                raise HlimageError(
                    f"its certificate table (0x{size:x} bytes at 0x{offset:x}) is not at the "
                    "end of the file, so it cannot be removed safely; sign an unsigned build",
                    where=input,
                )
            content_end = offset
        data_size = align_up(content_end, authenticode.CERTIFICATE_TABLE_ALIGNMENT)

        checksum = pe.Checksum()
        output.seek(0)
        output.truncate()
        position = 0
        for view in Tracked(StreamRange(source, 0, content_end), digest=False).views():
            output.write(view)
            checksum.update(position, view)
            position += len(view)
        output.write(b"\0" * (data_size - content_end))

    # The unsigned image as it will be hashed: CheckSum zero, no certificate table.
    _patch(output, checksum, checksum_at, struct.pack("<I", 0))
    _patch(output, checksum, directory_at, struct.pack("<II", 0, 0))
    output.flush()
    try:
        unsigned = pe.parse(output)
        layout = authenticode.hash_layout(unsigned)
        digest = authenticode.image_digest(output, unsigned, DIGEST_ALGORITHM)
    except FormatError as error:
        raise FormatError(str(error), where=input) from None

    signed_data = authenticode.build_signed_data(digest, key, certificates, DIGEST_ALGORITHM)
    table = authenticode.win_certificate(signed_data)
    if data_size + len(table) >= 1 << 32:
        raise HlimageError(
            "the signed image would pass 4 GiB, where PE file offsets end", where=input
        )
    _patch(output, checksum, directory_at, struct.pack("<II", data_size, len(table)))
    output.seek(data_size)
    output.write(table)
    checksum.update(data_size, table)
    total = checksum.finish(data_size + len(table))
    output.seek(checksum_at)
    output.write(struct.pack("<I", total))
    output.seek(data_size + len(table))
    output.truncate()
    output.flush()
    extra = layout.extra[1] if layout.extra else 0
    return SignResult(
        digest=digest,
        signer=certificates[0].subject.rfc4514_string(),
        certificate_table=(data_size, len(table)),
        checksum=total,
        file_size=data_size + len(table),
        replaced_signature=old is not None,
        extra_bytes=extra,
        gapless=layout.gapless,
    )


def _patch(output: BinaryIO, checksum: pe.Checksum, offset: int, new: bytes) -> None:
    output.seek(offset)
    old = output.read(len(new))
    output.seek(offset)
    output.write(new)
    checksum.replace(offset, old, new)


def file_checksum(stream: BinaryIO, image: pe.PeImage) -> int:
    """The PE checksum of the file in `stream`, as if its CheckSum field were zero."""
    checksum = pe.Checksum()
    stream.seek(0)
    position = 0
    while chunk := stream.read(CHUNK):
        checksum.update(position, chunk)
        position += len(chunk)
    field = authenticode.checksum_offset(image)
    stream.seek(field)
    checksum.replace(field, stream.read(4), b"\0\0\0\0")
    return checksum.finish(position)


def verify_image(path: Path, cert_pem: bytes | None = None) -> VerifyResult:
    """Check the image's signatures: hash against the file, signature against its signer.

    With `cert_pem`, a signature also needs a chain from its signer to one of those
    certificates, through CA certificates; validity dates and key usages are not checked (nor
    does sbverify). Without, only that each signature is intact is checked.
    """
    trusted = None if cert_pem is None else load_certificates(cert_pem, "the certificate")
    with _open(path) as stream:
        image = _parse(stream, path)
        try:
            signatures = authenticode.read_signatures(stream, image)
            digests: dict[str, bytes] = {}
            checks = []
            for signature in signatures:
                algorithm = signature.digest_algorithm
                if algorithm in authenticode.DIGEST_OIDS and algorithm not in digests:
                    digests[algorithm] = authenticode.image_digest(stream, image, algorithm)
                checks.append(
                    SignatureCheck(
                        signer=signature.signer_subject,
                        digest_algorithm=algorithm,
                        digest_matches=digests.get(algorithm) == signature.image_digest,
                        problem=_problem(signature, trusted),
                    )
                )
            stored = int(image.optional.CheckSum)
            checksum_matches = file_checksum(stream, image) == stored
        except FormatError as error:
            raise FormatError(str(error), where=path) from None
    return VerifyResult(tuple(checks), checksum_matches)


def _problem(
    signature: authenticode.AuthenticodeSignature, trusted: list[x509.Certificate] | None
) -> str | None:
    signer = signature.signer
    if signer is None:
        return "the signer's certificate is not embedded"
    problem = authenticode.signature_problem(signature, signer)
    if problem is not None or trusted is None:
        return problem
    if _chains_to(signer, signature.certificates, trusted):
        return None
    return "the signer's certificate does not chain to the given certificate"


def _chains_to(
    certificate: x509.Certificate,
    intermediates: tuple[x509.Certificate, ...],
    trusted: list[x509.Certificate],
) -> bool:
    current = certificate
    # Each step moves to a different embedded certificate, so this many steps are enough.
    for _ in range(len(intermediates) + 1):
        if current in trusted or any(_issued_by(current, anchor) for anchor in trusted):
            return True
        parent = next(
            (
                candidate
                for candidate in intermediates
                if candidate != current and _issued_by(current, candidate)
            ),
            None,
        )
        if parent is None:
            return False
        current = parent
    return False


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    if not _is_ca(issuer):
        return False
    try:
        _verify_directly_issued_by(certificate, issuer)
    except (ValueError, TypeError, InvalidSignature, UnsupportedAlgorithm):
        return False
    return True


def _verify_directly_issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> None:
    """cryptography's verify_directly_issued_by (from 40 on), or what it does, for 38."""
    verify = getattr(certificate, "verify_directly_issued_by", None)
    if verify is not None:
        verify(issuer)
        return
    if certificate.issuer != issuer.subject:
        raise ValueError("the issuer's name is not the certificate's issuer")
    algorithm = certificate.signature_hash_algorithm
    key = issuer.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        if algorithm is None:
            raise UnsupportedAlgorithm("no hash algorithm")
        key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                   padding.PKCS1v15(), algorithm)  # fmt: skip
    elif isinstance(key, ec.EllipticCurvePublicKey):
        if algorithm is None:
            raise UnsupportedAlgorithm("no hash algorithm")
        key.verify(certificate.signature, certificate.tbs_certificate_bytes,
                   ec.ECDSA(algorithm))  # fmt: skip
    else:
        raise UnsupportedAlgorithm(f"issuer key {type(key).__name__}")


def _is_ca(certificate: x509.Certificate) -> bool:
    """As OpenSSL (and so sbverify and EDK2) sees it: basicConstraints CA, or an X.509 v1."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return certificate.version is x509.Version.v1
    except ValueError:
        return False
    return constraints.value.ca
