"""Secure Boot for hlimage's outputs: the signing key the command line names, signing a file or
a build atomically, and what a PE image's Authenticode digest and signatures are.

`sign.py` does the signing itself; this module is what the commands need around it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import itertools
import os
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import authenticode, pe
from hlimage.formats.payload import CHUNK
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.outputs.registry import OutputFormat
from hlimage.plumbing.atomic import TEMP_MARK, atomic_file
from hlimage.plumbing.messages import note, warn
from hlimage.report import BuildReport
from hlimage.secureboot import sign
from hlimage.xen.probe import probe_system_efi

if TYPE_CHECKING:
    # Only a name for annotations: cryptography has it from 40 on, Debian 12 ships 38.
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

PASSWORD_ENV = "HLIMAGE_KEY_PASSWORD"


@dataclass(frozen=True)
class SigningKey:
    key_pem: bytes
    cert_pem: bytes
    password: bytes | None
    name: str = "hlimage"
    """The key's name: its file's stem, as mkimage -k DIR names keys (a FIT's key-name-hint)."""


def _read(path: Path, option: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise HlimageError(f"{option} {path}: cannot read it: {error.strerror}") from None


def _public(key: PublicKeyTypes) -> bytes:
    return key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _certificate_key(certificate: x509.Certificate) -> bytes | None:
    try:
        return _public(certificate.public_key())
    except (ValueError, UnsupportedAlgorithm):
        return None


def load_signing_key(key: Path, cert: Path, password_file: Path | None = None) -> SigningKey:
    """Read and check the key and certificate now, so that a build fails before its work."""
    key_pem = _read(key, "--key")
    cert_pem = _read(cert, "--cert")
    password = None
    if password_file is not None:
        password = _read(password_file, "--key-password-file")
        # A file written with echo ends in a newline that is not part of the passphrase.
        password = password.removesuffix(b"\n").removesuffix(b"\r")
    elif b"ENCRYPTED" in key_pem:
        from_environment = os.environ.get(PASSWORD_ENV)
        if from_environment is None:
            raise HlimageError(
                f"--key {key}: the private key is encrypted; give its passphrase with "
                f"--key-password-file FILE or in the {PASSWORD_ENV} environment variable"
            )
        password = from_environment.encode()
    private = sign.load_private_key(key_pem, password)
    certificates = sign.load_certificates(cert_pem)
    wanted = _public(private.public_key())
    if not any(_certificate_key(certificate) == wanted for certificate in certificates):
        raise HlimageError(
            f"--cert {cert}: no certificate in it is for the private key given with --key; "
            "give the certificate that belongs to that key"
        )
    return SigningKey(key_pem, cert_pem, password, key.stem)


def _warn_layout(result: sign.SignResult, path: Path) -> None:
    if result.extra_bytes:
        what = f"{result.extra_bytes} bytes after its last section (a COFF symbol table?)"
    elif not result.gapless:
        what = "the gaps between its sections' file data"
    else:
        return
    warn(
        f"{path}: {what} are signed, as firmware hashes them, but sbverify warns about them "
        '("gaps between PE/COFF sections?")'
    )


def sign_file(
    input: Path, output: Path, signing: SigningKey, *, replace_signature: bool = False
) -> sign.SignResult:
    """A signed copy of the PE image `input` at `output`, which appears whole or not at all
    (`input` and `output` may be the same file)."""
    with atomic_file(output) as out:
        result = sign.sign_image(
            input,
            out,
            signing.key_pem,
            signing.cert_pem,
            password=signing.password,
            replace_signature=replace_signature,
        )
    _warn_layout(result, input)
    return result


@contextlib.contextmanager
def _temporary_beside(output: Path) -> Iterator[Path]:
    """A file name beside `output`, removed afterwards; a killed build's is cleaned up like any
    other temporary of that output (atomic.py)."""
    if not output.parent.is_dir():
        raise HlimageError(
            f"-o: the directory {output.parent} does not exist; create it first", where=output
        )
    descriptor, name = tempfile.mkstemp(
        dir=output.parent, prefix=f".{output.name}.", suffix=TEMP_MARK
    )
    os.close(descriptor)
    try:
        yield Path(name)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _signable_copy(xen: Path, target: Path) -> Path:
    """`xen`, or a copy of it without what sbverify would warn about, at `target`.

    Debian's xen.efi carries a COFF symbol table after its sections. Firmware hashes such
    bytes and the signature holds, but sbverify warns about them; the copy drops them (and
    any debug sections) as the unified writer does, since nothing reads them at boot.
    """
    with xen.open("rb") as source:
        try:
            image = pe.parse(source)
            layout = authenticode.hash_layout(image)
            if layout.extra is None and layout.gapless:
                return xen
            with target.open("w+b") as out:
                pe.PeWriter(source, image, drop=lambda section: section.is_debug).write([], out)
        except FormatError as error:
            raise HlimageError(f"[xen] efi: {error}", where=xen) from None
    return target


def build_signed(
    system: System,
    output_format: OutputFormat,
    output: Path,
    signing: SigningKey,
    build: Callable[..., BuildReport],
) -> BuildReport:
    """Run `build` (one format's plain build) so that its boot loader comes out signed, as the
    format's registry record says.

    Signing.SELF (fit): `build(system, output, signing)` signs as it writes.
    Signing.OUTPUT (unified): built beside the output, then signed into place, as sections
    added after signing would break the signature. Signing.LOADER (esp, disk): their
    EFI/BOOT/BOOT*.EFI is a copy of xen.efi, so the build is given a signed xen.efi instead.
    Signing.SELF (a boot chain: shim or systemd-boot before Xen): the build changes the files
    it signs, so it is given the key, as `build(system, output, key)`.
    """
    name = output_format.name
    signable = " or ".join(", ".join(registry.signable()).rsplit(", ", 1))
    if output_format.signing is registry.Signing.NONE:
        if output_format.unsigned_because:
            raise HlimageError(
                f"--key: --format {name} {output_format.unsigned_because}; sign with --format "
                f"{signable}"
            )
        raise HlimageError(
            f"--key: hlimage does not sign --format {name} outputs; sign with --format "
            f"{signable}, or sign its boot file afterwards with hlimage sign"
        )
    if output_format.signing is registry.Signing.SELF:
        report: BuildReport = build(system, output, signing)
        return report
    if output_format.signing is registry.Signing.OUTPUT:
        if output.is_dir():
            raise HlimageError(
                "-o: is a directory, but this format writes one file; name a file", where=output
            )
        with _temporary_beside(output) as unsigned:
            report = build(system, unsigned)
            sign_file(unsigned, output, signing)
        report.output = output
        return report
    xen = system.xen.efi
    if xen is None:
        raise HlimageError(
            '[xen] efi: needed for this format; add efi = "path/to/xen.efi"', where=system.source
        )
    # Checked on the user's file first, so that errors about it name that file.
    probed = probe_system_efi(system)
    with _temporary_beside(output) as stripped, _temporary_beside(output) as signed:
        if probed.signed:
            note(f"{xen}: its signature is replaced by one made with --key")
        sign_file(_signable_copy(xen, stripped), signed, signing, replace_signature=True)
        signed_system = dataclasses.replace(system, xen=dataclasses.replace(system.xen, efi=signed))
        report = build(signed_system, output)
    # The loader's source is the user's xen.efi, not the temporary it was signed into.
    report.artifacts = [
        dataclasses.replace(item, source=str(xen)) if item.source == str(signed) else item
        for item in report.artifacts
    ]
    return report


# --- What a PE image's Authenticode digest and signatures are -------------------------------


def _monotonic(ranges: tuple[tuple[int, int], ...]) -> bool:
    return all(later[0] >= sum(earlier) for earlier, later in itertools.pairwise(ranges))


def file_digests(stream: BinaryIO, image: pe.PeImage) -> tuple[str, str]:
    """(sha256 of the file, Authenticode sha256 of the image), in one pass where the hashed
    ranges run in file order, as in every image hlimage writes."""
    ranges = authenticode.hash_layout(image).all_ranges
    whole = hashlib.sha256()
    if not _monotonic(ranges):
        stream.seek(0)
        while chunk := stream.read(CHUNK):
            whole.update(chunk)
        return whole.hexdigest(), authenticode.image_digest(stream, image).hex()
    image_hash = hashlib.sha256()
    stream.seek(0)
    position = 0
    index = 0
    # hashlib lets go of the GIL on large updates: the two hashes run on two cores.
    with ThreadPoolExecutor(max_workers=1) as worker:
        while chunk := stream.read(CHUNK):
            pending = worker.submit(whole.update, chunk)
            end = position + len(chunk)
            view = memoryview(chunk)
            while index < len(ranges):
                start, length = ranges[index]
                if start >= end:
                    break
                low, high = max(start, position), min(start + length, end)
                if high > low:
                    image_hash.update(view[low - position : high - position])
                if start + length > end:
                    break
                index += 1
            position = end
            pending.result()
    if index < len(ranges):
        raise FormatError("the file ended before the data its headers describe")
    return whole.hexdigest(), image_hash.hexdigest()


def describe(path: Path, *, digests: bool = True) -> dict[str, Any]:
    """The Authenticode digest (sha256, as firmware computes it) and what each signature says.

    Plain data for `inspect --json` and the manifest. Without `digests` nothing is hashed, so
    whether a signature's digest matches the file is left open (None).
    """
    result: dict[str, Any] = {}
    with path.open("rb") as stream:
        try:
            image = pe.parse(stream)
        except FormatError as error:
            return {"problem": f"not a PE image hlimage reads: {error}", "signatures": []}
        computed: dict[str, bytes] = {}
        try:
            authenticode.hash_layout(image)
        except FormatError as error:
            result["problem"] = str(error)
            digests = False
        if digests:
            computed["sha256"] = authenticode.image_digest(stream, image)
            result["sha256"] = computed["sha256"].hex()
        try:
            signatures = authenticode.read_signatures(stream, image)
        except FormatError as error:
            result["signatures"] = []
            result["signature_problem"] = str(error)
            return result
        entries = []
        for signature in signatures:
            algorithm = signature.digest_algorithm
            matches = None
            if digests and algorithm in authenticode.DIGEST_OIDS:
                if algorithm not in computed:
                    computed[algorithm] = authenticode.image_digest(stream, image, algorithm)
                matches = computed[algorithm] == signature.image_digest
            signer = signature.signer
            problem = (
                "the signer's certificate is not embedded"
                if signer is None
                else authenticode.signature_problem(signature, signer)
            )
            entries.append(
                {
                    "signer": signature.signer_subject,
                    "digest_algorithm": algorithm,
                    "digest_matches": matches,
                    "problem": problem,
                }
            )
        result["signatures"] = entries
    return result


def render(data: dict[str, Any], indent: str = "  ") -> list[str]:
    """Text lines for `describe`'s result."""
    lines = []
    if "sha256" in data:
        lines.append(f"{indent}Authenticode sha256 {data['sha256']}")
    if data.get("problem"):
        lines.append(f"{indent}Authenticode: {data['problem']}")
    if data.get("signature_problem"):
        lines.append(f"{indent}signatures unreadable: {data['signature_problem']}")
    for number, signature in enumerate(data.get("signatures", []), start=1):
        matches = signature["digest_matches"]
        verdict = {
            True: "digest matches",
            False: "digest DOES NOT match the file (changed after signing)",
            None: "digest not checked",
        }[matches]
        line = (
            f"{indent}signature {number}: {signature['signer']}, "
            f"{signature['digest_algorithm']}, {verdict}"
        )
        if signature["problem"]:
            line += f"; invalid: {signature['problem']}"
        lines.append(line)
    return lines
