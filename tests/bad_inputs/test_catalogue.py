"""The bad-input catalogue: every case in cases.toml must be refused with exit code 2 and exactly
its one line on stderr, no traceback, and nothing written (no output, no temporary beside it).

A case is a description (a base from cases.toml, edited, or its own text), the files it needs
(made here, by the recipes in RECIPES) and the command; its `error` is the line after
"hlimage: error: ", with the test's directory written {tmp}, the payload cache {cache} and the
size of a staged file {size:NAME}.
"""

from __future__ import annotations

import bz2
import functools
import gzip
import lzma
import os
import re
import shlex
import struct
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lz4.frame
import pytest

from hlimage.formats import compression, cpio
from tests.conftest import run_cli
from tests.support import payloads, xen_images
from tests.support.signing import key_and_certificate

HERE = Path(__file__).parent
PREFIX = "hlimage: error: "
DEFAULT_RUN = "build {config} -f unified -o {out}"


@dataclass(frozen=True)
class Case:
    id: str
    why: str
    error: str
    description: str | None
    files: dict[str, str] = field(default_factory=dict)
    run: str = DEFAULT_RUN
    out: str = "out"
    out_exists: str | None = None
    """'directory': the output path is a directory already (that must be left as it was)."""
    env: dict[str, str] = field(default_factory=dict)


def _description(case: dict[str, Any], bases: dict[str, dict[str, Any]]) -> str | None:
    if "description" in case:
        return str(case["description"])
    if "base" not in case:
        return None
    text = str(bases[case["base"]]["text"])
    for old, new in case.get("replace", []):
        assert old in text, f"{case['id']}: {old!r} is not in base {case['base']}"
        text = text.replace(old, new, 1)
    if "repeat" in case:
        snippet, count = case["repeat"]
        text += "".join(str(snippet).replace("{i}", str(i)) for i in range(int(count)))
    return text + str(case.get("append", ""))


def load_cases() -> list[Case]:
    data = tomllib.loads((HERE / "cases.toml").read_text())
    bases = data["base"]
    cases = []
    for raw in data["case"]:
        base_files = bases[raw["base"]].get("files", {}) if "base" in raw else {}
        cases.append(
            Case(
                id=raw["id"],
                why=raw["why"],
                error=raw["error"],
                description=_description(raw, bases),
                files={**base_files, **raw.get("files", {})},
                run=raw.get("run", DEFAULT_RUN),
                out=raw.get("out", "out"),
                out_exists=raw.get("out_exists"),
                env=raw.get("env", {}),
            )
        )
    return cases


# --- Recipes: how the files a case needs are made ---------------------------------------------


@functools.cache
def _initramfs(arch: str) -> bytes:
    return gzip.compress(payloads.initramfs_cpio(arch, "dom0"), compresslevel=1, mtime=0)


@functools.cache
def _kernel_head_gzip(name: str) -> bytes:
    """A gzip'd kernel that probes like the real one (the headers are in its first MiB)."""
    with (payloads.CACHE / name).open("rb") as stream:
        return gzip.compress(stream.read(1 << 20), compresslevel=1, mtime=0)


@functools.cache
def _signed_xen(scratch: Path) -> Path:
    from hlimage.secureboot.trust import SigningKey, sign_file

    key_pem, cert_pem = key_and_certificate()
    signed = scratch / "signed-xen.efi"
    sign_file(payloads.CACHE / "x86_64/xen.efi", signed, SigningKey(key_pem, cert_pem, None))
    return signed


@functools.cache
def _certificate_of(kind: str) -> bytes:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.x509.oid import NameOID

    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if kind == "ec":
        key = ec.generate_private_key(ec.SECP256R1())
    else:
        key = rsa.generate_private_key(65537, int(kind.removeprefix("rsa")))
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"hlimage {kind} test")])
    start = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    certificate = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(start).not_valid_after(start + datetime.timedelta(days=3650))
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    return certificate.public_bytes(serialization.Encoding.PEM)


@functools.cache
def _small_fit() -> bytes:
    import io

    from hlimage.formats import fit

    script = fit.FitImage("script", "script", b"bootm ${scriptaddr}\n")
    conf = fit.FitConfiguration("conf-1", kernel="script")
    out = io.BytesIO()
    fit.write(fit.Fit("a FIT", 0, [script], [conf], default_image="script"), out)
    return out.getvalue()


@functools.cache
def _unified(scratch: Path) -> Path:
    """A unified image, to stand for a xen.efi that already has payload sections."""
    from hlimage import build, config

    directory = scratch / "unified"
    directory.mkdir()
    (directory / "initrd.gz").write_bytes(_initramfs("x86_64"))
    description = directory / "hlimage.toml"
    description.write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "{payloads.CACHE}/x86_64/xen.efi"\n'
        f'[[domain]]\nname = "dom0"\nkernel = "{payloads.CACHE}/x86_64/vmlinuz"\n'
        'initrd = "initrd.gz"\n'
    )
    output = directory / "unified.efi"
    build.build(config.load(description), "unified", output, manifest=False)
    return output


