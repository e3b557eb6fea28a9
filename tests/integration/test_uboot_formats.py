"""hlimage's U-Boot formats read by U-Boot's own tools: mkimage, dumpimage, fit_check_sign.

A script image must equal mkimage's byte for byte; a FIT must equal mkimage -f's of the same
.its once dtc has packed mkimage's padding away; U-Boot's verified-boot check must accept a
signed FIT and refuse one changed anywhere it covers.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hlimage import __version__
from hlimage.formats import fdt, fit, uimage
from hlimage.secureboot import sign, trust
from tests.conftest import require
from tests.support import fits, signing, uboot_tools

SCRIPT = b"echo hello from hlimage\nbooti 0x40400000 - 0x40800000\n"


def tool(name: str) -> str:
    program = shutil.which(name)
    require(program is not None, f"{name} is not installed; run scripts/setup (u-boot-tools)")
    assert program is not None
    return program


def run(*argv: str | Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(arg) for arg in argv], capture_output=True, text=True, check=False, env=env
    )


def fit_check_sign() -> Path:
    path = uboot_tools.FIT_CHECK_SIGN
    require(path.is_file(), f"{path} missing; run python -m tests.support.uboot_tools")
    return path


@pytest.mark.parametrize("name", ["hlimage boot", "b" * 32])
def test_script_image_is_mkimages(tmp_path: Path, name: str) -> None:
    source = tmp_path / "boot.txt"
    source.write_bytes(SCRIPT)
    ours = uimage.script_image(SCRIPT, name=name, timestamp=1700000000)
    env = {**os.environ, "SOURCE_DATE_EPOCH": "1700000000"}
    argv = ["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none", "-n", name]
    result = run(tool("mkimage"), *argv, "-d", source, tmp_path / "boot.scr", env=env)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "boot.scr").read_bytes() == ours


def test_mkimage_lists_script_image(tmp_path: Path) -> None:
    path = tmp_path / "boot.scr"
    path.write_bytes(uimage.script_image(SCRIPT, name="hlimage boot", timestamp=1700000000))
    listing = run(tool("mkimage"), "-l", path)
    assert listing.returncode == 0, listing.stderr
    assert "Image Name:   hlimage boot" in listing.stdout
    assert "AArch64 Linux Script (uncompressed)" in listing.stdout
    assert f"Data Size:    {len(SCRIPT) + 8} Bytes" in listing.stdout
    assert f"Image 0: {len(SCRIPT)} Bytes" in listing.stdout
    assert uimage.parse(path.read_bytes()).script() == SCRIPT


def test_mkimage_lists_fit(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    path = fits.write(sample.fit, tmp_path / "image.fit")
    listing = run(tool("mkimage"), "-l", path)
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert "FIT description: hlimage test" in text
    for index, (name, kind) in enumerate(
        [("script", "Script"), ("xen", "Kernel Image"), ("fdt", "Flat Device Tree"),
         ("initrd", "RAMDisk Image")]
    ):  # fmt: skip
        assert f" Image {index} ({name})" in text
        assert f"Type:         {kind}" in text
        size = sample.files[name].stat().st_size
        assert f"Data Size:    {size} Bytes" in text
    assert "Load Address: 0x48000000" in text and "Entry Point:  0x48000000" in text
    assert "Load Address: 0x48800000" in text and "Load Address: 0x49000000" in text
    assert text.count("Hash algo:    sha256") == 4
    assert " Default Configuration: 'conf-1'" in text
    assert "Kernel:       xen" in text and "FDT:          fdt" in text
    assert "Loadables:    initrd" in text


def test_dumpimage_extracts_each_image(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    path = fits.write(sample.fit, tmp_path / "image.fit")
    for index, image in enumerate(sample.fit.images):
        out = tmp_path / f"out-{index}"
        result = run(tool("dumpimage"), "-T", "flat_dt", "-p", str(index), "-o", out, path)
        assert result.returncode == 0, result.stderr
        assert out.read_bytes() == sample.files[image.name].read_bytes(), image.name


def test_dtc_decompiles_without_warnings(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    path = fits.write(sample.fit, tmp_path / "image.fit")
    result = run(tool("dtc"), "-I", "dtb", "-O", "dts", path)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert 'default = "script";' in result.stdout


ITS_IMAGE = """\t\t{name} {{
\t\t\tdescription = "{description}";
\t\t\tdata = /incbin/("{path}");
\t\t\ttype = "{type}";
\t\t\tarch = "arm64";
\t\t\tos = "linux";
\t\t\tcompression = "none";
{addresses}\t\t\thash-1 {{ algo = "sha256"; value = <0>; }};
\t\t}};
"""


def its_of(sample: fits.Sample, directory: Path) -> str:
    """The .its a person would write for the sample. Each hash value is a placeholder that
    mkimage overwrites in place, so that "value" comes where it does in hlimage's string
    block."""
    (directory / "script.bin").write_bytes(fits.SCRIPT)
    paths = {**sample.files, "script": directory / "script.bin"}
    images = []
    for image in sample.fit.images:
        addresses = "".join(
            f"\t\t\t{key} = <0x{value:x}>;\n"
            for key, value in (("load", image.load), ("entry", image.entry))
            if value is not None
        )
        images.append(
            ITS_IMAGE.format(
                name=image.name,
                description=image.description or image.name,
                path=paths[image.name],
                type=image.type,
                addresses=addresses,
            )
        )
    return (
        '/dts-v1/;\n/ {\n\ttimestamp = <0>;\n\tdescription = "hlimage test";\n'
        '\t#address-cells = <1>;\n\timages {\n\t\tdefault = "script";\n'
        + "".join(images)
        + '\t};\n\tconfigurations {\n\t\tdefault = "conf-1";\n\t\tconf-1 {\n'
        '\t\t\tdescription = "Xen";\n\t\t\tkernel = "xen";\n\t\t\tfdt = "fdt";\n'
        '\t\t\tloadables = "initrd";\n\t\t};\n\t};\n};\n'
    )


def test_fit_is_mkimages(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    ours = fits.write(sample.fit, tmp_path / "image.fit").read_bytes()
    its = tmp_path / "image.its"
    its.write_text(its_of(sample, tmp_path))
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(fits.TIMESTAMP)}
    made = run(tool("mkimage"), "-f", its, tmp_path / "mkimage.fit", env=env)
    assert made.returncode == 0, made.stderr
    # mkimage leaves the free space dtc's -p gave it; dtc -p 0 lays out the same tree packed.
    packed = run(tool("dtc"), "-I", "dtb", "-O", "dtb", "-p", "0", "-o", tmp_path / "packed.fit",
                 tmp_path / "mkimage.fit")  # fmt: skip
    assert packed.returncode == 0, packed.stderr
    assert (tmp_path / "packed.fit").read_bytes() == ours


@pytest.fixture
def signed(tmp_path: Path) -> tuple[Path, Path, bytes]:
    """A FIT signed with the key given as PEM files (as --key/--cert), its key tree, the FIT."""
    key_pem, cert_pem = signing.key_and_certificate()
    (tmp_path / "key.pem").write_bytes(key_pem)
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    loaded = trust.load_signing_key(tmp_path / "key.pem", tmp_path / "cert.pem")
    private = sign.load_private_key(loaded.key_pem, loaded.password)
    certificate = sign.load_certificates(loaded.cert_pem)[0]
    public = certificate.public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    sample = fits.sample(tmp_path)
    image = fits.write(
        sample.fit, tmp_path / "image.fit", fit.FitSigner(private, "dev", __version__)
    )
    tree = fdt.DeviceTree()
    fit.add_public_key(tree, public, "dev")
    keys = tmp_path / "key.dtb"
    keys.write_bytes(tree.build())
    return image, keys, sample.files["xen"].read_bytes()


def check_sign(image: Path, keys: Path) -> subprocess.CompletedProcess[str]:
    return run(fit_check_sign(), "-f", image, "-k", keys)


def test_fit_check_sign_accepts(signed: tuple[Path, Path, bytes]) -> None:
    image, keys, _ = signed
    result = check_sign(image, keys)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "sha256,rsa2048:dev+" in result.stdout
    assert "Signature check OK" in result.stdout + result.stderr


def flipped(image: Path, offset: int, name: str) -> Path:
    data = bytearray(image.read_bytes())
    data[offset] ^= 0x01
    path = image.with_name(name)
    path.write_bytes(data)
    return path


def test_fit_check_sign_refuses_a_changed_payload(signed: tuple[Path, Path, bytes]) -> None:
    image, keys, kernel = signed
    offset = image.read_bytes().index(kernel[:64]) + len(kernel) // 2
    result = check_sign(flipped(image, offset, "payload.fit"), keys)
    assert result.returncode != 0
    assert "Bad hash value for 'hash-1' hash node in 'xen' image node" in result.stdout


@pytest.mark.parametrize(
    "what", ["load address", "loadable's hash", "string block", "conf property"]
)
def test_fit_check_sign_refuses_a_changed_signed_byte(
    signed: tuple[Path, Path, bytes], what: str
) -> None:
    """Bytes no image hash covers but the signature does: the signature check itself fails."""
    image, keys, _ = signed
    blob = image.read_bytes()
    tree = fdt.parse(blob)
    initrd_hash = tree.node("/images/initrd/hash-1")
    assert initrd_hash is not None
    offsets = {
        "load address": blob.index(fdt.u32(0x48800000)),
        "loadable's hash": blob.index(initrd_hash.properties["value"]),
        "string block": len(blob) - 2,
        "conf property": blob.index(b"Xen\0"),
    }
    result = check_sign(flipped(image, offsets[what], "changed.fit"), keys)
    assert result.returncode != 0
    assert "Verification failed" in result.stdout
    assert "Failed to verify required signature 'key-dev'" in result.stdout


def test_fit_check_sign_refuses_another_key(
    signed: tuple[Path, Path, bytes], tmp_path: Path
) -> None:
    image, _, _ = signed
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tree = fdt.DeviceTree()
    fit.add_public_key(tree, other.public_key(), "dev")
    keys = tmp_path / "other.dtb"
    keys.write_bytes(tree.build())
    result = check_sign(image, keys)
    assert result.returncode != 0 and "Verification failed" in result.stdout
