"""U-Boot's verified boot of hlimage's signed FIT, booted: Debian's u-boot-qemu, with the
public key in its control device tree (required = "conf"), boots a FIT whose configuration the
key signed and refuses one that is unsigned or whose signature was changed (docs/uboot.md,
"Verified boot").

Under QEMU virt, U-Boot's control device tree is the one QEMU leaves at the start of RAM, and
`-dtb FILE` under `-bios` puts FILE there instead of QEMU's own: FILE here is QEMU's tree
(dumped with -machine dumpdtb, as the descriptions' `[xen] dtb`) with the key added by
`hlimage fit-key`. The FIT carries its own host tree for Xen; the control tree is U-Boot's only.

One boot to the markers (dom0 and a dom0less domU, Xen 4.20), two short U-Boot runs that end
at U-Boot's refusal, and fit-key's tree checked by fit_check_sign, U-Boot's verifier built for
the host, without QEMU.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from hlimage import qemu
from hlimage.formats import fdt
from tests.conftest import require, run_cli
from tests.support import descriptions, payloads, signing, uboot_tools
from tests.support.boot import boot, loaded_domus
from tests.support.descriptions import Guest

TIMEOUT = 300
HINT = "dev"
"""The key files are dev.key and dev.crt, as mkimage -k DIR names them: build names the key
from --key's file, fit-key from --cert's, and both say dev."""
VERIFIED = f"Verifying Hash Integrity ... sha256,rsa2048:{HINT}+ OK"
REFUSED = f"Failed to verify required signature 'key-{HINT}'"


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    key_pem, cert_pem = signing.key_and_certificate()
    key, cert = tmp_path / f"{HINT}.key", tmp_path / f"{HINT}.crt"
    key.write_bytes(key_pem)
    cert.write_bytes(cert_pem)
    return key, cert


def build(description: Path, output: Path, *args: str | Path) -> Path:
    result = run_cli("build", description, "-o", output, *args)
    assert result.code == 0, result.stderr
    return output


def control_dtb(cert: Path, output: Path) -> Path:
    """QEMU's own tree with the key: what U-Boot verifies with."""
    result = run_cli("fit-key", "--cert", cert, payloads.CACHE / payloads.ARM64_DTB, "-o", output)
    assert result.code == 0, result.stderr
    assert result.stderr == (
        f'hlimage: wrote {output}: /signature/key-{HINT} (sha256,rsa2048), required = "conf"\n'
    )
    return output


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False)


def chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            yield chunk


def change_signature(fit_path: Path) -> None:
    """One bit of the configuration's signature value flipped, in place."""
    outline = fdt.scan(chunks(fit_path), inline_limit=64, digests=False)
    value = outline.large[("/configurations/conf-1/signature-1", "value")]
    assert value.length == 256  # rsa2048
    with fit_path.open("r+b") as stream:
        stream.seek(value.offset + 100)
        byte = stream.read(1)[0]
        stream.seek(value.offset + 100)
        stream.write(bytes([byte ^ 0x10]))


