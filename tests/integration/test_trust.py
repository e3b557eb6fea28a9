"""Signing, the build manifest, `.sbat` and what inspect says about signatures, checked against
sbsign, sbverify and sha256sum."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pefile
import pytest
from cryptography.hazmat.primitives import serialization

from hlimage import __version__
from hlimage.formats import authenticode, pe
from tests.conftest import Result, require, run_cli
from tests.support import descriptions, payloads

SNAKEOIL_KEY = Path("/usr/share/ovmf/PkKek-1-snakeoil.key")
SNAKEOIL_CERT = Path("/usr/share/ovmf/PkKek-1-snakeoil.pem")
SNAKEOIL_SUBJECT = "O=SnakeOil,L=Fort Collins,ST=Colorado,C=US"
SBAT_HEADER = "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
SBAT_XEN = "xen,1,Xen Project,xen,4.17,https://xenproject.org/\n"
TEMPLATE = Path(__file__).resolve().parents[2] / "uefi" / "sbat.csv"


def tool(name: str) -> str:
    program = shutil.which(name)
    require(program is not None, f"{name} is not installed (Debian: sbsigntool, coreutils)")
    assert program is not None
    return program


@pytest.fixture
def snakeoil(cache: Path, tmp_path: Path) -> Path:
    """The snakeoil key's passphrase in a file, as --key-password-file reads it."""
    require(SNAKEOIL_KEY.is_file(), f"{SNAKEOIL_KEY} is missing (Debian: ovmf)")
    password = tmp_path / "passphrase"
    password.write_text("snakeoil\n")
    return password


def signing_options(password: Path) -> list[str | Path]:
    return ["--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_CERT, "--key-password-file", password]


def build(description: Path, output: Path, *extra: str | Path, fmt: str = "unified") -> Result:
    result = run_cli("build", description, "-f", fmt, "-o", output, *extra)
    assert result.code == 0, result.stderr
    return result


def refused(result: Result, *words: str) -> None:
    assert result.code == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and line.startswith("hlimage: error: "), result.stderr
    for word in words:
        assert word in line


def sbverify(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool("sbverify"), "--cert", SNAKEOIL_CERT, path], capture_output=True,
                          text=True, check=False)  # fmt: skip


def assert_sbverify_clean(path: Path) -> None:
    verdict = sbverify(path)
    assert verdict.returncode == 0, verdict.stderr
    assert verdict.stdout.strip() == "Signature verification OK"
    # No "gaps between PE/COFF sections?": every byte before the signature is in a section.
    assert verdict.stderr == ""


