"""The shipped templates and `hlimage init`: each template, copied as a user would and given
the test payloads under its plain file names, builds every format its `# Builds:` line
declares; the ones written for a Xen Debian does not ship are refused with the reason."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from hlimage import scaffold
from hlimage.formats import fdt
from tests.conftest import require, run_cli
from tests.support import staging, xen_images

ROOT = Path(__file__).resolve().parents[2]
TEMPLATES = ("arm64-dom0less", "arm64-no-dom0", "x86-classic", "x86-hyperlaunch")
OUTPUT_NAMES = {
    "unified": "out.efi",
    "esp": "esp",
    "disk": "disk.img",
    "grub": "grub",
    "grub-standalone": "grub.efi",
    "pxe": "pxe",
    "uboot": "uboot",
    "fit": "boot.scr",
}
# What `hlimage check` says against Debian's Xen 4.17, for the templates it cannot build.
REFUSALS = {
    "x86-hyperlaunch": {
        "grub": "no hyperlaunch parser",
        "grub-standalone": "no hyperlaunch parser",
        "unified": "use --format grub or grub-standalone (hyperlaunch)",
    },
    "arm64-no-dom0": {
        "esp": "Xen 4.21 and newer",
        "disk": "Xen 4.21 and newer",
    },
}


def arch_of(template: scaffold.Template) -> str:
    return "arm64" if 'arch = "arm64"' in template.text else "x86_64"


def start(name: str, directory: Path) -> tuple[scaffold.Template, Path]:
    """`hlimage init NAME DIR`, then the payloads beside the description."""
    result = run_cli("init", name, directory)
    assert result.code == 0, result.stderr
    template = scaffold.find(name)
    staging.stage(directory, arch_of(template), template.files())
    return template, directory / "hlimage.toml"


def verdicts(description: Path) -> tuple[int, dict[str, str | None]]:
    result = run_cli("check", "--json", description)
    return result.code, {v["format"]: v["problem"] for v in json.loads(result.stdout or "[]")}


def test_the_package_ships_the_templates_the_repository_shows() -> None:
    shipped = {template.name: template.text for template in scaffold.templates()}
    assert sorted(shipped) == list(TEMPLATES)
    top = ROOT / "templates"
    assert {path.stem: path.read_text() for path in top.glob("*.toml")} == shipped
    for template in scaffold.templates():
        assert template.summary, template.name
        assert template.builds and set(template.builds) <= {*OUTPUT_NAMES, "lcm"}, template.name


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_builds_what_it_declares(name: str, cache: Path, tmp_path: Path) -> None:
    template, description = start(name, tmp_path / "system")
    declared = [word for word in template.builds if word != "lcm"]
    builds_line = next(line for line in template.text.splitlines() if "# Builds:" in line)
    code, found = verdicts(description)
    if name in REFUSALS:
        assert code == 2
        for output_format, reason in REFUSALS[name].items():
            assert reason in (found[output_format] or ""), (output_format, found[output_format])
    if "Xen 4.21" in builds_line:
        # Written for a newer Xen than the payloads': every declared format is refused.
        assert all(found[output_format] for output_format in declared)
    else:
        assert {f for f, problem in found.items() if problem is None} == set(declared)
        if {"grub-standalone", "pxe"} & set(declared):
            require(shutil.which("grub-mkstandalone") is not None, "grub-mkstandalone")
        for output_format in declared:
            output = tmp_path / OUTPUT_NAMES[output_format]
            result = run_cli("build", description, "--format", output_format, "-o", output)
            assert result.code == 0, (output_format, result.stderr)
            assert output.exists() and Path(f"{output}.manifest.json").is_file()
    if "lcm" in template.builds:
        result = run_cli("lcm", description, "-o", tmp_path / "lcm.dtb")
        assert result.code == 0, result.stderr
        tree = fdt.parse((tmp_path / "lcm.dtb").read_bytes())
        assert "guest1 {" in tree.to_dts()


def test_init_refuses_to_overwrite_without_force(tmp_path: Path) -> None:
    description = tmp_path / "hlimage.toml"
    description.write_text("# mine\n")
    result = run_cli("init", "x86-classic", tmp_path)
    assert result.code == 2
    assert result.stderr.count("\n") == 1 and "--force" in result.stderr
    assert description.read_text() == "# mine\n"
    result = run_cli("init", "x86-classic", tmp_path, "--force")
    assert result.code == 0, result.stderr
    assert description.read_text() == scaffold.find("x86-classic").text


def test_init_names_the_templates_and_what_to_edit(tmp_path: Path) -> None:
    result = run_cli("init", "x86-hyperlauch", tmp_path)
    assert result.code == 2 and not (tmp_path / "hlimage.toml").exists()
    assert result.stderr.count("\n") == 1
    assert all(name in result.stderr for name in TEMPLATES)
    listing = run_cli("init")
    assert listing.code == 0
    assert [line.split()[0] for line in listing.stdout.splitlines()] == list(TEMPLATES)
    result = run_cli("init", "arm64-dom0less", tmp_path / "new")
    assert result.code == 0, result.stderr
    assert "xen.efi, board.dtb, Image, initrd.img, guest1.cpio.gz, guest2.cpio.gz" in (
        result.stdout
    )
    assert f"hlimage build {tmp_path / 'new' / 'hlimage.toml'} --format esp" in result.stdout


@pytest.mark.parametrize(
    ("options", "refusal"),
    [
        ({"CONFIG_STATIC_MEMORY": True}, None),
        ({}, '"hwdom" direct_map: the Xen image was built without CONFIG_STATIC_MEMORY'),
    ],
)
def test_no_dom0_template_on_a_xen_4_22(
    cache: Path, tmp_path: Path, options: dict[str, bool], refusal: str | None
) -> None:
    """What the template needs besides Xen 4.21: static memory for its direct-mapped hardware
    domain (QEMU virt has no IOMMU). Checked against stand-ins for 4.22 builds with and
    without CONFIG_STATIC_MEMORY (booted for real in docs/, VERIFIED-RUN)."""
    _, description = start("arm64-no-dom0", tmp_path / "system")
    xen_images.restamped(tmp_path / "system/xen.efi", "4.22.0", options)
    code, found = verdicts(description)
    for output_format in ("esp", "disk"):
        if refusal is None:
            assert found[output_format] is None, found[output_format]
        else:
            assert refusal in (found[output_format] or ""), found[output_format]
    assert code == (0 if refusal is None else 2)
