"""Authenticode for PE images: the image hash, the PKCS#7 SignedData, the certificate table.

The image hash follows what UEFI firmware computes (EDK2's DxeImageVerificationLib, which
sbsign and sbverify agree with), not the letter of Microsoft's document where the two differ:
data after the sections is hashed from SizeOfHeaders plus the sum of the sections' raw sizes
up to the file size less the certificate table's size.

The SignedData is built and read with the DER codec in `der.py`; anything the reader does not
understand is a FormatError.

Nothing here decides whether a signature is good enough: that is the caller's business.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, BinaryIO

import construct as c

from hlimage.errors import FormatError
from hlimage.formats import align_up, der, pe
from hlimage.formats.payload import CHUNK

if TYPE_CHECKING:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import rsa

# cryptography (0.1-0.3 s to import) is imported by the functions that sign or verify: the
# digest and the certificate table, which every build with a manifest computes, need only
# hashlib.

SPC_INDIRECT_DATA = "1.3.6.1.4.1.311.2.1.4"
SPC_PE_IMAGE_DATA = "1.3.6.1.4.1.311.2.1.15"
SPC_SP_OPUS_INFO = "1.3.6.1.4.1.311.2.1.12"
PKCS7_SIGNED_DATA = "1.2.840.113549.1.7.2"
ATTRIBUTE_CONTENT_TYPE = "1.2.840.113549.1.9.3"
ATTRIBUTE_MESSAGE_DIGEST = "1.2.840.113549.1.9.4"
RSA_ENCRYPTION = "1.2.840.113549.1.1.1"

DIGEST_OIDS = {
    "sha1": "1.3.14.3.2.26",
    "sha256": "2.16.840.1.101.3.4.2.1",
    "sha384": "2.16.840.1.101.3.4.2.2",
    "sha512": "2.16.840.1.101.3.4.2.3",
}
DIGEST_NAMES = {oid: name for name, oid in DIGEST_OIDS.items()}


def _hash_algorithm(name: str) -> hashes.HashAlgorithm:
    from cryptography.hazmat.primitives import hashes

    algorithms: dict[str, type[hashes.HashAlgorithm]] = {
        "sha1": hashes.SHA1,
        "sha256": hashes.SHA256,
        "sha384": hashes.SHA384,
        "sha512": hashes.SHA512,
    }
    return algorithms[name]()


# Signature algorithms a SignerInfo may name: plain rsaEncryption (what OpenSSL and signtool
# write) takes the hash from the SignerInfo's digestAlgorithm; the others name it themselves.
_RSA_WITH = {
    "1.2.840.113549.1.1.5": "sha1",
    "1.2.840.113549.1.1.11": "sha256",
    "1.2.840.113549.1.1.12": "sha384",
    "1.2.840.113549.1.1.13": "sha512",
}
_ECDSA_WITH = {
    "1.2.840.10045.4.1": "sha1",
    "1.2.840.10045.4.3.2": "sha256",
    "1.2.840.10045.4.3.3": "sha384",
    "1.2.840.10045.4.3.4": "sha512",
}

WIN_CERT_REVISION_2_0 = 0x0200
WIN_CERT_TYPE_PKCS_SIGNED_DATA = 0x0002
WIN_CERTIFICATE_HEADER_SIZE = int(pe.WinCertificateHeader.sizeof())
CERTIFICATE_TABLE_ALIGNMENT = 8
# Real tables hold a few KiB; a bound keeps a lying directory entry from costing memory.
MAX_CERTIFICATE_TABLE = 16 << 20
MAX_CERTIFICATES = 16

# What sbsign and signtool put in SpcLink: a file name nobody reads, in UTF-16.
OBSOLETE_FILE_NAME = "<<<Obsolete>>>"


# --- The image hash -------------------------------------------------------------------------


@dataclass(frozen=True)
class HashLayout:
    """The file ranges the Authenticode hash covers, in hashing order."""

    ranges: tuple[tuple[int, int], ...]
    """(file offset, length) pieces: headers minus the two excluded fields, then sections."""
    extra: tuple[int, int] | None
    """EDK2's "extra data" (offset, length): bytes beyond SizeOfHeaders plus every section's
    raw size, such as a COFF symbol table. Hashed, but sbverify warns about it."""
    gapless: bool
    """Whether the sections' raw data runs on from SizeOfHeaders without gaps or overlaps, so
    that `extra` starts where the last section ends (sbverify warns otherwise)."""

    @property
    def all_ranges(self) -> tuple[tuple[int, int], ...]:
        return (*self.ranges, self.extra) if self.extra else self.ranges


def _optional_header_offset(image: pe.PeImage) -> int:
    return len(image.dos) + 4 + int(pe.CoffHeader.sizeof())


def checksum_offset(image: pe.PeImage) -> int:
    return _optional_header_offset(image) + pe.CHECKSUM_OFFSET_IN_OPTIONAL


def security_directory_offset(image: pe.PeImage) -> int | None:
    """File offset of the Certificate Table data-directory entry, if the header has one."""
    if len(image.optional.DataDirectories) <= pe.DIRECTORY_SECURITY:
        return None
    magic = int(image.optional.Magic)
    return _optional_header_offset(image) + pe.SECURITY_DIRECTORY_OFFSET[magic]


def hash_layout(image: pe.PeImage) -> HashLayout:
    """What EDK2 hashes, step by step. FormatError where it would refuse the image."""
    size_of_headers = image.size_of_headers
    checksum_at = checksum_offset(image)
    security_at = security_directory_offset(image)
    header_end = checksum_at + 4 if security_at is None else security_at + 8
    if size_of_headers < header_end:
        raise FormatError(
            f"SizeOfHeaders (0x{size_of_headers:x}) ends inside the optional header "
            f"(at 0x{header_end:x}); no Authenticode hash is defined for this image"
        )
    if size_of_headers > image.file_size:
        raise FormatError(
            f"SizeOfHeaders (0x{size_of_headers:x}) is past the end of the file "
            f"(0x{image.file_size:x})"
        )
    ranges = [(0, checksum_at)]
    if security_at is None:
        ranges.append((checksum_at + 4, size_of_headers - checksum_at - 4))
    else:
        ranges.append((checksum_at + 4, security_at - checksum_at - 4))
        ranges.append((security_at + 8, size_of_headers - security_at - 8))

    hashed = size_of_headers
    position = size_of_headers
    gapless = True
    # A stable sort, as EDK2's insertion sort; sections without raw data are not hashed.
    for section in sorted(image.sections, key=lambda s: s.raw_offset):
        if not section.raw_size:
            continue
        ranges.append((section.raw_offset, section.raw_size))
        gapless = gapless and section.raw_offset == position
        position = section.raw_offset + section.raw_size
        hashed += section.raw_size

    cert_offset, cert_size = image.directory(pe.DIRECTORY_SECURITY)
    if cert_size and cert_offset + cert_size != image.file_size:
        raise FormatError(
            f"the certificate table (0x{cert_size:x} bytes at 0x{cert_offset:x}) does not end "
            f"at the end of the file (0x{image.file_size:x}); firmware would hash part of it"
        )
    extra = None
    if image.file_size > hashed:
        if image.file_size - cert_size > hashed:
            extra = (hashed, image.file_size - cert_size - hashed)
        elif image.file_size - cert_size < hashed:
            raise FormatError(
                "the sections and the certificate table add up to more than the file; "
                "firmware refuses such an image"
            )
    return HashLayout(
        tuple((offset, length) for offset, length in ranges if length),
        extra,
        gapless,
    )


def new_hash(algorithm: str) -> hashlib._Hash:
    if algorithm not in DIGEST_OIDS:
        raise FormatError(f"unsupported digest algorithm {algorithm}")
    return hashlib.new(algorithm)


def image_digest(stream: BinaryIO, image: pe.PeImage, algorithm: str = "sha256") -> bytes:
    """The Authenticode hash of the image in `stream` (read in chunks, never whole)."""
    digest = new_hash(algorithm)
    for offset, length in hash_layout(image).all_ranges:
        stream.seek(offset)
        remaining = length
        while remaining:
            chunk = stream.read(min(CHUNK, remaining))
            if not chunk:
                raise FormatError("the file ended before the data its headers describe")
            digest.update(chunk)
            remaining -= len(chunk)
    return digest.digest()


def algorithm_identifier(oid: str) -> bytes:
    # With an explicit NULL, as OpenSSL writes it and as EDK2's fixed-offset OID check expects.
    return der.sequence(der.oid(oid), der.null())


def spc_indirect_data_content(digest: bytes, algorithm: str = "sha256") -> bytes:
    """SpcIndirectDataContent for a PE image, laid out as sbsign and signtool write it."""
    file_name = der.implicit(0, der.tlv(der.TAG_BMP_STRING, OBSOLETE_FILE_NAME.encode("utf-16-be")))
    pe_image_data = der.sequence(
        der.tlv(der.TAG_BIT_STRING, b"\0"),  # flags: none
        der.explicit(0, der.explicit(2, file_name)),  # SpcLink.file: SpcString.unicode
    )
    return der.sequence(
        der.sequence(der.oid(SPC_PE_IMAGE_DATA), pe_image_data),
        # The digest must be the last bytes: EDK2 compares the image hash at the very end.
        der.sequence(algorithm_identifier(DIGEST_OIDS[algorithm]), der.octet_string(digest)),
    )


def _attribute(oid: str, value: bytes) -> bytes:
    return der.sequence(der.oid(oid), der.set_of([value]))


def build_signed_data(
    digest: bytes,
    key: rsa.RSAPrivateKey,
    certificates: Sequence[x509.Certificate],
    algorithm: str = "sha256",
) -> bytes:
    """A DER ContentInfo holding the Authenticode SignedData for an image hash.

    `certificates[0]` is the signer's; the rest (a chain) are embedded too. No signing time is
    added, so the same image, key and certificates always give the same bytes.
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    if algorithm not in DIGEST_OIDS or len(digest) != new_hash(algorithm).digest_size:
        raise FormatError(f"not a {algorithm} digest: {len(digest)} bytes")
    signer = certificates[0]
    indirect = spc_indirect_data_content(digest, algorithm)
    content = der.Element.parse(indirect).content
    attributes = der.set_of(
        [
            _attribute(ATTRIBUTE_CONTENT_TYPE, der.oid(SPC_INDIRECT_DATA)),
            # Authenticode hashes the SpcIndirectDataContent without its tag and length.
            _attribute(ATTRIBUTE_MESSAGE_DIGEST, der.octet_string(_hash(algorithm, content))),
            _attribute(SPC_SP_OPUS_INFO, der.sequence()),
        ]
    )
    # The signature covers the attributes encoded as a SET, not under their [0] tag.
    signature = key.sign(attributes, padding.PKCS1v15(), _hash_algorithm(algorithm))
    signer_info = der.sequence(
        der.integer(1),
        der.sequence(signer.issuer.public_bytes(), der.integer(signer.serial_number)),
        algorithm_identifier(DIGEST_OIDS[algorithm]),
        der.implicit(0, attributes),
        algorithm_identifier(RSA_ENCRYPTION),
        der.octet_string(signature),
    )
    signed_data = der.sequence(
        der.integer(1),
        der.set_of([algorithm_identifier(DIGEST_OIDS[algorithm])]),
        der.sequence(der.oid(SPC_INDIRECT_DATA), der.explicit(0, indirect)),
        der.implicit(
            0, der.set_of(cert.public_bytes(serialization.Encoding.DER) for cert in certificates)
        ),
        der.set_of([signer_info]),
    )
    encoded = der.sequence(der.oid(PKCS7_SIGNED_DATA), der.explicit(0, signed_data))
    # EDK2 finds the digest algorithm at a fixed offset that assumes two-byte lengths.
    if encoded[1] != 0x82:
        raise FormatError(
            f"the signature would be {len(encoded)} bytes; UEFI firmware reads only "
            "signatures of 256 bytes to 64 KiB (embed fewer certificates)"
        )
    return encoded