def test_fit_check_sign_verifies_with_the_tree_fit_key_writes(
    cache: Path, tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    """fit_check_sign -k takes fit-key's tree as U-Boot's: the signed FIT passes, the unsigned
    one is refused for want of the required key's signature. The tree is QEMU's, unchanged but
    for /signature, and the same bytes every time."""
    require(uboot_tools.FIT_CHECK_SIGN.is_file(), "fit_check_sign missing; run scripts/setup")
    key, cert = keys
    description = descriptions.arm64(tmp_path, [Guest("guest1", "192M", 1)], xen="4.20")
    signed = build(description, tmp_path / "signed.fit", "-f", "fit", "--key", key, "--cert", cert)
    unsigned = build(description, tmp_path / "unsigned.fit", "-f", "fit")
    dtb = control_dtb(cert, tmp_path / "u-boot.dtb")

    checked = run(uboot_tools.FIT_CHECK_SIGN, "-f", signed, "-k", dtb)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"sha256,rsa2048:{HINT}+" in checked.stdout
    refused = run(uboot_tools.FIT_CHECK_SIGN, "-f", unsigned, "-k", dtb)
    assert refused.returncode != 0, refused.stdout
    assert REFUSED in refused.stdout

    tree = fdt.parse(dtb.read_bytes())
    keys_node = tree.node(f"/signature/key-{HINT}")
    assert keys_node is not None
    assert fdt.as_string(keys_node.properties["required"]) == "conf"
    assert tree.root.remove_child("signature") is not None
    assert tree == fdt.parse((payloads.CACHE / payloads.ARM64_DTB).read_bytes())
    again = control_dtb(cert, tmp_path / "again.dtb")
    assert again.read_bytes() == dtb.read_bytes()


def test_a_signed_fit_boots_under_a_uboot_holding_its_key(
    qemu_uboot: str, cache: Path, tmp_path: Path, boot_log: Path, keys: tuple[Path, Path]
) -> None:
    """The signed FIT as /boot.scr on hlimage's disk: U-Boot checks the configuration's
    signature with the key before it loads Xen and again before the fdt, then every image's
    hash, and every domain prints its marker."""
    key, cert = keys
    description = descriptions.arm64(tmp_path, [Guest("guest1", "192M", 1)], xen="4.20")
    image = build(description, tmp_path / "fit.img", "-f", "disk", "--loader", "fit",
                  "--key", key, "--cert", cert)  # fmt: skip
    media = qemu.Media(disk_image=image, dtb=control_dtb(cert, tmp_path / "u-boot.dtb"))
    outcome = boot(qemu.ARM64, media, ["dom0", "guest1"], log_path=boot_log, timeout=TIMEOUT,
                   uboot=True, cmdlines=descriptions.cmdlines(description))  # fmt: skip
    outcome.check()
    text = outcome.output
    assert "Found U-Boot script /boot.scr" in text
    # bootm checks the configuration once for the kernel and once for the fdt.
    assert text.count(VERIFIED) >= 2, outcome.tail()
    assert REFUSED not in text
    assert loaded_domus(text) == [(1, 192 * 1024)]


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        pytest.param(
            "unsigned",
            "No 'signature' subnode found for '<NULL>' hash node in 'conf-1' config node",
            id="unsigned",
        ),
        pytest.param(
            "changed", f"Verifying Hash Integrity ... sha256,rsa2048:{HINT}-  error!", id="changed"
        ),
    ],
)
def test_a_uboot_holding_the_key_refuses_a_fit_it_did_not_sign(
    qemu_uboot: str,
    cache: Path,
    tmp_path: Path,
    boot_log: Path,
    keys: tuple[Path, Path],
    kind: str,
    says: str,
) -> None:
    """U-Boot alone (about 10 s): an unsigned FIT, and a signed one with one bit of its
    signature flipped, each as /boot.scr on a FAT disk (QEMU's vvfat). bootm refuses the
    configuration before it loads anything and the script fails: Xen never starts. (The same
    unsigned FIT boots under the U-Boot without the key: tests/e2e/test_uboot_boot.py.)"""
    key, cert = keys
    description = descriptions.arm64(tmp_path, [], xen="4.20")
    media_dir = tmp_path / "media"
    media_dir.mkdir()
    signing_args: tuple[str | Path, ...] = ("--key", key, "--cert", cert)
    fit_path = build(description, media_dir / "boot.scr", "-f", "fit", "--no-manifest",
                     *(signing_args if kind == "changed" else ()))  # fmt: skip
    if kind == "changed":
        change_signature(fit_path)
    media = qemu.Media(esp_dir=media_dir, dtb=control_dtb(cert, tmp_path / "u-boot.dtb"))
    outcome = boot(qemu.ARM64, media, ["dom0"], log_path=boot_log, timeout=120, uboot=True,
                   fatal=(), stop_on=["SCRIPT FAILED"], cmdlines={})  # fmt: skip
    text = outcome.output
    assert outcome.stopped_by == "SCRIPT FAILED", outcome.tail()
    assert "## Loading kernel from FIT Image at 40200000" in text
    assert says in text and REFUSED in text, outcome.tail()
    assert "ERROR: can't get kernel image!" in text
    assert "Starting kernel" not in text and outcome.seen == []
