"""contrib/kernel-install/90-hlimage.install, called as systemd's kernel-install calls a plugin:
`add KERNEL_VERSION ENTRY_DIR_ABS KERNEL_IMAGE [INITRD...]` and `remove KERNEL_VERSION
ENTRY_DIR_ABS`, with KERNEL_INSTALL_BOOT_ROOT, KERNEL_INSTALL_STAGING_AREA,
KERNEL_INSTALL_LAYOUT and KERNEL_INSTALL_VERBOSE in the environment. The image it builds must
be byte-identical to a direct `hlimage build` of the filled-in description."""

from __future__ import annotations

from pathlib import Path

from hlimage.formats import pe
from tests.conftest import require
from tests.support import payloads, staging

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "contrib/kernel-install/90-hlimage.install"
EXAMPLE = ROOT / "contrib/kernel-install/kernel-install.toml"
VERSION = "6.12.0-test-amd64"


def machine(tmp_path: Path) -> dict[str, str]:
    """A boot root, a staging area with the initrd dracut would leave, the plugin's template
    (the shipped example, Xen's path made the test payload's), and the rest of the
    environment kernel-install sets."""
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")
    boot = tmp_path / "efi"
    staged = tmp_path / "staging area"
    staged.mkdir()
    payloads.make_initramfs("x86_64", "dom0", staged / "initrd")
    config = tmp_path / "etc/hlimage/kernel-install.toml"
    config.parent.mkdir(parents=True)
    text = EXAMPLE.read_text()
    assert 'efi = "/boot/xen.efi"' in text
    config.write_text(text.replace("/boot/xen.efi", str(payloads.path("x86_64/xen.efi"))))
    return {
        "KERNEL_INSTALL_BOOT_ROOT": str(boot),
        "KERNEL_INSTALL_STAGING_AREA": str(staged),
        "KERNEL_INSTALL_LAYOUT": "bls",
        "KERNEL_INSTALL_VERBOSE": "1",
        "KERNEL_INSTALL_ENTRY_TOKEN": "0123456789abcdef0123456789abcdef",
        "KERNEL_INSTALL_MACHINE_ID": "0123456789abcdef0123456789abcdef",
        "KERNEL_INSTALL_CONF_ROOT": str(tmp_path / "etc/kernel"),
        "HLIMAGE_KERNEL_INSTALL_CONFIG": str(config),
        "HLIMAGE": str(staging.HLIMAGE),
    }


def plugin(env: dict[str, str], *args: str | Path) -> str:
    result = staging.run(["sh", PLUGIN, *args], **env)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_add_builds_the_image_and_remove_deletes_it(cache: Path, tmp_path: Path) -> None:
    env = machine(tmp_path)
    # Where a distribution keeps the kernel, with characters TOML has to escape.
    modules = tmp_path / f'usr/lib/modules/{VERSION} "x"\\'
    modules.mkdir(parents=True)
    (modules / "vmlinuz").symlink_to(payloads.path("x86_64/vmlinuz"))
    early = payloads.make_initramfs("x86_64", "early", tmp_path / "early.cpio", "none")
    entry = Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / env["KERNEL_INSTALL_ENTRY_TOKEN"] / VERSION
    out = plugin(env, "add", VERSION, entry, modules / "vmlinuz", early)
    image = Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / f"EFI/Linux/xen-{VERSION}.efi"
    assert f"building {image}" in out
    assert image.is_file() and Path(f"{image}.manifest.json").is_file()

    initrds = [str(early), str(Path(env["KERNEL_INSTALL_STAGING_AREA"]) / "initrd")]
    direct = tmp_path / "direct.toml"
    direct.write_text(
        f"""[image]
arch = "x86_64"
name = "xen"
title = "Xen with Linux {VERSION}"

[xen]
efi = "{payloads.path("x86_64/xen.efi")}"
cmdline = "console=com1,vga com1=115200,8n1 loglvl=all guest_loglvl=all"

[[domain]]
name = "dom0"
kernel = {staging.toml_string(str(modules / "vmlinuz"))}
initrd = [{", ".join(staging.toml_string(path) for path in initrds)}]
cmdline = "root=LABEL=root ro console=hvc0"
memory = "2G"
"""
    )
    staging.direct_build(direct, "unified", tmp_path / "direct.efi")
    staging.assert_same_output(image, tmp_path / "direct.efi")

    # The bls layout's Type #1 entry, beside 90-loaderentry.install's, naming the image.
    conf = Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / (
        f"loader/entries/{env['KERNEL_INSTALL_ENTRY_TOKEN']}-{VERSION}-xen.conf"
    )
    lines = [line for line in conf.read_text().splitlines() if not line.startswith("#")]
    assert lines[:3] == ["title Xen with Linux 6.12.0-test-amd64", f"version {VERSION}",
                         "architecture x64"]  # fmt: skip
    assert lines[3].startswith("efi /") and lines[3].endswith(f"/EFI/Linux/xen-{VERSION}.efi")
    assert lines[4:] == ["options xen.efi xen"]
    with image.open("rb") as stream:
        assert pe.parse(stream).section(".osrel") is None  # listed once: by the entry

    plugin(env, "remove", VERSION, entry)
    assert not image.exists() and not Path(f"{image}.manifest.json").exists()
    assert not conf.exists()
    assert (Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / "EFI/Linux").is_dir()