def _hash(algorithm: str, data: bytes) -> bytes:
    digest = new_hash(algorithm)
    digest.update(data)
    return digest.digest()


def _algorithm(node: der.Element, what: str) -> str:
    return node.fields(what, 1)[0].oid(what)


def _digest_name(oid: str) -> str:
    return DIGEST_NAMES.get(oid, oid)


@dataclass(frozen=True)
class AuthenticodeSignature:
    """What a PKCS#7 Authenticode signature says, as read (nothing checked yet)."""

    digest_algorithm: str
    """Of the image hash: a name such as "sha256", or the OID when unknown."""
    image_digest: bytes
    """The image hash the signer signed."""
    indirect_data: bytes
    """The SpcIndirectDataContent's content octets: what messageDigest is a hash of."""
    certificates: tuple[x509.Certificate, ...]
    signer_index: int | None
    """Which of `certificates` the SignerInfo names (by issuer and serial), if embedded."""
    signer_digest_algorithm: str
    signature_algorithm: str
    signed_attributes: bytes | None
    """DER, as a SET: the bytes the signature is over."""
    content_type: str | None
    message_digest: bytes | None
    signature: bytes

    @property
    def signer(self) -> x509.Certificate | None:
        return None if self.signer_index is None else self.certificates[self.signer_index]

    @property
    def signer_subject(self) -> str:
        signer = self.signer
        if signer is None:
            return "(signer certificate not embedded)"
        try:
            return signer.subject.rfc4514_string()
        except ValueError:
            return "(unprintable subject)"


