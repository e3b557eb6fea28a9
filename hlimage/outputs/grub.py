"""`--format grub` (grub.cfg and the files it names) and `--format grub-standalone` (one GRUB
EFI binary carrying all of it in its memdisk, made with GRUB's own grub-mkstandalone)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

from hlimage.atomic import atomic_directory, atomic_file, scratch_directory
from hlimage.errors import HlimageError
from hlimage.formats import grubcfg
from hlimage.messages import warn
from hlimage.model import Arch, System
from hlimage.report import Artifact, BuildReport
from hlimage.streams import copy_range, copy_stream
from hlimage.xen import grub

PLATFORMS = {Arch.X86_64: "x86_64-efi", Arch.ARM64: "arm64-efi"}
PACKAGES = {Arch.X86_64: "grub-efi-amd64-bin", Arch.ARM64: "grub-efi-arm64-bin"}
# Firmware loads the whole GRUB image, memdisk included, into memory before it runs.
LARGE_STANDALONE = 512 << 20


def config_text(system: System, stanza: grub.Stanza, *, timeout: int = 0) -> str:
    header = [f"set default={grubcfg.quote(stanza.entry.entry_id)}", f"set timeout={timeout}"]
    return grubcfg.render([stanza.entry], header=header)


def _write_files(stanza: grub.Stanza, root: Path) -> list[Artifact]:
    artifacts = []
    for item in stanza.files:
        with (root / item.name).open("wb") as out:
            result = copy_stream(item.payload, out)
        artifacts.append(
            Artifact(
                item.name, item.role, result.size, result.sha256, item.payload.label, item.domain
            )
        )
    return artifacts


def build_directory(system: System, output: Path, *, prefix: str = "/") -> BuildReport:
    stanza = grub.stanza(system, grub.Layout(prefix=prefix))
    report = BuildReport("grub", output)
    with atomic_directory(output) as temporary:
        text = config_text(system, stanza)
        (temporary / "grub.cfg").write_text(text)
        report.artifacts = _write_files(stanza, temporary)
    return report


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


def build_standalone(
    system: System, output: Path, *, lib: Path | None = None, epoch: int | None = None
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
    stanza = grub.stanza(system, grub.Layout(prefix="/"))
    total = sum(item.payload.size_bound() for item in stanza.files)
    if total > LARGE_STANDALONE:
        warn(
            f"the memdisk would hold {total >> 20} MiB; firmware loads a GRUB image whole into "
            "memory, so prefer --format grub or disk for payloads this large"
        )
    report = BuildReport("grub-standalone", output)
    stamp = epoch if epoch is not None else int(os.environ.get("SOURCE_DATE_EPOCH", "0") or 0)
    # Beside the output, not in /tmp: a killed build's copies of the payloads (gigabytes, maybe)
    # are then removed by a later build, as any temporary of the output is.
    with scratch_directory(output) as stage:
        config = stage / "grub.cfg"
        config.write_text(config_text(system, stanza))
        payloads = stage / "files"
        payloads.mkdir()
        report.artifacts = _write_files(stanza, payloads)
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
        with atomic_file(output) as out, image.open("rb") as built:
            copy_range(built, 0, image.stat().st_size, out)
    return report
