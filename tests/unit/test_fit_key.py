"""`hlimage fit-key`: the public key into U-Boot's control device tree, as mkimage -K -r adds
it. U-Boot itself and fit_check_sign read the result in tests/e2e/test_uboot_verified_boot.py;
the refusals are in the bad-input catalogue."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hlimage.formats import fdt, fit
from hlimage.secureboot import sign
from tests.conftest import run_cli
from tests.support import signing


@pytest.fixture
def cert(tmp_path: Path) -> Path:
    path = tmp_path / "dev.crt"
    path.write_bytes(signing.key_and_certificate()[1])
    return path


def control_tree(path: Path) -> Path:
    tree = fdt.DeviceTree()
    tree.root.set("compatible", fdt.string("linux,dummy-virt"))
    tree.ensure("/chosen").set("stdout-path", fdt.string("/pl011@9000000"))
    tree.reservations.append((0x40000000, 0x1000))
    path.write_bytes(tree.build())
    return path


def public_key(cert: Path) -> rsa.RSAPublicKey:
    key = sign.load_certificates(cert.read_bytes())[0].public_key()
    assert isinstance(key, rsa.RSAPublicKey)
    return key


def test_adds_the_key_node_mkimage_writes_and_keeps_the_rest(tmp_path: Path, cert: Path) -> None:
    dtb = control_tree(tmp_path / "u-boot.dtb")
    before = fdt.parse(dtb.read_bytes())
    result = run_cli("fit-key", "--cert", cert, dtb, "-o", tmp_path / "out.dtb")
    assert result.code == 0, result.stderr
    assert result.stderr == (
        f"hlimage: wrote {tmp_path}/out.dtb: /signature/key-dev (sha256,rsa2048), "
        'required = "conf"\n'
    )
    after = fdt.parse((tmp_path / "out.dtb").read_bytes())
    expected = fdt.DeviceTree(before.root, list(before.reservations), before.boot_cpuid_phys)
    fit.add_public_key(expected, public_key(cert), "dev")
    assert after == expected
    assert (tmp_path / "out.dtb").read_bytes() == expected.build()


def test_in_place_and_again_changes_nothing(tmp_path: Path, cert: Path) -> None:
    dtb = control_tree(tmp_path / "u-boot.dtb")
    assert run_cli("-q", "fit-key", "--cert", cert, dtb, "-o", dtb).code == 0
    first = dtb.read_bytes()
    again = run_cli("-q", "fit-key", "--cert", cert, dtb, "-o", dtb)
    assert again.code == 0 and again.stderr == ""  # the same key: nothing to warn of
    assert dtb.read_bytes() == first
    # Replaced whole: no temporary left beside it.
    assert sorted(path.name for path in tmp_path.iterdir()) == ["dev.crt", "u-boot.dtb"]


def test_names_the_key_and_warns_of_what_changes_the_boot(tmp_path: Path, cert: Path) -> None:
    """Another key of the same name is replaced; another required key stays required, so
    U-Boot would want both signatures: both are said."""
    dtb = control_tree(tmp_path / "u-boot.dtb")
    tree = fdt.parse(dtb.read_bytes())
    other = rsa.generate_private_key(65537, 2048).public_key()
    fit.add_public_key(tree, other, "dev")
    fit.add_public_key(tree, other, "old")
    dtb.write_bytes(tree.build())
    result = run_cli("-q", "fit-key", "--cert", cert, dtb, "-o", dtb)
    assert result.code == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"hlimage: warning: {dtb}: its /signature/key-dev is replaced by the key of {cert}",
        f"hlimage: warning: {dtb}: /signature/key-old is required too: U-Boot boots only a FIT "
        "that both keys signed (remove the node, or set its required to image, if that is not "
        "meant)",
    ]
    after = fdt.parse(dtb.read_bytes())
    node = after.node("/signature/key-dev")
    assert node is not None
    modulus = public_key(cert).public_numbers().n
    assert node.properties["rsa,modulus"] == modulus.to_bytes(256, "big")

    named = run_cli("-q", "fit-key", "--cert", cert, dtb, "-o", tmp_path / "n.dtb",
                    "--key-name-hint", "board_2024")  # fmt: skip
    assert named.code == 0, named.stderr
    tree = fdt.parse((tmp_path / "n.dtb").read_bytes())
    hinted = tree.node("/signature/key-board_2024")
    assert hinted is not None
    assert fdt.as_string(hinted.properties["key-name-hint"]) == "board_2024"