def parse_signature(data: bytes) -> AuthenticodeSignature:
    """Read a DER ContentInfo holding an Authenticode SignedData. FormatError for anything else."""
    what = "Authenticode signature"
    content_info = der.Element.parse(data).fields(what, 2)
    if content_info[0].oid(what) != PKCS7_SIGNED_DATA:
        raise FormatError(f"{what}: not a PKCS#7 SignedData")
    wrapper = content_info[1].fields(f"{what} content", 1, tag=der.CONTEXT | der.CONSTRUCTED)
    items = wrapper[0].fields("SignedData", 4)
    items[0].integer("SignedData version")
    items[1].expect(der.TAG_SET, "SignedData digestAlgorithms")

    encapsulated = items[2].fields("SignedData contentInfo", 2)
    if encapsulated[0].oid("contentInfo type") != SPC_INDIRECT_DATA:
        raise FormatError(f"{what}: the signed content is not SpcIndirectDataContent")
    indirect = encapsulated[1].fields("contentInfo content", 1, tag=der.CONTEXT | der.CONSTRUCTED)[
        0
    ]
    indirect_fields = indirect.fields("SpcIndirectDataContent", 2)
    indirect_fields[0].fields("SpcIndirectDataContent data", 1)
    digest_info = indirect_fields[1].fields("SpcIndirectDataContent messageDigest", 2)
    digest_algorithm = _digest_name(_algorithm(digest_info[0], "image digest algorithm"))
    embedded_digest = digest_info[1].octets("image digest")

    rest = items[3:]
    raw_certificates: list[der.Element] = []
    if rest and rest[0].tag == der.CONTEXT | der.CONSTRUCTED:
        raw_certificates = rest[0].children()
        if len(raw_certificates) > MAX_CERTIFICATES:
            raise FormatError(f"{what}: {len(raw_certificates)} certificates")
        rest = rest[1:]
    if rest and rest[0].tag == der.CONTEXT | der.CONSTRUCTED | 1:  # CRLs: not used for UEFI
        rest = rest[1:]
    if not rest:
        raise FormatError(f"{what}: no signerInfos")
    signer_infos = rest[0].fields("signerInfos", 1, tag=der.TAG_SET)
    info = signer_infos[0].fields("SignerInfo", 5)
    if info[0].integer("SignerInfo version") != 1:
        raise FormatError(f"{what}: only SignerInfo version 1 (issuer and serial) is supported")
    issuer, serial = info[1].fields("issuerAndSerialNumber", 2)[:2]
    issuer.expect(der.TAG_SEQUENCE, "signer's issuer")
    serial.integer("signer's serial number")
    signer_digest = _digest_name(_algorithm(info[2], "SignerInfo digestAlgorithm"))

    index = 3
    signed_attributes = None
    content_type = None
    message_digest = None
    if info[index].tag == der.CONTEXT | der.CONSTRUCTED:
        # Signed as a SET: the [0] IMPLICIT tag swapped back for the universal one.
        signed_attributes = bytes([der.TAG_SET]) + info[index].raw[1:]
        content_type, message_digest = _read_attributes(info[index])
        index += 1
    if len(info) < index + 2:
        raise FormatError(f"{what}: SignerInfo ends early")
    signature_algorithm = _algorithm(info[index], "SignerInfo digestEncryptionAlgorithm")
    signature = info[index + 1].octets("SignerInfo encryptedDigest")

    signer_index = None
    for position, raw in enumerate(raw_certificates):
        if _issuer_and_serial(raw) == (issuer.raw, serial.raw):
            signer_index = position
            break
    return AuthenticodeSignature(
        digest_algorithm=digest_algorithm,
        image_digest=embedded_digest,
        indirect_data=indirect.content,
        certificates=tuple(_certificate(raw) for raw in raw_certificates),
        signer_index=signer_index,
        signer_digest_algorithm=signer_digest,
        signature_algorithm=signature_algorithm,
        signed_attributes=signed_attributes,
        content_type=content_type,
        message_digest=message_digest,
        signature=signature,
    )


