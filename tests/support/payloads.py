"""Test payloads: Debian's Xen and Linux, busybox initramfs images that print a marker.

`python -m tests.support.payloads` downloads the packages with `apt-get download` (never
installing them: a xen-hypervisor package hooks into the host's boot loader), unpacks the files
the tests use into a cache outside git, and dumps QEMU's arm64 device tree. Running it again
does nothing when everything is there.
"""

from __future__ import annotations

import argparse
import gzip
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from hlimage.formats import cpio

CACHE = Path(os.environ.get("HLIMAGE_TEST_CACHE", Path.home() / ".cache" / "hlimage-test"))
MARKER_PREFIX = "HLIMAGE-MARKER:"


@dataclass(frozen=True)
class Package:
    """A Debian package and the files the tests take out of it (member -> cache name)."""

    name: str
    files: dict[str, str]
    suite: str = "bookworm"
    arch: str = "amd64"


# The Xen releases the boot tests run on: Debian 12's and Debian 13's.
XEN_VERSIONS = ("4.17", "4.20")
XEN_SUITES = {"4.17": "bookworm", "4.20": "trixie"}
DEBIAN_ARCH = {"x86_64": "amd64", "arm64": "arm64"}


def xen_efi_name(arch: str, version: str) -> str:
    return f"{arch}/xen-{version}.efi"


def xen_gz_name(version: str) -> str:
    return f"x86_64/xen-{version}.gz"


def _xen_package(arch: str, version: str) -> Package:
    debian = DEBIAN_ARCH[arch]
    files = {f"boot/xen-{version}-{debian}.efi": xen_efi_name(arch, version)}
    if arch == "x86_64":
        files[f"boot/xen-{version}-{debian}.gz"] = xen_gz_name(version)
    return Package(f"xen-hypervisor-{version}-{debian}", files, XEN_SUITES[version], debian)


# The names the payloads had before there was more than one Xen, which the templates' and
# integrations' tests stage: plain name -> the 4.17 file it is a hard link to.
ALIASES = {
    "x86_64/xen.efi": xen_efi_name("x86_64", "4.17"),
    "x86_64/xen.gz": xen_gz_name("4.17"),
    "arm64/xen.efi": xen_efi_name("arm64", "4.17"),
}

PACKAGES_X86 = (
    *(_xen_package("x86_64", version) for version in XEN_VERSIONS),
    # bookworm's 6.1 PV dom0 dies under SMM OVMF builds; trixie's 6.12 boots (docs/qemu-boot.md).
    Package("linux-image-amd64", {"boot/vmlinuz-*": "x86_64/vmlinuz"}, suite="trixie"),
    Package("busybox-static", {"bin/busybox": "x86_64/busybox"}),
)
PACKAGES_ARM64 = (
    *(_xen_package("arm64", version) for version in XEN_VERSIONS),
    Package("linux-image-cloud-arm64", {"boot/vmlinuz-*": "arm64/Image"}, arch="arm64"),
    Package("busybox-static", {"bin/busybox": "arm64/busybox"}, arch="arm64"),
    # GRUB's arm64-efi modules, for grub-mkstandalone -O arm64-efi on any host.
    Package("grub-efi-arm64-bin", {"usr/lib/grub/arm64-efi": "arm64/grub-arm64-efi"}, arch="arm64"),
)
PACKAGES = PACKAGES_X86 + PACKAGES_ARM64

ARM64_DTB = "arm64/virt-gicv3.dtb"
ARM64_GRUB = "arm64/grub-arm64-efi"


def path(name: str) -> Path:
    return CACHE / name


def xen_efi(arch: str, version: str = "4.17") -> Path:
    """Debian's xen.efi of that release for arch (x86_64 or arm64)."""
    if version not in XEN_VERSIONS:
        raise ValueError(f"no Xen {version} payload; have {XEN_VERSIONS}")
    return path(xen_efi_name(arch, version))


def xen_gz(version: str = "4.17") -> Path:
    """Debian's x86 multiboot xen.gz of that release."""
    if version not in XEN_VERSIONS:
        raise ValueError(f"no Xen {version} payload; have {XEN_VERSIONS}")
    return path(xen_gz_name(version))


def missing() -> list[str]:
    names = [target for package in PACKAGES for target in package.files.values()]
    names += [*ALIASES, ARM64_DTB]
    return [name for name in names if not path(name).exists()]


