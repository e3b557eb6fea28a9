"""contrib/yocto: the hlimage image type, run the way bitbake runs it.

bitbake is not installed, so the test does its part by hand: it applies the class's `?=`
defaults and the example recipe's assignments, sets the variables bitbake and OE-core would
(MACHINE, DEPLOY_DIR_IMAGE, IMGDEPLOYDIR, IMAGE_NAME ...), expands `${VAR}` in the IMAGE_CMD
body as bitbake does before the shell sees it, and runs the result under `set -e` with bash and
with /bin/sh's dash (bitbake's shell tasks are POSIX sh). The outputs must be byte-identical to
a direct `hlimage build` of the same inputs with the same SOURCE_DATE_EPOCH.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from tests.conftest import require, run_cli
from tests.support import payloads, staging

ROOT = Path(__file__).resolve().parents[2]
CLASS = ROOT / "contrib/yocto/classes/hlimage.bbclass"
RECIPE = ROOT / "contrib/yocto/recipes-extended/images/xen-hlimage-example.bb"
MACHINE = "qemux86-64"
IMAGE_NAME = f"xen-hlimage-example-{MACHINE}"
EPOCH = "1700000000"
SHELLS = ("bash", "dash")

# What bitbake's logging.bbclass gives every shell task.
PRELUDE = """set -e
bbnote() { printf 'NOTE: %s\\n' "$*"; }
bbwarn() { printf 'WARNING: %s\\n' "$*" >&2; }
bbfatal() { printf 'ERROR: %s\\n' "$*" >&2; exit 1; }
"""


def assignments(text: str, operator: str) -> dict[str, str]:
    pattern = rf'^([A-Z][A-Z0-9_]*) {re.escape(operator)} "(.*)"$'
    return dict(re.findall(pattern, text, re.MULTILINE))


def image_cmd_body(text: str) -> str:
    match = re.search(r"^IMAGE_CMD:hlimage \(\) \{\n(.*?)^\}$", text, re.MULTILINE | re.DOTALL)
    assert match, "no IMAGE_CMD:hlimage () { ... } in the class"
    return match.group(1)


def expand(text: str, variables: dict[str, str]) -> str:
    """bitbake's expansion: ${NAME} of a known variable is replaced (repeatedly, since values
    name other variables); anything else, the shell's own variables included, is left."""

    def value(match: re.Match[str]) -> str:
        name = match.group(1)
        return variables[name] if name in variables else match.group(0)

    for _ in range(10):
        expanded = re.sub(r"\$\{([A-Za-z0-9_]+)\}", value, text)
        if expanded == text:
            return text
        text = expanded
    raise AssertionError(f"recursive expansion in {text!r}")


def deploy(tmp_path: Path) -> dict[str, str]:
    """DEPLOY_DIR_IMAGE as meta-virtualization and the kernel leave it, IMGDEPLOYDIR with this
    image's cpio.gz, and the variables bitbake would set."""
    deploy_dir = tmp_path / "deploy/images" / MACHINE
    deploy_dir.mkdir(parents=True)
    (deploy_dir / f"xen-{MACHINE}.efi").symlink_to(payloads.path("x86_64/xen.efi"))
    (deploy_dir / f"xen-{MACHINE}.gz").symlink_to(payloads.path("x86_64/xen.gz"))
    (deploy_dir / "bzImage").symlink_to(payloads.path("x86_64/vmlinuz"))
    imgdeploy = tmp_path / "work/deploy-xen-hlimage-example-image-complete"
    imgdeploy.mkdir(parents=True)
    payloads.make_initramfs("x86_64", "dom0", imgdeploy / f"{IMAGE_NAME}.rootfs.cpio.gz")
    return {
        "MACHINE": MACHINE,
        "TARGET_ARCH": "x86_64",
        "KERNEL_IMAGETYPE": "bzImage",
        "DEPLOY_DIR_IMAGE": str(deploy_dir),
        "IMGDEPLOYDIR": str(imgdeploy),
        "IMAGE_NAME": IMAGE_NAME,
        "IMAGE_NAME_SUFFIX": ".rootfs",
        "IMAGE_LINK_NAME": f"xen-hlimage-example-{MACHINE}",
        "WORKDIR": str(tmp_path / "work"),
        "SOURCE_DATE_EPOCH": EPOCH,
        # HOSTTOOLS += "hlimage", as the class's comment says.
        "HLIMAGE": str(staging.HLIMAGE),
    }


