"""`--format grub-standalone`: one GRUB EFI binary carrying grub.cfg, Xen and every module in
its memdisk, made with GRUB's own grub-mkimage from a memdisk tar hlimage writes."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from hlimage.errors import HlimageError
from hlimage.formats.payload import Region
from hlimage.model import Arch, System
from hlimage.outputs import registry
from hlimage.outputs.esp import authenticode_ranges
from hlimage.outputs.grub_directory import config_text, plan, write_files
from hlimage.plumbing.atomic import atomic_file, scratch_directory
from hlimage.plumbing.messages import warn
from hlimage.plumbing.streams import copy_stream
from hlimage.report import BuildReport, PeDigests
from hlimage.source_date import source_date_epoch
from hlimage.xen import grub_entry

PLATFORMS = {Arch.X86_64: "x86_64-efi", Arch.ARM64: "arm64-efi"}
PACKAGES = {Arch.X86_64: "grub-efi-amd64-bin", Arch.ARM64: "grub-efi-arm64-bin"}
# Firmware loads the whole GRUB image, memdisk included, into memory before it runs.
LARGE_STANDALONE = 512 << 20


def grub_lib(system: System, given: Path | None) -> Path:
    platform = PLATFORMS[system.arch]
    package = PACKAGES[system.arch]
    directory = given or Path(os.environ.get("HLIMAGE_GRUB_LIB", f"/usr/lib/grub/{platform}"))
    if not (directory / "kernel.img").is_file() or not (directory / "moddep.lst").is_file():
        raise HlimageError(
            f"--grub-lib: {directory} holds no {platform} GRUB modules; install {package}, or "
            f"unpack it (apt-get download {package}; dpkg-deb -x) and pass --grub-lib "
            f".../usr/lib/grub/{platform}",
            where=system.source,
        )
    return directory


def _memdisk(
    stage: Path, lib: Path, platform: str, files: list[tuple[str, Path]], stamp: int
) -> Path:
    """The memdisk tar, written here rather than by grub-mkstandalone, whose copies of the
    modules carry the build's time: fixed owners, modes and times make it reproducible."""
    path = stage / "memdisk.tar"
    members = [(f"boot/grub/{platform}/{module.name}", module) for module in sorted(lib.iterdir())
               if module.suffix in (".mod", ".lst") and module.is_file()]  # fmt: skip
    members += files
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        directories = sorted({str(Path(name).parent) for name, _ in members} - {"."})
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, stamp
            tar.addfile(info)
        for name, source in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = source.stat().st_size, 0o644, stamp
            with source.open("rb") as stream:
                tar.addfile(info, stream)
    return path


def build(
    system: System,
    output: Path,
    *,
    lib: Path | None = None,
    epoch: int | None = None,
    digests: bool = True,
) -> BuildReport:
    """One GRUB EFI image: core with memdisk and tar, everything else in the memdisk, whose
    root the config addresses (`/xen.gz` is `(memdisk)/xen.gz`)."""
    tool = shutil.which("grub-mkimage")
    if tool is None:
        raise HlimageError(
            f"grub-mkimage not found; install grub-common (and {PACKAGES[system.arch]})",
            where=system.source,
        )
    directory = grub_lib(system, lib)
    platform = PLATFORMS[system.arch]
    stanza = grub_entry.stanza(system, grub_entry.Layout(prefix="/"))
    total = sum(item.payload.size_bound() for item in stanza.files)
    if total > LARGE_STANDALONE:
        warn(
            f"the memdisk would hold {total >> 20} MiB; firmware loads a GRUB image whole into "
            "memory, so prefer --format grub or disk for payloads this large"
        )
    report = BuildReport("grub-standalone", output)
    stamp = epoch if epoch is not None else source_date_epoch()
    # Beside the output, not in /tmp: a killed build's copies of the payloads (gigabytes, maybe)
    # are then removed by a later build, as any temporary of the output is.
    with scratch_directory(output) as stage:
        config = stage / "grub.cfg"
        config.write_text(config_text(system, stanza))
        payloads = stage / "files"
        payloads.mkdir()
        report.artifacts = write_files(stanza, payloads, digests=digests)
        contents = [("boot/grub/grub.cfg", config)]
        contents += [(item.name, payloads / item.name) for item in stanza.files]
        memdisk = _memdisk(stage, directory, platform, contents, stamp)
        image = stage / "out.efi"
        argv = [
            tool, "-O", platform, "-d", str(directory), "-o", str(image),
            "-p", "(memdisk)/boot/grub", "-m", str(memdisk), "memdisk", "tar",
        ]  # fmt: skip
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise HlimageError(
                f"grub-mkimage failed: {' '.join(result.stderr.strip().splitlines()[-1:])}",
                where=system.source,
            )
        built = Region(image)
        ranges = authenticode_ranges(built) if digests else None
        with atomic_file(output) as out:
            copied = copy_stream(built, out, digest=digests, ranges=ranges)
        if copied.sha256 is not None and copied.ranged_sha256 is not None:
            report.pe_images[output.name] = PeDigests(
                output.name, built.length, copied.sha256, copied.ranged_sha256
            )
    return report


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, lib=options.grub_lib, digests=options.digests)


registry.register(
    registry.OutputFormat(
        name="grub-standalone",
        summary="one GRUB EFI binary with Xen and every module in its memdisk",
        writes=registry.Writes.FILE,
        plan=plan,
        build=_build,
        pe_images=registry.PeImages.OUTPUT,
        example="xen-grub.efi",
        options=frozenset({"grub_lib"}),
        unsigned_because="boots Xen through GRUB's multiboot2, which firmware does not verify",
    )
)