def test_the_uki_layout_gets_an_image_systemd_boot_lists(cache: Path, tmp_path: Path) -> None:
    env = machine(tmp_path) | {"KERNEL_INSTALL_LAYOUT": "uki"}
    plugin(env, "add", VERSION, tmp_path / "entry", payloads.path("x86_64/vmlinuz"))
    boot = Path(env["KERNEL_INSTALL_BOOT_ROOT"])
    with (boot / f"EFI/Linux/xen-{VERSION}.efi").open("rb") as stream:
        assert pe.parse(stream).section(".osrel") is not None
    assert not (boot / "loader").exists()


def test_without_initrds_the_line_goes(cache: Path, tmp_path: Path) -> None:
    env = machine(tmp_path)
    (Path(env["KERNEL_INSTALL_STAGING_AREA"]) / "initrd").unlink()
    env["KERNEL_INSTALL_VERBOSE"] = "0"
    kernel = payloads.path("x86_64/vmlinuz")
    assert plugin(env, "add", VERSION, tmp_path / "entry", kernel) == ""
    filled = Path(env["KERNEL_INSTALL_STAGING_AREA"]) / "hlimage/hlimage.toml"
    assert "initrd" not in "".join(
        line for line in filled.read_text().splitlines() if not line.startswith("#")
    )
    assert (Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / f"EFI/Linux/xen-{VERSION}.efi").is_file()


def test_it_is_opt_in_and_keeps_to_boot_root_layouts(cache: Path, tmp_path: Path) -> None:
    env = machine(tmp_path)
    kernel = payloads.path("x86_64/vmlinuz")
    boot = Path(env["KERNEL_INSTALL_BOOT_ROOT"])
    no_config = env | {"HLIMAGE_KERNEL_INSTALL_CONFIG": str(tmp_path / "absent.toml")}
    assert "no " in plugin(no_config, "add", VERSION, tmp_path / "entry", kernel)
    plugin(env | {"KERNEL_INSTALL_LAYOUT": "other"}, "add", VERSION, tmp_path / "entry", kernel)
    assert not boot.exists()


def test_a_failed_build_fails_kernel_install(cache: Path, tmp_path: Path) -> None:
    env = machine(tmp_path)
    result = staging.run(
        ["sh", PLUGIN, "add", VERSION, tmp_path / "entry", ROOT / "README.md"], **env
    )
    assert result.returncode == 2
    assert "hlimage: error:" in result.stderr and "README.md" in result.stderr
    assert not (Path(env["KERNEL_INSTALL_BOOT_ROOT"]) / f"EFI/Linux/xen-{VERSION}.efi").exists()
