"""contrib/buildroot/post-image.sh, run the way Buildroot runs a post-image script: BINARIES_DIR
as the first argument and in the environment with BR2_CONFIG, HOST_DIR and BASE_DIR, then the
words of BR2_ROOTFS_POST_SCRIPT_ARGS. Its outputs must be byte-identical to a direct
`hlimage build` of the same files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.conftest import require
from tests.support import payloads, staging

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "contrib/buildroot/post-image.sh"
EPOCH = "1650000000"


def buildroot(tmp_path: Path, arch: str) -> dict[str, str]:
    """output/ of a Buildroot build: images/ (BINARIES_DIR), host/bin/hlimage, .config."""
    require(shutil.which("sh") is not None, "sh")
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")
    base = tmp_path / "output"
    binaries = base / "images"
    binaries.mkdir(parents=True)
    (base / "host/bin").mkdir(parents=True)
    (base / "host/bin/hlimage").symlink_to(staging.HLIMAGE)
    config = base / ".config"
    config.write_text(
        f"BR2_HAVE_DOT_CONFIG=y\nBR2_{'x86_64' if arch == 'x86_64' else 'aarch64'}=y\n"
    )
    if arch == "x86_64":
        (binaries / "xen.efi").symlink_to(payloads.path("x86_64/xen.efi"))
        (binaries / "xen.gz").symlink_to(payloads.path("x86_64/xen.gz"))
        (binaries / "bzImage").symlink_to(payloads.path("x86_64/vmlinuz"))
    else:
        (binaries / "xen.efi").symlink_to(payloads.path("arm64/xen.efi"))
        (binaries / "Image").symlink_to(payloads.path("arm64/Image"))
        (binaries / "qemu-virt.dtb").symlink_to(payloads.path(payloads.ARM64_DTB))
    payloads.make_initramfs(arch, "dom0", binaries / "rootfs.cpio.gz")
    return {
        "BINARIES_DIR": str(binaries),
        "BR2_CONFIG": str(config),
        "HOST_DIR": str(base / "host"),
        "BASE_DIR": str(base),
        "BUILD_DIR": str(base / "build"),
        "SOURCE_DATE_EPOCH": EPOCH,
    }


def post_image(env: dict[str, str], *args: str) -> str:
    result = staging.run(["sh", SCRIPT, env["BINARIES_DIR"], *args], **env, HLIMAGE="")
    assert result.returncode == 0, result.stderr
    return result.stderr


def direct(tmp_path: Path, arch: str, binaries: Path, text: str) -> Path:
    names = {"x86_64": ("xen.efi", "xen.gz", "vmlinuz"), "arm64": ("xen.efi", "Image")}[arch]
    staging.stage(tmp_path / "direct", arch, list(names))
    (tmp_path / "direct/initrd.img").symlink_to(binaries / "rootfs.cpio.gz")
    description = tmp_path / "direct/hlimage.toml"
    description.write_text(text)
    return description


def test_x86_disk_and_unified(cache: Path, tmp_path: Path) -> None:
    env = buildroot(tmp_path, "x86_64")
    stderr = post_image(
        env,
        "--format", "disk", "--format=unified", "--dom0-memory", "512M",
        "--dom0-cmdline=console=hvc0 earlyprintk=xen", "--add-miniuart-bt-overlay",
    )  # fmt: skip
    assert "skipping argument --add-miniuart-bt-overlay" in stderr  # another script's
    binaries = Path(env["BINARIES_DIR"])
    description = direct(
        tmp_path,
        "x86_64",
        binaries,
        """[image]
arch = "x86_64"

[xen]
efi = "xen.efi"
multiboot = "xen.gz"
cmdline = "console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"

[[domain]]
name = "dom0"
kernel = "vmlinuz"
initrd = "initrd.img"
cmdline = "console=hvc0 earlyprintk=xen"
memory = "512M"
""",
    )
    for output_format, name in (("disk", "xen-disk.img"), ("unified", "xen-unified.efi")):
        staging.direct_build(description, output_format, tmp_path / name, EPOCH)
        staging.assert_same_output(binaries / name, tmp_path / name)


@pytest.mark.parametrize("output_format", ["unified", "esp"])
def test_arm64_takes_the_device_tree_it_finds(
    output_format: str, cache: Path, tmp_path: Path
) -> None:
    env = buildroot(tmp_path, "arm64")
    post_image(env, "--format", output_format, "--xen-cmdline", 'console=dtuart "quoted"')
    binaries = Path(env["BINARIES_DIR"])
    description = direct(
        tmp_path,
        "arm64",
        binaries,
        f"""[image]
arch = "arm64"

[xen]
efi = "xen.efi"
dtb = "{payloads.path(payloads.ARM64_DTB)}"
cmdline = {staging.toml_string('console=dtuart "quoted"')}

[[domain]]
name = "dom0"
kernel = "Image"
initrd = "initrd.img"
cmdline = "console=hvc0"
""",
    )
    name = {"unified": "xen-unified.efi", "esp": "xen-esp"}[output_format]
    staging.direct_build(description, output_format, tmp_path / name, EPOCH)
    staging.assert_same_output(binaries / name, tmp_path / name)


def test_a_refused_build_fails_the_script(cache: Path, tmp_path: Path) -> None:
    env = buildroot(tmp_path, "x86_64")
    result = staging.run(
        ["sh", SCRIPT, env["BINARIES_DIR"], "--format", "disk", "--size", "1M"], **env
    )
    assert result.returncode != 0
    assert "--size" in result.stderr
    assert not (Path(env["BINARIES_DIR"]) / "xen-disk.img").exists()