def _issuer_and_serial(certificate: der.Element) -> tuple[bytes, bytes]:
    """A certificate's issuer and serial as encoded, to match a SignerInfo byte for byte."""
    tbs = certificate.fields("embedded certificate", 1)[0].fields("tbsCertificate", 4)
    if tbs[0].tag == der.CONTEXT | der.CONSTRUCTED:  # [0] version
        tbs = tbs[1:]
    return tbs[2].expect(der.TAG_SEQUENCE, "certificate issuer").raw, tbs[0].raw


def _certificate(raw: der.Element) -> x509.Certificate:
    from cryptography import x509

    raw.expect(der.TAG_SEQUENCE, "embedded certificate")
    try:
        return x509.load_der_x509_certificate(raw.raw)
    except ValueError as error:
        raise FormatError(f"embedded certificate does not parse: {error}") from None


def _read_attributes(node: der.Element) -> tuple[str | None, bytes | None]:
    content_type = None
    message_digest = None
    for attribute in node.children():
        fields = attribute.fields("signed attribute", 2)
        oid = fields[0].oid("signed attribute type")
        values = fields[1].fields("signed attribute values", 1, tag=der.TAG_SET)
        if oid == ATTRIBUTE_CONTENT_TYPE:
            content_type = values[0].oid("contentType")
        elif oid == ATTRIBUTE_MESSAGE_DIGEST:
            message_digest = values[0].octets("messageDigest")
    return content_type, message_digest