@functools.cache
def _hyperlaunch_xen() -> bytes:
    """Xen's multiboot image with the v6 hyperlaunch parser's strings in it, which is what
    hlimage looks for (no released Xen has the parser)."""
    plain = gzip.decompress((payloads.CACHE / "x86_64/xen.gz").read_bytes())
    return gzip.compress(plain + b"\0hypervisor,xen\0module-index\0", compresslevel=1, mtime=0)


@functools.cache
def _dtb_with_smmuv3() -> bytes:
    from hlimage.formats import fdt

    tree = fdt.parse((payloads.CACHE / payloads.ARM64_DTB).read_bytes())
    smmu = tree.root.add_child(fdt.Node("smmuv3@9050000"))
    smmu.set("compatible", fdt.string("arm,smmu-v3"))
    smmu.set("reg", fdt.cells(0, 0x9050000, 0, 0x20000))
    smmu.set("#iommu-cells", fdt.u32(1))
    return tree.build()


def _qemu_dtb(memory: str | None = None, reserved: tuple[int, str] | None = None) -> bytes:
    from hlimage.config import parse_size
    from hlimage.formats import fdt

    tree = fdt.parse((payloads.CACHE / payloads.ARM64_DTB).read_bytes())
    if memory is not None:
        size = parse_size(memory)
        assert size is not None
        node = tree.node("/memory@40000000")
        assert node is not None
        node.set("reg", fdt.cells(0, 0x40000000, size >> 32, size & 0xFFFFFFFF))
    if reserved is not None:
        address, length = reserved
        size = parse_size(length)
        assert size is not None
        parent = tree.ensure("/reserved-memory")
        for key, value in (("#address-cells", 2), ("#size-cells", 2)):
            parent.set(key, fdt.u32(value))
        parent.set("ranges", fdt.empty())
        carveout = parent.add_child(fdt.Node(f"carveout@{address:x}"))
        carveout.set("reg", fdt.cells(0, address, 0, size))
        carveout.set("no-map", fdt.empty())
    return tree.build()