def run_image_task(shell: str, settings: dict[str, str], tmp_path: Path) -> str:
    """do_image_hlimage as bitbake would run it; returns stderr."""
    require(shutil.which(shell) is not None, f"{shell} is not installed")
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")
    text = CLASS.read_text()
    variables = {**assignments(text, "?="), **settings}
    script = tmp_path / "run.do_image_hlimage"
    body = expand(image_cmd_body(text), variables)
    script.write_text(
        f"{PRELUDE}\ndo_image_hlimage() {{\n{body}}}\n\n"
        f'cd "{variables["IMGDEPLOYDIR"]}"\ndo_image_hlimage\n'
    )
    # bitbake runs tasks with a clean environment: only what it exports gets through.
    result = staging.run([shell, script], SOURCE_DATE_EPOCH="")
    assert result.returncode == 0, result.stderr
    return result.stderr


def direct_system(directory: Path, initrd: Path, text: str) -> Path:
    staging.stage(directory, "x86_64", ["xen.efi", "xen.gz", "vmlinuz"])
    (directory / "initrd.img").symlink_to(initrd)
    description = directory / "hlimage.toml"
    description.write_text(text)
    return description


@pytest.mark.parametrize("shell", SHELLS)
def test_example_recipe_builds_what_hlimage_builds(shell: str, cache: Path, tmp_path: Path) -> None:
    settings = deploy(tmp_path)
    recipe = assignments(RECIPE.read_text(), "=")
    assert recipe["HLIMAGE_FORMATS"] == "unified disk"
    run_image_task(shell, {**settings, **recipe}, tmp_path)

    imgdeploy = Path(settings["IMGDEPLOYDIR"])
    initrd = imgdeploy / f"{IMAGE_NAME}.rootfs.cpio.gz"
    description = direct_system(
        tmp_path / "direct",
        initrd,
        f"""[image]
arch = "x86_64"

[xen]
efi = "xen.efi"
multiboot = "xen.gz"
cmdline = "console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"

[[domain]]
name = "dom0"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = {staging.toml_string(recipe["HLIMAGE_DOM0_CMDLINE"])}
memory = {staging.toml_string(recipe["HLIMAGE_DOM0_MEMORY"])}
""",
    )
    for output_format, suffix in (("unified", "xen-unified.efi"), ("disk", "xen-disk.img")):
        built = imgdeploy / f"{IMAGE_NAME}.rootfs.{suffix}"
        direct = tmp_path / "direct" / suffix
        staging.direct_build(description, output_format, direct, EPOCH)
        staging.assert_same_output(built, direct)
        link = imgdeploy / f"{settings['IMAGE_LINK_NAME']}.{suffix}"
        assert link.resolve() == built.resolve()
        assert Path(f"{link}.manifest.json").resolve() == Path(f"{built}.manifest.json")
    # The disk's FAT times are SOURCE_DATE_EPOCH's, which the task exported.
    staging.direct_build(description, "disk", tmp_path / "other-time.img", "1600000000")
    assert staging.tree_digests(tmp_path / "other-time.img") != staging.tree_digests(
        imgdeploy / f"{IMAGE_NAME}.rootfs.xen-disk.img"
    )


def test_a_description_of_ones_own(cache: Path, tmp_path: Path) -> None:
    """HLIMAGE_DESCRIPTION from a template: the staged names are the template's."""
    assert run_cli("init", "x86-classic", tmp_path / "layer/files").code == 0
    settings = deploy(tmp_path)
    settings |= {
        "HLIMAGE_DESCRIPTION": str(tmp_path / "layer/files/hlimage.toml"),
        "HLIMAGE_FORMATS": "esp",
    }
    run_image_task("bash", settings, tmp_path)
    initrd = Path(settings["IMGDEPLOYDIR"]) / f"{IMAGE_NAME}.rootfs.cpio.gz"
    description = direct_system(
        tmp_path / "direct", initrd, (tmp_path / "layer/files/hlimage.toml").read_text()
    )
    staging.direct_build(description, "esp", tmp_path / "direct/esp", EPOCH)
    built = Path(settings["IMGDEPLOYDIR"]) / f"{IMAGE_NAME}.rootfs.xen-esp"
    staging.assert_same_output(built, tmp_path / "direct/esp")


def test_a_missing_kernel_stops_the_task(cache: Path, tmp_path: Path) -> None:
    settings = deploy(tmp_path) | {"KERNEL_IMAGETYPE": "Image"}
    text = CLASS.read_text()
    variables = {**assignments(text, "?="), **settings}
    script = tmp_path / "run.sh"
    script.write_text(f"{PRELUDE}\n{expand(image_cmd_body(text), variables)}")
    result = staging.run(["bash", script])
    assert result.returncode == 1
    assert "ERROR: hlimage: HLIMAGE_KERNEL" in result.stderr and "/Image does not exist" in (
        result.stderr
    )