def signature_problem(
    signature: AuthenticodeSignature, certificate: x509.Certificate
) -> str | None:
    """Why `signature` is not a valid signature by `certificate`'s key, or None when it is.

    Checks the signed attributes bind the SpcIndirectDataContent and that the key signed them.
    Whether the image hash matches the file, and whether the certificate is trusted, are
    separate questions.
    """
    from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
    from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

    if signature.signed_attributes is None or signature.message_digest is None:
        return "no signed messageDigest attribute (Authenticode requires one)"
    if signature.content_type != SPC_INDIRECT_DATA:
        return "the contentType attribute is not SpcIndirectDataContent"
    algorithm = signature.signer_digest_algorithm
    if algorithm not in DIGEST_OIDS:
        return f"unsupported signer digest algorithm {algorithm}"
    if _hash(algorithm, signature.indirect_data) != signature.message_digest:
        return "the messageDigest attribute does not match the signed content"
    hash_algorithm = _hash_algorithm(algorithm)
    try:
        key = certificate.public_key()
        oid = signature.signature_algorithm
        if isinstance(key, rsa.RSAPublicKey) and (oid == RSA_ENCRYPTION or oid in _RSA_WITH):
            if oid in _RSA_WITH:
                hash_algorithm = _hash_algorithm(_RSA_WITH[oid])
            key.verify(
                signature.signature, signature.signed_attributes, padding.PKCS1v15(), hash_algorithm
            )
        elif isinstance(key, ec.EllipticCurvePublicKey) and oid in _ECDSA_WITH:
            hash_algorithm = _hash_algorithm(_ECDSA_WITH[oid])
            key.verify(signature.signature, signature.signed_attributes, ec.ECDSA(hash_algorithm))
        else:
            return f"unsupported signature algorithm {oid} for this certificate's key"
    except InvalidSignature:
        return "the signature does not verify with the certificate's key"
    except (ValueError, UnsupportedAlgorithm) as error:
        return f"the certificate's key cannot be used: {error}"
    return None