def _lz4_literal_block(data: bytes) -> bytes:
    """One LZ4 block holding `data` as literals only: valid for any decoder, and the same bytes
    whatever lz4 library is installed (so the catalogue's sizes do not move)."""
    token, length = (0xF0, len(data) - 15) if len(data) >= 15 else (len(data) << 4, -1)
    extra = b"" if length < 0 else b"\xff" * (length // 255) + bytes([length % 255])
    return bytes([token]) + extra + data


def _zstd_raw_frame(data: bytes) -> bytes:
    """A zstd frame of raw (stored) blocks: valid zstd, and the same bytes whatever zstd."""
    out = bytearray(struct.pack("<I", compression.ZSTD_MAGIC))
    out += b"\x00\x38"  # no checksum, no content size; a 128 KiB window
    size = compression.ZSTD_BLOCK_MAX
    blocks = [data[i : i + size] for i in range(0, len(data), size)]
    for index, block in enumerate(blocks):
        last = index == len(blocks) - 1
        out += (len(block) << 3 | int(last)).to_bytes(3, "little") + block
    return bytes(out)


def _pipe_source(source: str) -> bytes:
    kind, _, argument = source.partition(" ")
    match kind:
        case "cache":  # PATH: a cached payload, whole
            return (payloads.CACHE / argument).read_bytes()
        case "cpio":  # ARCH: the marker initramfs, uncompressed
            return payloads.initramfs_cpio(argument, "dom0")
    raise AssertionError(f"unknown pipe source {source!r}")


def _pipe_step(data: bytes, step: str) -> bytes:
    operation, _, argument = step.partition(" ")
    match operation:
        case "head":  # N: the first N bytes
            return data[: int(argument)]
        case "drop":  # N: all but the last N bytes
            return data[: -int(argument)]
        case "half":
            return data[: len(data) // 2]
        case "no-trailer":  # a cpio archive without its last header (the TRAILER!!! entry)
            return data[: data.rfind(cpio.NEWC_MAGIC)]
        case "gzip":
            return gzip.compress(data, compresslevel=1, mtime=0)
        case "gunzip":
            return gzip.decompress(data)
        case "xz":
            return lzma.compress(data, preset=0)
        case "zstd-raw":
            return _zstd_raw_frame(data)
        case "lz4-legacy-raw":  # one literal-only block, framed as LZ4 legacy
            block = _lz4_literal_block(data)
            return struct.pack("<II", compression.LZ4_LEGACY_MAGIC, len(block)) + block
    raise AssertionError(f"unknown pipe step {step!r}")


@functools.cache
def _pipe(recipe: str) -> bytes:
    source, *steps = (part.strip() for part in recipe.split("|"))
    data = _pipe_source(source)
    for step in steps:
        data = _pipe_step(data, step)
    return data


def _sparse(path: Path, size: str) -> None:
    from hlimage.config import parse_size

    length = parse_size(size)
    assert length is not None
    with path.open("wb") as stream:
        stream.truncate(length)  # a hole: nothing is read before the refusal


def make(directory: Path, scratch: Path, name: str, recipe: str) -> None:
    """Make the file `name` in `directory` by `recipe`: a kind and its argument."""
    path = directory / name
    kind, _, argument = recipe.partition(" ")
    match kind:
        case "initramfs":  # ARCH: a marker initramfs, gzip'd
            path.write_bytes(_initramfs(argument))
        case "link":  # PATH: a symlink to a cached payload
            path.symlink_to(payloads.CACHE / argument)
        case "head":  # PATH BYTES: the first BYTES bytes of a cached payload
            source, count = argument.split()
            with (payloads.CACHE / source).open("rb") as stream:
                path.write_bytes(stream.read(int(count)))
        case "pipe":  # SOURCE | STEP | ...: a payload cut, compressed... (see _pipe_step)
            path.write_bytes(_pipe(argument))
        case "gzip-truncated":  # PATH: a kernel's first MiB gzip'd, cut in half
            data = _kernel_head_gzip(argument)
            path.write_bytes(data[: len(data) // 2])
        case "gzip-padded":  # PATH: the same, whole, with 512 zero bytes after it
            path.write_bytes(_kernel_head_gzip(argument) + bytes(512))
        case "corrupt-gzip":  # a gzip header followed by junk
            path.write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + b"junk" * 64)
        case "xz":  # TEXT, xz-compressed
            path.write_bytes(lzma.compress(argument.encode()))
        case "bzip2":  # TEXT, bzip2-compressed
            path.write_bytes(bz2.compress(argument.encode()))
        case "lz4-frame":  # a cpio start in the LZ4 frame format (Linux reads only legacy)
            path.write_bytes(lz4.frame.compress(b"070701" + bytes(4096)))
        case "sparse":  # SIZE: all hole
            _sparse(path, argument)
        case "text":  # TEXT with Python escapes; \xe9 is that byte
            path.write_bytes(argument.encode("latin-1").decode("unicode_escape").encode("latin-1"))
        case "empty":
            path.write_bytes(b"")
        case "directory":
            path.mkdir()
        case "key":  # a PEM RSA key, unencrypted
            path.write_bytes(key_and_certificate()[0])
        case "cert":  # its self-signed certificate
            path.write_bytes(key_and_certificate()[1])
        case "cert-of":  # ec or rsaBITS: a self-signed certificate of a key of that kind
            path.write_bytes(_certificate_of(argument))
        case "fit":  # a small FIT: a script image and a configuration
            path.write_bytes(_small_fit())
        case "signed-xen":  # Debian's x86 xen.efi, signed
            path.symlink_to(_signed_xen(scratch))
        case "unified":  # a unified image: a xen.efi with payload sections already
            path.symlink_to(_unified(scratch))
        case "hyperlaunch-xen":  # xen.gz with the hyperlaunch parser's strings
            path.write_bytes(_hyperlaunch_xen())
        case "restamped-xen":  # RELEASE [+CONFIG_X|-CONFIG_Y ...]: arm64 xen.efi saying so
            release, *switches = argument.split()
            options = {switch[1:]: switch[0] == "+" for switch in switches}
            xen_images.restamped(path, release, options)
        case "dtb-smmuv3":  # QEMU virt's tree with an SMMUv3, as -machine virt,iommu=smmuv3
            path.write_bytes(_dtb_with_smmuv3())
        case "dtb-memory":  # SIZE: QEMU's arm64 tree with that much RAM at 0x40000000
            path.write_bytes(_qemu_dtb(memory=argument))
        case "dtb-reserved":  # ADDRESS SIZE: QEMU's arm64 tree with a /reserved-memory carveout
            address, length = argument.split()
            path.write_bytes(_qemu_dtb(reserved=(int(address, 0), length)))
        case _:
            raise AssertionError(f"unknown recipe {recipe!r} for {name}")


# --- The test ---------------------------------------------------------------------------------

CASES = load_cases()


def _listing(root: Path) -> dict[str, str]:
    """Every path under root, with what it is: a build that writes anything changes this."""
    found = {}
    for path in sorted(root.rglob("*")):
        kind = "link" if path.is_symlink() else "dir" if path.is_dir() else "file"
        found[str(path.relative_to(root))] = kind
    return found


def prepare(case: Case, directory: Path, scratch: Path) -> list[str]:
    """The case's files and description in `directory`; returns the command's argv."""
    for name, recipe in case.files.items():
        make(directory, scratch, name, recipe)
    config = directory / "hlimage.toml"
    if case.description is not None:
        config.write_text(case.description.replace("{cache}", str(payloads.CACHE)))
    if case.out_exists == "directory":
        (directory / case.out).mkdir()
        (directory / case.out / "notes.txt").write_text("someone's file\n")
    words = shlex.split(case.run)
    values = {"config": str(config), "out": str(directory / case.out), "tmp": str(directory)}
    return [word.format(**values) for word in words]


def sized(error: str, directory: Path) -> str:
    """`error` with {size:NAME} as the size of the staged file NAME: for a compressed file,
    whose size each version of the compressor makes a little different."""
    return re.sub(
        r"\{size:([^}]+)\}", lambda match: str((directory / match[1]).stat().st_size), error
    )


@pytest.fixture(scope="session")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where files shared by several cases (a signed xen.efi, a unified image) are made once."""
    return tmp_path_factory.mktemp("bad-input-shared")


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_refused_with_one_line(
    case: Case, cache: Path, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in case.env.items():
        monkeypatch.setenv(name, value)
    argv = prepare(case, tmp_path, scratch)
    before = _listing(tmp_path)
    result = run_cli(*argv)
    assert "Traceback" not in result.stderr, result.stderr
    assert result.code == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"{case.id}: expected one line on stderr, got:\n{result.stderr}"
    assert lines[0].startswith(PREFIX), lines[0]
    line = lines[0][len(PREFIX) :].replace(str(tmp_path), "{tmp}")
    line = line.replace(str(payloads.CACHE), "{cache}")
    assert line == sized(case.error, tmp_path)
    assert result.stdout == ""
    # Nothing written: no output, no manifest, no temporary left beside them.
    assert _listing(tmp_path) == before


def test_catalogue_is_big_enough_and_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) >= 32 and len(set(ids)) == len(ids)
    assert all(case.why for case in CASES)


def test_signed_xen_efi_is_a_warning_for_build(cache: Path, tmp_path: Path, scratch: Path) -> None:
    """`build` takes a signed xen.efi, dropping the signature with a warning (sign refuses)."""
    make(tmp_path, scratch, "xen.efi", "signed-xen")
    make(tmp_path, scratch, "initrd.gz", "initramfs x86_64")
    description = tmp_path / "hlimage.toml"
    description.write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "xen.efi"\n[[domain]]\nname = "dom0"\n'
        f'kernel = "{cache}/x86_64/vmlinuz"\ninitrd = "initrd.gz"\n'
    )
    output = tmp_path / "out.efi"
    result = run_cli("-q", "build", description, "-f", "unified", "-o", output, "--no-manifest")
    assert result.code == 0, result.stderr
    assert result.stderr == (
        f"hlimage: warning: {tmp_path}/xen.efi: its Authenticode signature is removed (adding "
        "sections breaks it); sign the output afterwards\n"
    )
    with output.open("rb") as stream:
        from hlimage.formats import pe

        assert pe.parse(stream).signature is None


if os.environ.get("HLIMAGE_CATALOGUE_PRINT"):
    # HLIMAGE_CATALOGUE_PRINT=1 pytest tests/bad_inputs -k ID -s: what each case says now.
    @pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
    def test_print(case: Case, cache: Path, tmp_path: Path, scratch: Path) -> None:
        argv = prepare(case, tmp_path, scratch)
        result = run_cli(*argv)
        shown = result.stderr.replace(str(tmp_path), "{tmp}").replace(
            str(payloads.CACHE), "{cache}"
        )
        print(f"\n[{case.id}] exit {result.code}\n{shown}")


def test_output_dot_is_the_current_directory(
    cache: Path, tmp_path: Path, scratch: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`-o .` (an empty current directory) is a directory output like any other; it once
    ended in a traceback naming the manifest's path."""
    make(tmp_path, scratch, "initrd.gz", "initramfs x86_64")
    description = tmp_path / "hlimage.toml"
    description.write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "{cache}/x86_64/xen.efi"\n[[domain]]\n'
        f'name = "dom0"\nkernel = "{cache}/x86_64/vmlinuz"\ninitrd = "{tmp_path}/initrd.gz"\n'
    )
    here = tmp_path / "esp"
    here.mkdir()
    monkeypatch.chdir(here)
    result = run_cli("-q", "build", description, "-f", "esp", "-o", ".")
    assert result.code == 0, result.stderr
    assert (here / "EFI" / "BOOT" / "BOOTX64.EFI").is_file()
    assert (tmp_path / "esp.manifest.json").is_file()
