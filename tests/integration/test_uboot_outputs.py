"""The U-Boot outputs as built from a description, read by U-Boot's own tools (mkimage -l,
dumpimage, fit_check_sign) and dtc, rebuilt byte for byte, and read back by inspect.

The boots are in tests/e2e/test_uboot_boot.py; these check what can be checked without QEMU.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from hlimage.formats import fat, fdt, fit, gpt, uimage
from hlimage.secureboot import sign
from tests.conftest import require, run_cli
from tests.support import descriptions, payloads, signing, uboot_tools
from tests.support.descriptions import Guest
from tests.support.staging import tree_digests

EPOCH = "1700000000"


def tool(name: str) -> str:
    program = shutil.which(name)
    require(program is not None, f"{name} is not installed; run scripts/setup")
    assert program is not None
    return program


def run(*argv: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(arg) for arg in argv], capture_output=True, text=True, check=False)


@pytest.fixture
def description(cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", EPOCH)
    guests = [Guest("guest1", "128M", 1), Guest("guest2", "160M", 2)]
    return descriptions.arm64(tmp_path, guests)


def build(description: Path, output: Path, *args: str) -> Path:
    result = run_cli("build", description, "-o", output, "--no-manifest", *args)
    assert result.code == 0, result.stderr
    return output


def test_the_tree_holds_the_script_xen_the_tree_and_each_module_once(
    description: Path, tmp_path: Path
) -> None:
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    names = sorted(p.name for p in tree.iterdir())
    # One Image for three domains: loaded once, copied in memory by the script.
    assert names == ["Image", "boot.scr", "boot.scr.uimg", "dom0.cpio.gz", "guest1.cpio.gz",
                     "guest2.cpio.gz", "xen", "xen.dtb"]  # fmt: skip
    assert (tree / "boot.scr").read_bytes() == (tree / "boot.scr.uimg").read_bytes()
    assert (tree / "xen").read_bytes() == payloads.xen_efi("arm64", "4.17").read_bytes()
    script = uimage.parse((tree / "boot.scr").read_bytes()).script().decode()
    assert script.count("cp.b 0x") == 2 and "booti 0x40400000 - 0x40600000" in script


def test_mkimage_and_dumpimage_read_the_script(description: Path, tmp_path: Path) -> None:
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    listing = run(tool("mkimage"), "-l", tree / "boot.scr")
    assert listing.returncode == 0, listing.stderr
    assert "Image Name:   hlimage Xen boot" in listing.stdout
    assert "AArch64 Linux Script (uncompressed)" in listing.stdout
    extracted = tmp_path / "dumped.bin"
    dumped = run(tool("dumpimage"), "-T", "script", "-p", "0", "-o", extracted, tree / "boot.scr")
    assert dumped.returncode == 0, dumped.stderr
    # dumpimage gives the image's data: the script's length, a 0 ending the list, the script.
    parsed = uimage.parse((tree / "boot.scr").read_bytes())
    assert extracted.read_bytes() == parsed.data
    text = parsed.script()
    assert extracted.read_bytes()[8:] == text
    source = tmp_path / "script.txt"
    source.write_bytes(text)
    # mkimage makes the same bytes of the same text.
    made = tmp_path / "mkimage.scr"
    result = subprocess.run(
        [tool("mkimage"), "-A", "arm64", "-O", "linux", "-T", "script", "-C", "none",
         "-n", "hlimage Xen boot", "-d", str(source), str(made)],
        capture_output=True, text=True, check=False, env={**os.environ, "SOURCE_DATE_EPOCH": EPOCH},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert made.read_bytes() == (tree / "boot.scr").read_bytes()


def dtc_warnings(path: Path) -> set[str]:
    result = run(tool("dtc"), "-I", "dtb", "-O", "dts", "-o", os.devnull, path)
    assert result.returncode == 0, result.stderr
    return {line.split(": ", 1)[-1] for line in result.stderr.splitlines() if line}


def test_dtc_reads_the_tree_and_the_fit_without_new_warnings(
    description: Path, tmp_path: Path
) -> None:
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    before = dtc_warnings(payloads.CACHE / payloads.ARM64_DTB)
    assert dtc_warnings(tree / "xen.dtb") <= before
    image = build(description, tmp_path / "boot.fit", "-f", "fit")
    assert dtc_warnings(image) == set()


def test_mkimage_and_dumpimage_read_the_fit(description: Path, tmp_path: Path) -> None:
    image = build(description, tmp_path / "boot.fit", "-f", "fit")
    listing = run(tool("mkimage"), "-l", image)
    assert listing.returncode == 0, listing.stderr
    text = listing.stdout
    assert text.count("Hash algo:    sha256") == 9  # script, xen, fdt, 3 kernels, 3 initrds
    assert " Default Configuration: 'conf-1'" in text
    assert "Loadables:    dom0-kernel" in text
    tree = fdt.parse(image.read_bytes())
    images = tree.node("/images")
    assert images is not None and fdt.as_string(images.properties["default"]) == "script"
    kernel = payloads.CACHE / "arm64" / "Image"
    expected = {
        "xen": payloads.xen_efi("arm64", "4.17").read_bytes(),
        "dom0-kernel": kernel.read_bytes(),
        "guest2-kernel": kernel.read_bytes(),
        "guest1-ramdisk": (description.parent / "guest1.cpio.gz").read_bytes(),
    }
    names = [child.name for child in images.children]
    for name, data in expected.items():
        out = tmp_path / f"{name}.out"
        dumped = run(tool("dumpimage"), "-T", "flat_dt", "-p", str(names.index(name)), "-o", out,
                     image)  # fmt: skip
        assert dumped.returncode == 0, dumped.stderr
        assert out.read_bytes() == data, name
    script = images.child("script")
    assert script is not None
    assert b"bootm ${scriptaddr}\n" in script.properties["data"]
    # The device tree in the FIT is the one the uboot tree carries, padded to its slot.
    fdt_image = images.child("fdt")
    assert fdt_image is not None
    host = fdt.parse(fdt_image.properties["data"])
    chosen = host.node("/chosen")
    assert chosen is not None and chosen.child("guest2") is not None


def test_a_signed_fit_passes_fit_check_sign(description: Path, tmp_path: Path) -> None:
    require(uboot_tools.FIT_CHECK_SIGN.is_file(), "fit_check_sign missing; run scripts/setup")
    key_pem, cert_pem = signing.key_and_certificate()
    (tmp_path / "dev.key").write_bytes(key_pem)
    (tmp_path / "dev.crt").write_bytes(cert_pem)
    key, cert = str(tmp_path / "dev.key"), str(tmp_path / "dev.crt")
    image = build(description, tmp_path / "boot.fit", "-f", "fit", "--key", key, "--cert", cert)
    public = sign.load_certificates(cert_pem)[0].public_key()
    assert isinstance(public, rsa.RSAPublicKey)
    keys = fdt.DeviceTree()
    fit.add_public_key(keys, public, "dev")  # the key file's stem is the key-name-hint
    key_dtb = tmp_path / "u-boot.dtb"
    key_dtb.write_bytes(keys.build())
    checked = run(uboot_tools.FIT_CHECK_SIGN, "-f", image, "-k", key_dtb)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert "sha256,rsa2048:dev+" in checked.stdout
    inspected = json.loads(run_cli("inspect", "--json", image).stdout)
    assert inspected["configurations"][0]["signature"] == {
        "algo": "sha256,rsa2048", "key_name_hint": "dev"
    }  # fmt: skip
    # One byte of Xen changed: its hash no longer holds. (fit_check_sign loads the kernel,
    # fdt and ramdisk only; bootm checks each loadable's hash too, as inspect does.)
    for image_name in ("xen", "dom0-kernel"):
        data = bytearray(image.read_bytes())
        offset = next(i["data_offset"] for i in inspected["images"] if i["name"] == image_name)
        data[offset + 1000] ^= 1
        changed = tmp_path / f"changed-{image_name}.fit"
        changed.write_bytes(data)
        shown = json.loads(run_cli("inspect", "--json", changed).stdout)
        hashes = {i["name"]: i["hash"] for i in shown["images"]}
        assert hashes[image_name].startswith("BAD") and hashes["fdt"] == "ok"
    refused = run(uboot_tools.FIT_CHECK_SIGN, "-f", tmp_path / "changed-xen.fit", "-k", key_dtb)
    assert refused.returncode != 0
    assert "Bad hash value for 'hash-1' hash node in 'xen' image node" in refused.stdout


@pytest.mark.parametrize(
    ("output_format", "loader", "name"),
    [("disk", "uboot", "u.img"), ("disk", "fit", "f.img"), ("pxe", "uboot", "tftp"),
     ("pxe", "fit", "tftp")],
)  # fmt: skip
def test_loader_outputs_rebuild_the_same(
    description: Path, tmp_path: Path, output_format: str, loader: str, name: str
) -> None:
    digests = []
    for attempt in ("first", "second"):
        (tmp_path / attempt).mkdir()
        output = build(description, tmp_path / attempt / name, "-f", output_format,
                       "--loader", loader)  # fmt: skip
        digests.append(tree_digests(output))
    assert digests[0] == digests[1]


def test_the_disk_carries_the_tree_or_the_fit(description: Path, tmp_path: Path) -> None:
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    boot_fit = build(description, tmp_path / "boot.fit", "-f", "fit")
    for loader, expected in (("uboot", tree_digests(tree)),
                             ("fit", {"boot.scr": tree_digests(boot_fit)[""]})):  # fmt: skip
        image = build(description, tmp_path / f"{loader}.img", "-f", "disk", "--loader", loader)
        with image.open("rb") as stream:
            _, partitions = gpt.parse(stream)
            assert partitions[0].type_guid == gpt.ESP_TYPE  # one U-Boot scans, as partition 1
            found = {}
            for entry in fat.list_files(stream, partitions[0].offset):
                digest = tree_digests_of(fat.read_entry(stream, partitions[0].offset, entry))
                found[entry.path] = digest
        assert found == expected, loader
    pxe = build(description, tmp_path / "tftp", "-f", "pxe", "--loader", "fit")
    assert tree_digests(pxe)["boot.scr.uimg"] == tree_digests(boot_fit)[""]


def tree_digests_of(chunks: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def test_check_and_inspect_print_the_same_memory_map(description: Path, tmp_path: Path) -> None:
    checked = json.loads(run_cli("check", "--json", description).stdout)
    details = {v["format"]: v.get("details") for v in checked}
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    inspected = json.loads(run_cli("inspect", "--json", tree).stdout)
    mapped = inspected["boot"]["memory_map"]
    assert mapped["problems"] == []
    # The DTB's size is bounded in the plan and exact once written: every other line agrees.
    planned = [line for line in details["uboot"] if "host device tree" not in line]
    assert [line for line in mapped["lines"] if "host device tree" not in line] == planned
    text = run_cli("check", description).stdout
    assert "kept for U-Boot" in text and "guest2 ramdisk" in text
    image = build(description, tmp_path / "boot.fit", "-f", "fit")
    fit_map = json.loads(run_cli("inspect", "--json", image).stdout)["memory_map"]
    assert fit_map["problems"] == []
    assert fit_map["lines"] == details["fit"]


def test_inspect_finds_a_file_grown_past_its_slot(description: Path, tmp_path: Path) -> None:
    tree = build(description, tmp_path / "uboot", "-f", "uboot")
    with (tree / "dom0.cpio.gz").open("ab") as grown:
        grown.write(bytes(8 << 20))
    problems = json.loads(run_cli("inspect", "--json", tree).stdout)["boot"]["memory_map"][
        "problems"
    ]
    assert "dom0 ramdisk and guest1 kernel overlap" in problems


def test_the_reserve_and_scriptaddr_keys_move_the_plan(cache: Path, tmp_path: Path) -> None:
    description = descriptions.arm64(tmp_path, [], name="plain.toml")
    text = description.read_text().replace(
        '[image]\narch = "arm64"\n',
        '[image]\narch = "arm64"\n\n[uboot]\nscriptaddr = "0x48000000"\nreserve = "1G"\n\n',
    )
    moved = tmp_path / "moved.toml"
    moved.write_text(text)
    lines = {v["format"]: v.get("details") for v in
             json.loads(run_cli("check", "--json", moved).stdout)}  # fmt: skip
    uboot_lines = lines["uboot"]
    assert any("0x0048000000-" in line and "boot script" in line for line in uboot_lines)
    assert any("0x0048200000-" in line and "xen" in line for line in uboot_lines)
    assert any(line.split()[:3] == ["0x0080000000-0x00bfffffff", "1.0", "GiB"]
               for line in uboot_lines)  # fmt: skip


def test_an_imported_imagebuilder_config_builds_for_u_boot(cache: Path, tmp_path: Path) -> None:
    """ImageBuilder's MEMORY_START/MEMORY_END arrive as [uboot] memory_start/memory_end, and
    the command the importer prints builds a tree whose loads stay inside that window."""
    source = tmp_path / "imagebuilder"
    source.mkdir()
    for link, target in (("xen.efi", payloads.xen_efi("arm64", "4.17")),
                         ("virt.dtb", payloads.CACHE / payloads.ARM64_DTB),
                         ("Image", payloads.CACHE / "arm64" / "Image")):  # fmt: skip
        (source / link).symlink_to(target)
    for domain in ("dom0", "domu"):
        payloads.make_initramfs("arm64", domain, source / f"{domain}.cpio.gz")
    (source / "config").write_text(
        "MEMORY_START=0x50000000\nMEMORY_END=0x60000000\nDEVICE_TREE=virt.dtb\nXEN=xen.efi\n"
        'XEN_CMD="console=dtuart"\nDOM0_KERNEL=Image\nDOM0_RAMDISK=dom0.cpio.gz\nNUM_DOMUS=1\n'
        "DOMU_KERNEL[0]=Image\nDOMU_RAMDISK[0]=domu.cpio.gz\nDOMU_MEM[0]=128\nLOAD_CMD=sd\n"
    )
    description = tmp_path / "out" / "hlimage.toml"
    description.parent.mkdir()
    imported = run_cli("import", "imagebuilder", source / "config", "-o", description)
    assert imported.code == 0, imported.stderr
    command = imported.stdout.split()
    assert command[:2] == ["hlimage", "build"] and "uboot" in command
    built = run_cli(*command[1:])
    assert built.code == 0, built.stderr
    tree = Path(command[command.index("-o") + 1])
    mapped = json.loads(run_cli("inspect", "--json", tree).stdout)["boot"]["memory_map"]
    assert mapped["problems"] == []
    loads = [line.split()[0].split("-") for line in mapped["lines"][1:]
             if "boot script" not in line and "above" not in line]  # fmt: skip
    assert loads and all(int(a, 16) >= 0x50000000 and int(b, 16) < 0x60000000 for a, b in loads)
    assert mapped["lines"][-1].endswith("above [uboot] memory_end")