def _debian_uri() -> str:
    """The mirror this machine already uses, so that nothing names a host of its own."""
    candidates = [Path("/etc/apt/sources.list.d/debian.sources"), Path("/etc/apt/sources.list")]
    for candidate in candidates:
        if not candidate.is_file():
            continue
        text = candidate.read_text()
        match = re.search(r"^URIs:\s*(\S+/debian)\s*$", text, re.MULTILINE)
        if match:
            return match.group(1)
        match = re.search(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+/debian)\s", text, re.MULTILINE)
        if match:
            return match.group(1)
    raise SystemExit("cannot find the Debian mirror in /etc/apt; is this a Debian machine?")


class Apt:
    """apt-get and apt-cache with private state, so the machine's apt setup is left alone."""

    def __init__(self, suite: str, root: Path, *, source_packages: bool = False) -> None:
        self.root = root / (f"{suite}-src" if source_packages else suite)
        for sub in ("lists/partial", "cache/archives/partial", "etc"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        sources = self.root / "etc" / "sources.list"
        line = f"deb [arch=amd64,arm64] {_debian_uri()} {suite} main\n"
        if source_packages:
            line += f"deb-src {_debian_uri()} {suite} main\n"
        sources.write_text(line)
        self.options = [
            "-o", f"Dir::Etc::SourceList={sources}",
            "-o", "Dir::Etc::SourceParts=/dev/null",
            "-o", f"Dir::State::Lists={self.root / 'lists'}",
            "-o", f"Dir::Cache={self.root / 'cache'}",
            "-o", "APT::Architectures::=amd64",
            "-o", "APT::Architectures::=arm64",
            "-o", "Debug::NoLocking=1",
            "-o", "APT::Sandbox::User=root",
        ]  # fmt: skip
        self.updated = False

    def run(self, tool: str, *args: str, cwd: Path | None = None) -> str:
        if not self.updated:
            self.updated = True
            self.run("apt-get", "-q", "update")
        result = subprocess.run(
            [tool, *self.options, *args], cwd=cwd, capture_output=True, text=True, check=False
        )
        if result.returncode:
            raise SystemExit(f"{tool} {' '.join(args)} failed:\n{result.stderr.strip()}")
        return result.stdout

    def resolve(self, name: str, arch: str) -> str:
        """Follow metapackages (linux-image-amd64 -> linux-image-6.12...-amd64-unsigned)."""
        qualified = f"{name}:{arch}"
        output = self.run("apt-cache", "depends", qualified)
        depends = re.findall(r"^\s+Depends:\s+(\S+)", output, re.MULTILINE)
        if name.startswith("linux-image-") and depends:
            target = depends[0].split(":")[0]
            unsigned = f"{target}-unsigned"
            probe = subprocess.run(
                ["apt-cache", *self.options, "show", f"{unsigned}:{arch}"],
                capture_output=True, check=False,
            )  # fmt: skip
            return unsigned if probe.returncode == 0 else target
        return name

    def download(self, name: str, arch: str, into: Path) -> Path:
        before = set(into.glob("*.deb"))
        self.run("apt-get", "-q", "download", f"{name}:{arch}", cwd=into)
        new = set(into.glob("*.deb")) - before
        found = new or set(into.glob(f"{name}_*_{arch}.deb"))
        if not found:
            raise SystemExit(f"apt-get download {name}:{arch} left no .deb in {into}")
        return sorted(found)[-1]


def fetch(verbose: bool = True) -> None:
    if not missing():
        return
    work = CACHE / "apt"
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    apts: dict[str, Apt] = {}
    for package in PACKAGES:
        if all(path(target).exists() for target in package.files.values()):
            continue
        apt = apts.setdefault(package.suite, Apt(package.suite, work))
        resolved = apt.resolve(package.name, package.arch)
        if verbose:
            print(f"payloads: {package.suite} {resolved}:{package.arch}", file=sys.stderr)
        deb = apt.download(resolved, package.arch, debs)
        with tempfile.TemporaryDirectory(dir=CACHE) as scratch:
            subprocess.run(["dpkg-deb", "-x", str(deb), scratch], check=True)
            for member, target in package.files.items():
                matches = sorted(Path(scratch).glob(member))
                if not matches:
                    raise SystemExit(f"{deb.name} has no {member}")
                destination = path(target)
                destination.parent.mkdir(parents=True, exist_ok=True)
                if matches[-1].is_dir():
                    shutil.copytree(matches[-1], destination, dirs_exist_ok=True)
                    continue
                shutil.copyfile(matches[-1], destination)
                os.chmod(destination, 0o644 if "busybox" not in target else 0o755)
    for alias, target in ALIASES.items():
        if not path(alias).exists():
            # A link where the file system has them: the same bytes under both names.
            try:
                os.link(path(target), path(alias))
            except OSError:
                shutil.copyfile(path(target), path(alias))
    if not path(ARM64_DTB).is_file():
        dump_arm64_dtb(path(ARM64_DTB))


def dump_arm64_dtb(destination: Path) -> None:
    """QEMU's own virt device tree for the machine options the boot tests use."""
    from hlimage import qemu

    destination.parent.mkdir(parents=True, exist_ok=True)
    argv = [
        *qemu.machine_args(qemu.ARM64),
        # With firmware loaded QEMU leaves out the pl061 GPIO, which Xen's dom0 cannot probe.
        "-bios", str(qemu.AAVMF),
        "-machine", f"dumpdtb={destination}", "-display", "none", "-nodefaults",
    ]  # fmt: skip
    subprocess.run(argv, check=True, capture_output=True)


INIT_SCRIPT = """#!/bin/busybox sh
B=/bin/busybox
$B mkdir -p /proc /sys /dev
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
CMDLINE="$($B cat /proc/cmdline)"
for t in /dev/console /dev/hvc0 /dev/ttyAMA0 /dev/ttyS0; do
  [ -c $t ] && echo "{cmdline_prefix}[$CMDLINE]" > $t && echo "{marker}" > $t
done
$B sleep {linger}
echo o > /proc/sysrq-trigger
$B sleep 30
"""


def marker(name: str) -> str:
    return MARKER_PREFIX + name


CMDLINE_PREFIX = "HLIMAGE-CMDLINE:"


def cmdline_prefix(name: str) -> str:
    """What the marker initramfs prints before its /proc/cmdline, in brackets: the line the
    boot tests compare with the description's cmdline."""
    return CMDLINE_PREFIX + name


def initramfs_cpio(arch: str, name: str, linger: int = 1) -> bytes:
    """An uncompressed newc archive whose /init prints its /proc/cmdline and marker(name) and
    powers off `linger`
    seconds later. A hardware domain that powers off halts the machine, so beside other domains
    it lingers until they have printed theirs (the boot helper stops QEMU once every marker
    is seen, so lingering costs nothing)."""
    busybox = path(f"{arch}/busybox").read_bytes()
    entries = [
        cpio.directory("bin"),
        cpio.directory("dev"),
        cpio.char_device("dev/console", 5, 1),
        cpio.directory("proc"),
        cpio.directory("sys"),
        cpio.regular("bin/busybox", busybox, 0o755),
        cpio.symlink("bin/sh", "busybox"),
        cpio.regular(
            "init",
            INIT_SCRIPT.format(
                marker=marker(name), cmdline_prefix=cmdline_prefix(name), linger=linger
            ).encode(),
            0o755,
        ),
    ]
    return cpio.build(entries)


def make_initramfs(
    arch: str, name: str, destination: Path, compression: str = "gzip", *, linger: int = 1
) -> Path:
    """Write a marker initramfs: compression is gzip, none, xz or zstd."""
    data = initramfs_cpio(arch, name, linger)
    if compression == "gzip":
        data = gzip.compress(data, compresslevel=6, mtime=0)
    elif compression == "xz":
        import lzma

        data = lzma.compress(data, check=lzma.CHECK_CRC32)
    elif compression == "zstd":
        import zstandard

        data = zstandard.ZstdCompressor().compress(data)
    elif compression != "none":
        raise ValueError(compression)
    destination.write_bytes(data)
    return destination


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="list what is missing; exit 1 if any")
    args = parser.parse_args()
    if args.check:
        absent = missing()
        for name in absent:
            print(path(name))
        raise SystemExit(1 if absent else 0)
    fetch()
    print(f"payloads: ready in {CACHE}", file=sys.stderr)


if __name__ == "__main__":
    main()