# --- The certificate table ------------------------------------------------------------------


@dataclass(frozen=True)
class WinCertificate:
    revision: int
    certificate_type: int
    data: bytes


def win_certificate(signed_data: bytes) -> bytes:
    """A WIN_CERTIFICATE entry for a PKCS#7 SignedData, zero-padded to 8 bytes.

    dwLength excludes the padding; the Certificate Table directory entry's size includes it.
    """
    length = WIN_CERTIFICATE_HEADER_SIZE + len(signed_data)
    header: bytes = pe.WinCertificateHeader.build(
        c.Container(
            dwLength=length,
            wRevision=WIN_CERT_REVISION_2_0,
            wCertificateType=WIN_CERT_TYPE_PKCS_SIGNED_DATA,
        )
    )
    return header + signed_data + b"\0" * (align_up(length, CERTIFICATE_TABLE_ALIGNMENT) - length)


def read_certificate_table(stream: BinaryIO, image: pe.PeImage) -> tuple[WinCertificate, ...]:
    """The entries of the image's certificate table (none for an unsigned image)."""
    location = image.signature
    if location is None:
        return ()
    offset, size = location
    if offset + size > image.file_size:
        raise FormatError(
            f"the certificate table (0x{size:x} bytes at 0x{offset:x}) runs past the end of "
            f"the file (0x{image.file_size:x})"
        )
    if size > MAX_CERTIFICATE_TABLE:
        raise FormatError(f"a certificate table of {size} bytes is implausibly large")
    stream.seek(offset)
    table = stream.read(size)
    if len(table) != size:
        raise FormatError("the file ended inside its certificate table")
    entries: list[WinCertificate] = []
    position = 0
    while position + WIN_CERTIFICATE_HEADER_SIZE <= size and len(entries) < MAX_CERTIFICATES:
        header = pe.WinCertificateHeader.parse(table[position:])
        length = int(header.dwLength)
        if length < WIN_CERTIFICATE_HEADER_SIZE or position + length > size:
            raise FormatError(
                f"certificate table entry at 0x{offset + position:x} has a bad length ({length})"
            )
        entries.append(
            WinCertificate(
                int(header.wRevision),
                int(header.wCertificateType),
                table[position + WIN_CERTIFICATE_HEADER_SIZE : position + length],
            )
        )
        position += align_up(length, CERTIFICATE_TABLE_ALIGNMENT)
    if any(table[position:]):
        raise FormatError("junk after the last certificate table entry")
    return tuple(entries)


def read_signatures(stream: BinaryIO, image: pe.PeImage) -> tuple[AuthenticodeSignature, ...]:
    """The Authenticode signatures in the image's certificate table, in table order."""
    signatures = []
    for entry in read_certificate_table(stream, image):
        if entry.certificate_type != WIN_CERT_TYPE_PKCS_SIGNED_DATA:
            raise FormatError(
                f"certificate table entry of type 0x{entry.certificate_type:04x}; "
                "UEFI images carry PKCS#7 SignedData (type 0x0002)"
            )
        signatures.append(parse_signature(entry.data))
    return tuple(signatures)
