"""The FIT writer: the tree it lays out, its streaming, its signatures' inputs, its refusals.

The U-Boot tools' view of the same images is in tests/integration/test_uboot_formats.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import tracemalloc
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from hlimage import __version__
from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fdt, fit
from tests.support import fits


@pytest.fixture(scope="module")
def key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def built(description: fit.Fit, signer: fit.FitSigner | None = None) -> bytes:
    out = io.BytesIO()
    result = fit.write(description, out, signer)
    assert result.size == len(out.getvalue()) == fit.size(description, signer)
    return out.getvalue()


def test_tree_is_what_u_boot_reads(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    tree = fdt.parse(built(sample.fit))
    root = tree.root
    assert fdt.as_u32(root.properties["timestamp"]) == fits.TIMESTAMP
    assert fdt.as_string(root.properties["description"]) == "hlimage test"
    assert fdt.as_u32(root.properties["#address-cells"]) == 1
    images = tree.node("/images")
    assert images is not None and fdt.as_string(images.properties["default"]) == "script"
    for name, source in sample.files.items():
        node = tree.node(f"/images/{name}")
        assert node is not None
        assert list(node.properties)[:2] == ["description", "data"]
        assert node.properties["data"] == source.read_bytes()
        hash_node = node.child("hash-1")
        assert hash_node is not None and [child.name for child in node.children] == ["hash-1"]
        assert fdt.as_string(hash_node.properties["algo"]) == "sha256"
        assert hash_node.properties["value"] == hashlib.sha256(source.read_bytes()).digest()
    xen = tree.node("/images/xen")
    assert xen is not None
    assert [
        fdt.as_string(xen.properties[key]) for key in ("type", "arch", "os", "compression")
    ] == [
        "kernel",
        "arm64",
        "linux",
        "none",
    ]
    assert fdt.as_u32(xen.properties["load"]) == fdt.as_u32(xen.properties["entry"]) == 0x48000000
    confs = tree.node("/configurations")
    conf = tree.node("/configurations/conf-1")
    assert confs is not None and conf is not None
    assert fdt.as_string(confs.properties["default"]) == "conf-1"
    assert fdt.as_strings(conf.properties["loadables"]) == ["initrd"]
    assert (fdt.as_string(conf.properties["kernel"]), fdt.as_string(conf.properties["fdt"])) == (
        "xen",
        "fdt",
    )


def test_write_reports_each_digest(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    result = fit.write(sample.fit, io.BytesIO())
    assert result.sha256 == {
        name: hashlib.sha256(path.read_bytes()).hexdigest() for name, path in sample.files.items()
    }


def test_byte_identical_across_builds(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    assert built(sample.fit) == built(sample.fit)


def test_high_addresses_take_two_cells(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path, load_base=0x8_8000_0000)
    tree = fdt.parse(built(sample.fit))
    xen = tree.node("/images/xen")
    assert xen is not None and fdt.as_u32(tree.root.properties["#address-cells"]) == 2
    assert fdt.as_u64(xen.properties["load"]) == 0x8_8000_0000


def test_signature_node_and_what_it_signs(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """The signature is over the regions of the hashed nodes and the string block, data left
    out: checked here with the public key; fit_check_sign checks it in the integration tests."""
    sample = fits.sample(tmp_path)
    signer = fit.FitSigner(key, "dev", __version__)
    blob = built(sample.fit, signer)
    tree = fdt.parse(blob)
    signature = tree.node("/configurations/conf-1/signature-1")
    assert signature is not None
    assert list(signature.properties) == [
        "algo",
        "key-name-hint",
        "sign-images",
        "value",
        "signer-name",
        "signer-version",
        "timestamp",
        "hashed-nodes",
        "hashed-strings",
    ]
    assert fdt.as_string(signature.properties["algo"]) == "sha256,rsa2048"
    assert fdt.as_strings(signature.properties["sign-images"]) == ["fdt", "kernel", "loadables"]
    nodes = fdt.as_strings(signature.properties["hashed-nodes"])
    assert nodes == [
        "/",
        "/configurations/conf-1",
        "/images/fdt",
        "/images/fdt/hash-1",
        "/images/xen",
        "/images/xen/hash-1",
        "/images/initrd",
        "/images/initrd/hash-1",
    ]
    header = fdt.Header.parse(blob)
    assert fdt.as_cells(signature.properties["hashed-strings"]) == (0, header.size_dt_strings)
    layout = fit._plan(sample.fit, signer).layout
    regions = fit.signed_regions(layout, nodes)
    message = b"".join(blob[offset : offset + size] for offset, size in regions)
    for name in ("xen", "fdt", "initrd", "script"):
        assert sample.files[name].read_bytes()[:64] not in message
    assert hashlib.sha256(sample.files["xen"].read_bytes()).digest() in message
    key.public_key().verify(
        signature.properties["value"], message, padding.PKCS1v15(), hashes.SHA256()
    )


def test_public_key_node(key: rsa.RSAPrivateKey) -> None:
    tree = fdt.DeviceTree()
    fit.add_public_key(tree, key.public_key(), "dev")
    fit.add_public_key(tree, key.public_key(), "dev")  # replaces, does not duplicate
    node = tree.node("/signature/key-dev")
    assert node is not None and len(tree.node("/signature").children) == 1  # type: ignore[union-attr]
    modulus = int.from_bytes(node.properties["rsa,modulus"], "big")
    assert modulus == key.public_key().public_numbers().n
    n0_inverse = fdt.as_u32(node.properties["rsa,n0-inverse"])
    assert (modulus * n0_inverse) % (1 << 32) == (1 << 32) - 1
    r_squared = int.from_bytes(node.properties["rsa,r-squared"], "big")
    assert r_squared == (1 << 4096) % modulus
    assert fdt.as_u64(node.properties["rsa,exponent"]) == 65537
    assert fdt.as_u32(node.properties["rsa,num-bits"]) == 2048
    assert fdt.as_string(node.properties["required"]) == "conf"
    assert fdt.as_string(node.properties["algo"]) == "sha256,rsa2048"


def test_streams_without_holding_payloads(tmp_path: Path) -> None:
    """A 512 MiB sparse kernel goes through in a few MiB of Python memory."""
    sample = fits.sample(tmp_path)
    big = tmp_path / "big"
    with big.open("wb") as stream:
        stream.truncate(512 << 20)
    images = [
        replace(image, source=big) if image.name == "xen" else image for image in sample.fit.images
    ]
    description = replace(sample.fit, images=images)
    tracemalloc.start()
    try:
        with (tmp_path / "out.fit").open("wb") as out:
            fit.write(description, out)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (tmp_path / "out.fit").stat().st_size > 512 << 20
    assert peak < 16 << 20, f"peak {peak >> 20} MiB"


def test_changed_file_is_an_error(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)

    class Shrinking(io.BytesIO):
        def write(self, data: bytes | memoryview) -> int:  # type: ignore[override]
            if bytes(data[:4]) == b"\xd0\x0d\xfe\xed":  # the header: before any data
                os.truncate(sample.files["xen"], 10)
            return super().write(data)

    with pytest.raises(HlimageError, match=r"changed size|shrank"):
        fit.write(sample.fit, Shrinking())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"images": ()}, "at least one image"),
        ({"default_image": "xen"}, "runs only a script"),
        ({"default_image": "nope"}, "not one of the images"),
        ({"default_configuration": "conf-9"}, "not one of its configurations"),
        ({"timestamp": -1}, "32 bits"),
    ],
)
def test_refusals(tmp_path: Path, change: dict[str, object], message: str) -> None:
    description = replace(fits.sample(tmp_path).fit, **change)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match=message):
        fit.size(description)


def test_refusals_of_names_and_references(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    description = fits.sample(tmp_path).fit
    first = description.images[0]
    for images, message in (
        ((first, first), "used twice"),
        ((replace(first, name="kernel@1"),), "without '/' or '@'"),
    ):
        with pytest.raises(FormatError, match=message):
            fit.size(replace(description, images=images, default_image=None, configurations=()))
    dangling = (fit.FitConfiguration("conf-1", kernel="missing"),)
    with pytest.raises(FormatError, match="names image 'missing'"):
        fit.size(replace(description, configurations=dangling))
    small = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    with pytest.raises(FormatError, match="1024-bit"):
        fit.size(description, fit.FitSigner(small, "dev", __version__))
    with pytest.raises(FormatError, match="needs a configuration"):
        fit.size(replace(description, configurations=()), fit.FitSigner(key, "dev", __version__))


def test_fit_payload_streams_the_same_bytes(tmp_path: Path, key: rsa.RSAPrivateKey) -> None:
    """What a disk image or a TFTP tree copies in: the bytes write writes, digests alike."""
    sample = fits.sample(tmp_path)
    for signer in (None, fit.FitSigner(key, "dev", __version__)):
        expected = io.BytesIO()
        written = fit.write(sample.fit, expected, signer)
        payload = fit.FitPayload(sample.fit, signer)
        assert payload.exact_size == written.size
        assert b"".join(payload.chunks()) == expected.getvalue()
        assert payload.result is not None and payload.result.sha256 == written.sha256


def test_fit_payload_refuses_a_payload_that_changed(tmp_path: Path) -> None:
    sample = fits.sample(tmp_path)
    payload = fit.FitPayload(sample.fit)
    sample.files["initrd"].write_bytes(b"shorter")
    with pytest.raises(HlimageError, match="changed size while the FIT was written"):
        b"".join(payload.chunks())