def flip_byte(path: Path, target: Path) -> Path:
    """A copy with one byte changed in the middle of the largest section."""
    with path.open("rb") as stream:
        largest = max(pe.parse(stream).sections, key=lambda section: section.raw_size)
    data = bytearray(path.read_bytes())
    data[largest.raw_offset + largest.raw_size // 2] ^= 0x01
    target.write_bytes(bytes(data))
    return target


def image_digest(path: Path) -> str:
    with path.open("rb") as stream:
        return authenticode.image_digest(stream, pe.parse(stream)).hex()


def embedded_digest(path: Path) -> str:
    with path.open("rb") as stream:
        (signature,) = authenticode.read_signatures(stream, pe.parse(stream))
    return signature.image_digest.hex()


def section_bytes(path: Path, name: str) -> bytes:
    """A section's bytes where pefile's headers put them (not pefile's get_data, which rounds
    PointerToRawData down to 0x200 as Windows does; UEFI firmware takes it as written)."""
    image = pefile.PE(str(path), fast_load=True)
    try:
        for section in image.sections:
            if section.Name.rstrip(b"\0").decode() == name:
                start = section.PointerToRawData
                return path.read_bytes()[start : start + section.Misc_VirtualSize]
    finally:
        image.close()
    raise AssertionError(f"no {name} section")


def manifest_of(output: Path) -> dict[str, Any]:
    text = output.with_name(output.name + ".manifest.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def sha256sum(*paths: Path) -> dict[Path, str]:
    lines = subprocess.run([tool("sha256sum"), *map(str, paths)], capture_output=True, text=True,
                           check=True).stdout.splitlines()  # fmt: skip
    return {Path(line.split(None, 1)[1].lstrip("*")): line.split()[0] for line in lines}


# --- Signing ---------------------------------------------------------------------------------


def test_build_signs_the_unified_image(snakeoil: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    image = tmp_path / "xen.efi"
    build(description, image, *signing_options(snakeoil))
    assert_sbverify_clean(image)
    assert embedded_digest(image) == image_digest(image)
    tampered = flip_byte(image, tmp_path / "tampered.efi")
    verdict = sbverify(tampered)
    assert verdict.returncode != 0 and "Image fails hash check" in verdict.stderr
    # Built twice, signed twice: no signing time, so the very same bytes.
    again = tmp_path / "again.efi"
    build(description, again, *signing_options(snakeoil))
    assert again.read_bytes() == image.read_bytes()
    assert not list(tmp_path.glob(".*hlimage-tmp"))


def test_sign_agrees_with_sbsign(
    snakeoil: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    description = descriptions.x86_classic(tmp_path)
    unsigned = tmp_path / "unsigned.efi"
    build(description, unsigned, "--no-manifest")
    # The passphrase from the environment this time.
    monkeypatch.setenv("HLIMAGE_KEY_PASSWORD", "snakeoil")
    ours = tmp_path / "ours.efi"
    result = run_cli("sign", unsigned, "--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_CERT, "-o", ours)
    assert result.code == 0, result.stderr
    assert "signed by O=SnakeOil" in result.stderr
    # sbsign asks for a passphrase on the terminal: give it the key decrypted.
    key = serialization.load_pem_private_key(SNAKEOIL_KEY.read_bytes(), b"snakeoil")
    plain = tmp_path / "plain.key"
    plain.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    theirs = tmp_path / "theirs.efi"
    command: list[str | Path] = [
        tool("sbsign"),
        "--key",
        plain,
        "--cert",
        SNAKEOIL_CERT,
        "--output",
        theirs,
        unsigned,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "gaps between" not in done.stderr
    assert_sbverify_clean(ours)
    assert_sbverify_clean(theirs)
    assert embedded_digest(ours) == embedded_digest(theirs) == image_digest(unsigned)
    assert image_digest(ours) == image_digest(theirs)


def test_signing_a_signed_image_needs_replace_signature(snakeoil: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    signed = tmp_path / "signed.efi"
    build(description, signed, *signing_options(snakeoil))
    again = tmp_path / "again.efi"
    result = run_cli("sign", signed, *signing_options(snakeoil), "-o", again)
    refused(result, str(signed), "already signed", "--replace-signature")
    assert not again.exists() and not list(tmp_path.glob(".again.efi*"))
    result = run_cli("sign", signed, *signing_options(snakeoil), "-o", again,
                     "--replace-signature")  # fmt: skip
    assert result.code == 0, result.stderr
    assert again.read_bytes() == signed.read_bytes()
    # In place: the output may be the input.
    result = run_cli("sign", signed, *signing_options(snakeoil), "-o", signed,
                     "--replace-signature")  # fmt: skip
    assert result.code == 0, result.stderr
    assert_sbverify_clean(signed)


def test_key_and_option_mistakes_are_one_line_errors(
    snakeoil: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HLIMAGE_KEY_PASSWORD", raising=False)
    description = descriptions.x86_classic(tmp_path)
    output = tmp_path / "out.efi"
    key_cert: list[str | Path] = ["--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_CERT]
    wrong = tmp_path / "wrong"
    wrong.write_text("not the passphrase\n")
    cases: list[tuple[list[str | Path], tuple[str, ...]]] = [
        (key_cert, ("--key", "encrypted", "--key-password-file", "HLIMAGE_KEY_PASSWORD")),
        ([*key_cert, "--key-password-file", wrong], ("--key", "wrong passphrase")),
        (["--key", SNAKEOIL_KEY], ("--cert: needed with --key",)),
        (["--key", tmp_path / "absent.key", "--cert", SNAKEOIL_CERT], ("--key", "cannot read")),
        (["--key", SNAKEOIL_KEY, "--cert", SNAKEOIL_KEY, "--key-password-file", snakeoil],
         ("--cert", "cannot load a certificate")),
        (["--key-password-file", snakeoil], ("--key-password-file", "give --key and --cert")),
    ]  # fmt: skip
    for options, words in cases:
        refused(run_cli("build", description, "-f", "unified", "-o", output, *options), *words)
        assert not output.exists()
    grub = tmp_path / "grub"
    result = run_cli("build", description, "-f", "grub", "-o", grub, *signing_options(snakeoil))
    refused(result, "--key", "--format grub", "multiboot2")
    assert not grub.exists() and not (tmp_path / "grub.manifest.json").exists()
    result = run_cli("sign", payloads.CACHE / "x86_64/xen.efi", *key_cert, "-o", output)
    refused(result, "--key", "encrypted")
    assert not output.exists()


# --- ESP and disk: the loader is a signed copy of xen.efi -------------------------------------


def test_esp_and_disk_carry_a_signed_loader(snakeoil: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    tree = tmp_path / "esp"
    build(description, tree, *signing_options(snakeoil), fmt="esp")
    loader = tree / "EFI/BOOT/BOOTX64.EFI"
    # Debian's xen.efi has a COFF symbol table after its sections; the signed copy drops it,
    # so sbverify has no gap to warn about.
    assert_sbverify_clean(loader)
    assert not list(tmp_path.glob(".*hlimage-tmp"))
    manifest = manifest_of(tree)
    (entry,) = manifest["pe_images"]
    assert entry["path"] == "EFI/BOOT/BOOTX64.EFI"
    assert entry["authenticode_sha256"] == image_digest(loader) == embedded_digest(loader)
    assert entry["signers"] == [SNAKEOIL_SUBJECT]
    xen = next(a for a in manifest["artifacts"] if a["role"] == "xen")
    assert xen["sha256"] == hashlib.sha256(loader.read_bytes()).hexdigest()

    disk = tmp_path / "disk.img"
    build(description, disk, *signing_options(snakeoil), fmt="disk")
    # Read back out of the FAT volume: the same signed loader.
    (on_disk,) = manifest_of(disk)["pe_images"]
    assert on_disk == entry


# --- The manifest ----------------------------------------------------------------------------


def test_manifest_digests_are_sha256sum_and_authenticode(tmp_path: Path, cache: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    first = tmp_path / "a" / "xen.efi"
    second = tmp_path / "b" / "xen.efi"
    for output in (first, second):
        output.parent.mkdir()
        build(description, output)
    manifest = manifest_of(first)
    assert first.with_name("xen.efi.manifest.json").read_bytes() == (
        second.with_name("xen.efi.manifest.json").read_bytes()
    )
    assert first.read_bytes() == second.read_bytes()

    kernel, initrd = cache / "x86_64/vmlinuz", tmp_path / "dom0.cpio.gz"
    sums = sha256sum(kernel, initrd, description, first)
    by_name = {a["name"]: a for a in manifest["artifacts"]}
    assert by_name[".kernel"]["sha256"] == sums[kernel]
    assert by_name[".kernel"]["size"] == kernel.stat().st_size
    assert by_name[".ramdisk"]["sha256"] == sums[initrd]
    assert by_name[".ramdisk"]["role"] == "ramdisk"
    assert manifest["description"] == {"name": "hlimage.toml", "sha256": sums[description]}
    (image,) = manifest["pe_images"]
    assert image["sha256"] == sums[first]
    assert image["authenticode_sha256"] == image_digest(first)
    assert image["signers"] == []
    assert manifest["hlimage"] == __version__ and manifest["format"] == "unified"
    assert manifest["device_tree"] is None
    # Deterministic text: sorted keys, nothing that names this machine or this moment.
    text = first.with_name("xen.efi.manifest.json").read_text()
    assert text == json.dumps(json.loads(text), indent=2, sort_keys=True) + "\n"
    assert str(tmp_path) not in text


def test_signed_build_manifest_records_the_signed_image(snakeoil: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    image = tmp_path / "xen.efi"
    build(description, image, *signing_options(snakeoil))
    (entry,) = manifest_of(image)["pe_images"]
    assert entry["authenticode_sha256"] == embedded_digest(image)
    assert entry["sha256"] == hashlib.sha256(image.read_bytes()).hexdigest()
    assert entry["signers"] == [SNAKEOIL_SUBJECT]


def test_no_manifest(tmp_path: Path, cache: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    build(description, tmp_path / "xen.efi", "--no-manifest")
    assert not (tmp_path / "xen.efi.manifest.json").exists()
    build(description, tmp_path / "esp", "--no-manifest", fmt="esp")
    assert sorted(p.name for p in tmp_path.iterdir() if "manifest" in p.name) == []


# --- inspect ---------------------------------------------------------------------------------


def test_inspect_shows_signer_algorithm_and_digest_match(snakeoil: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    image = tmp_path / "xen.efi"
    build(description, image, *signing_options(snakeoil))
    text = run_cli("inspect", image).stdout
    assert f"Authenticode sha256 {image_digest(image)}" in text
    assert f"signature 1: {SNAKEOIL_SUBJECT}, sha256, digest matches" in text
    data = json.loads(run_cli("inspect", "--json", image).stdout)
    assert data["authenticode"] == {
        "sha256": image_digest(image),
        "signatures": [
            {
                "signer": SNAKEOIL_SUBJECT,
                "digest_algorithm": "sha256",
                "digest_matches": True,
                "problem": None,
            }
        ],
    }
    tampered = flip_byte(image, tmp_path / "tampered.efi")
    text = run_cli("inspect", tampered).stdout
    assert "sha256, digest DOES NOT match the file" in text
    assert "digest matches" not in text
    unsigned = tmp_path / "unsigned.efi"
    build(description, unsigned, "--no-manifest")
    data = json.loads(run_cli("inspect", "--json", unsigned).stdout)
    assert data["authenticode"] == {"sha256": image_digest(unsigned), "signatures": []}
    fast = run_cli("inspect", "--no-digests", image).stdout
    assert "Authenticode sha256" not in fast and "sha256, digest not checked" in fast


# --- .sbat -----------------------------------------------------------------------------------


def test_sbat_section_holds_the_file(tmp_path: Path, cache: Path) -> None:
    sbat = tmp_path / "sbat.csv"
    sbat.write_text(SBAT_HEADER + SBAT_XEN)
    description = descriptions.x86_classic(tmp_path)
    description.write_text(description.read_text().replace("[xen]\n", '[xen]\nsbat = "sbat.csv"\n'))
    image = tmp_path / "xen.efi"
    build(description, image)
    assert section_bytes(image, ".sbat") == sbat.read_bytes()
    with image.open("rb") as stream:
        names = [section.name for section in pe.parse(stream).sections]
    assert names[-4:] == [".config", ".kernel", ".ramdisk", ".sbat"]
    sbat_artifact = manifest_of(image)["artifacts"][-1]
    assert sbat_artifact["role"] == "sbat"
    assert sbat_artifact["sha256"] == hashlib.sha256(sbat.read_bytes()).hexdigest()
    assert "| xen,1,Xen Project" in run_cli("inspect", image).stdout

    # The template as shipped: its comment lines stay out of the section (shim has none).
    shutil.copyfile(TEMPLATE, sbat)
    build(description, image)
    assert section_bytes(image, ".sbat").decode() == SBAT_HEADER


@pytest.mark.parametrize(
    ("content", "words"),
    [
        ("xen,1,Xen Project,xen,4.17,https://xenproject.org/\n", ('start with "sbat,"',)),
        (SBAT_HEADER + "xen,1,Xen Project\n", ("line 2 has 3", "at least 6")),
        (SBAT_HEADER.replace("SBAT Version", "SBAT Versión"), ("not ASCII",)),
        ("# only a comment\n", ("no entries",)),
    ],
    ids=["no-header", "short-line", "not-ascii", "empty"],
)
def test_bad_sbat_is_refused(tmp_path: Path, cache: Path, content: str, words: tuple[str]) -> None:
    sbat = tmp_path / "sbat.csv"
    sbat.write_bytes(content.encode())
    description = descriptions.x86_classic(tmp_path)
    description.write_text(description.read_text().replace("[xen]\n", '[xen]\nsbat = "sbat.csv"\n'))
    output = tmp_path / "xen.efi"
    result = run_cli("build", description, "-f", "unified", "-o", output)
    refused(result, str(description), "[xen] sbat: sbat.csv:", *words)
    assert not output.exists() and not (tmp_path / "xen.efi.manifest.json").exists()
