"""GRUB configurations: every generated grub.cfg passes grub-script-check; the hyperlaunch
module order matches the LCM's indices; the grub.d plugin works as grub-mkconfig runs it."""

from __future__ import annotations

import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hlimage.formats import fdt
from hlimage.plumbing.streams import file_sha256
from tests.conftest import require, run_cli
from tests.support import descriptions, payloads
from tests.support.descriptions import Guest

ROOT = Path(__file__).resolve().parents[2]
PLUGIN = ROOT / "grub" / "25_hyperlaunch"


def script_check(text: str, tmp_path: Path) -> None:
    require(shutil.which("grub-script-check") is not None, "grub-script-check (grub-common)")
    path = tmp_path / "check.cfg"
    path.write_text(text)
    result = subprocess.run(["grub-script-check", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def hyperlaunch_xen(tmp_path: Path) -> Path:
    """Debian's xen with the v6 parser's strings appended: a stand-in for a Xen that has the
    hyperlaunch parser, which no Debian package has (it cannot boot, but probes as one)."""
    data = gzip.decompress((payloads.CACHE / "x86_64/xen.gz").read_bytes())
    path = tmp_path / "xen-hl.gz"
    path.write_bytes(gzip.compress(data + b"\0hypervisor,xen\0module-index\0", mtime=0))
    return path


def test_x86_classic_directory(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    result = run_cli("build", description, "-f", "grub", "-o", tmp_path / "grub")
    assert result.code == 0, result.stderr
    text = (tmp_path / "grub/grub.cfg").read_text()
    script_check(text, tmp_path)
    assert f"multiboot2 /{payloads.xen_gz().name} placeholder console=com1" in text
    assert "dom0_mem=512M ${xen_rm_opts}" in text
    assert "module2 /vmlinuz placeholder console=hvc0 earlyprintk=xen\n" in text
    assert "module2 --nounzip /dom0.cpio.gz\n" in text
    assert text.index("/vmlinuz") < text.index("/dom0.cpio.gz")  # the real initrd right after
    for name, source in (
        (payloads.xen_gz().name, payloads.xen_gz()),
        ("vmlinuz", cache / "x86_64/vmlinuz"),
    ):
        assert file_sha256(tmp_path / "grub" / name) == file_sha256(source)


def test_prefixes(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    for prefix, expected in (("(tftp)/xen", "(tftp)/xen/vmlinuz"), ("/boot", "/boot/vmlinuz"),
                             ("/", "/vmlinuz")):  # fmt: skip
        result = run_cli("grub-config", description, "--prefix", prefix)
        assert result.code == 0, result.stderr
        assert f"module2 {expected} placeholder" in result.stdout
        script_check(result.stdout, tmp_path)


def test_arm64_entry(cache: Path, tmp_path: Path) -> None:
    description = descriptions.arm64(tmp_path, [])
    result = run_cli("grub-config", description)
    assert result.code == 0, result.stderr
    lines = [line.strip() for line in result.stdout.splitlines()]
    # devicetree before xen_hypervisor: GRUB hands Xen the tree it loaded.
    assert lines.index("devicetree /host.dtb") < lines.index(
        "xen_hypervisor /xen.efi console=dtuart loglvl=all guest_loglvl=all dom0_mem=512M"
    )
    assert "xen_module /Image console=hvc0 earlycon=xenboot" in lines
    assert "xen_module --nounzip /dom0.cpio.gz" in lines
    script_check(result.stdout, tmp_path)
    domus = descriptions.arm64(tmp_path, [Guest("guest1")], name="domus.toml")
    refused = run_cli("grub-config", domus)
    assert refused.code == 2 and "GRUB on arm64 boots dom0 only" in refused.stderr


def test_hyperlaunch_chain_order_matches_the_lcm(cache: Path, tmp_path: Path) -> None:
    xen = hyperlaunch_xen(tmp_path)
    description = descriptions.x86_classic(tmp_path, extra="vcpus = 2\n")
    text = description.read_text().replace(str(payloads.xen_gz()), str(xen))
    text += f"""
[[domain]]
name = "guest1"
kernel = "{cache / "x86_64/vmlinuz"}"
initrd = ["dom0.cpio.gz", "dom0.cpio.gz"]
memory = "128M"
"""
    description.write_text(text)
    result = run_cli("build", description, "-f", "grub", "-o", tmp_path / "grub")
    assert result.code == 0, result.stderr
    cfg = (tmp_path / "grub/grub.cfg").read_text()
    script_check(cfg, tmp_path)
    loaded = [line.split()[-1] for line in cfg.splitlines() if line.strip().startswith("module2")]
    assert loaded[0] == "/lcm.dtb"  # module 0
    lcm = fdt.parse((tmp_path / "grub/lcm.dtb").read_bytes())
    for domain in ("dom0", "guest1"):
        node = lcm.node(f"/chosen/hypervisor/{domain}")
        assert node is not None
        for child in node.children:
            index = fdt.as_u32(child.get("module-index") or b"")
            assert 0 < index < len(loaded)
            # The file GRUB loads at that index is the one the LCM means.
            name = loaded[index].lstrip("/")
            if child.name == "kernel":
                assert file_sha256(tmp_path / "grub" / name) == file_sha256(
                    cache / "x86_64/vmlinuz"
                )
            else:
                assert name.startswith(f"{domain}") or name == "dom0.cpio.gz"
    # No arguments on module lines: the v6 parser takes bootargs only when they are empty.
    assert all(len(line.split()) <= 3 for line in cfg.splitlines() if "module2" in line)
    assert b"console=hvc0 earlyprintk=xen" in (tmp_path / "grub/lcm.dtb").read_bytes()


def test_hyperlaunch_refused_without_the_parser(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    text = description.read_text()
    description.write_text(
        text.replace('arch = "x86_64"', 'arch = "x86_64"\nbinding = "hyperlaunch"')
    )
    result = run_cli("build", description, "-f", "grub", "-o", tmp_path / "grub")
    assert result.code == 2
    assert "has no hyperlaunch parser" in result.stderr and "panic" in result.stderr
    assert not (tmp_path / "grub").exists()


def test_standalone_is_reproducible(cache: Path, tmp_path: Path) -> None:
    require(shutil.which("grub-mkstandalone") is not None, "grub-mkstandalone (grub-common)")
    description = descriptions.x86_classic(tmp_path)
    for name in ("a.efi", "b.efi"):
        result = run_cli("build", description, "-f", "grub-standalone", "-o", tmp_path / name)
        assert result.code == 0, result.stderr
        time.sleep(1.1)  # a build that stamped its own time would differ now
    assert file_sha256(tmp_path / "a.efi") == file_sha256(tmp_path / "b.efi")


def test_standalone_without_grub_modules(cache: Path, tmp_path: Path) -> None:
    result = run_cli("build", descriptions.arm64(tmp_path, []), "-f", "grub-standalone",
                     "-o", tmp_path / "x.efi", "--grub-lib", tmp_path)  # fmt: skip
    assert result.code == 2
    assert "holds no arm64-efi GRUB modules; install grub-efi-arm64-bin" in result.stderr


def run_plugin(
    config_dir: Path, boot_dir: Path, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """As grub-mkconfig runs a grub.d script: its variables exported, stdout collected."""
    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "pkgdatadir": "/usr/share/grub",
        "grub_mkconfig_prefix": "/usr",
        "GRUB_DISTRIBUTOR": "Debian",
        "GRUB_CMDLINE_XEN": "",
        "HLIMAGE_CONFIG_DIR": str(config_dir),
        "HLIMAGE_BOOT_DIR": str(boot_dir),
        **(extra_env or {}),
    }
    return subprocess.run([str(PLUGIN)], env=env, capture_output=True, text=True, check=False)


def test_plugin_with_no_descriptions(tmp_path: Path) -> None:
    result = run_plugin(tmp_path / "none", tmp_path)
    assert (result.returncode, result.stdout) == (0, "")
    (tmp_path / "empty").mkdir()
    result = run_plugin(tmp_path / "empty", tmp_path)
    assert (result.returncode, result.stdout) == (0, "")


def test_plugin_emits_entries_from_boot(cache: Path, tmp_path: Path) -> None:
    boot = tmp_path / "boot"
    boot.mkdir()
    for name, source in (("xen-4.17-amd64.gz", cache / "x86_64/xen.gz"),
                         ("vmlinuz-6.12", cache / "x86_64/vmlinuz")):  # fmt: skip
        shutil.copyfile(source, boot / name)
    payloads.make_initramfs("x86_64", "dom0", boot / "initrd.img-6.12")
    etc = tmp_path / "etc-hlimage"
    etc.mkdir()
    (etc / "classic.toml").write_text(f"""
[image]
arch = "x86_64"
name = "classic"
[xen]
multiboot = "{boot / "xen-4.17-amd64.gz"}"
cmdline = "console=com1"
[[domain]]
name = "dom0"
kernel = "{boot / "vmlinuz-6.12"}"
initrd = "{boot / "initrd.img-6.12"}"
cmdline = "root=/dev/sda1 ro"
""")
    (etc / "broken.toml").write_text('[image]\narch = "x86_64"\nmemroy = 1\n')
    result = run_plugin(etc, boot)
    assert result.returncode == 0, result.stderr
    assert "menuentry 'Xen (classic)' --id hlimage-classic" in result.stdout
    relative = subprocess.run(["grub-mkrelpath", str(boot)], capture_output=True, text=True,
                              check=True).stdout.strip()  # fmt: skip
    assert f"multiboot2 {relative}/xen-4.17-amd64.gz placeholder console=com1" in result.stdout
    assert f"module2 {relative}/vmlinuz-6.12 placeholder root=/dev/sda1 ro" in result.stdout
    assert "skipped" in result.stderr and "broken.toml" in result.stderr
    script_check(result.stdout, tmp_path)


@pytest.mark.parametrize("timeout", [0])
def test_directory_header(cache: Path, tmp_path: Path, timeout: int) -> None:
    result = run_cli(
        "build", descriptions.x86_classic(tmp_path), "-f", "grub", "-o", tmp_path / "g"
    )
    assert result.code == 0
    text = (tmp_path / "g/grub.cfg").read_text()
    assert text.startswith(f"set default=hlimage-xen\nset timeout={timeout}\n")
