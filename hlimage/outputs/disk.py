"""`--format disk`: a GPT disk image whose one EFI System Partition holds the `esp` tree.

`dd` it to a USB stick. With `--loader uboot` the partition holds the U-Boot tree (the uboot
format's files) and with `--loader fit` the FIT as /boot.scr, which U-Boot's default boot finds
on partition 1. The partition starts at 1 MiB; its FAT volume is written front to back
by the FAT writer, file data streamed straight into its clusters, so no loop device, root or
mkfs is needed. Free space is left as holes: the image is sparse.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from hlimage.errors import FormatError, HlimageError
from hlimage.formats import fat, gpt
from hlimage.formats.payload import Payload
from hlimage.model import System
from hlimage.outputs import esp, registry, uboot
from hlimage.planned import PlannedFile, Role
from hlimage.plumbing import streams
from hlimage.plumbing.atomic import atomic_file
from hlimage.plumbing.streams import Tracked
from hlimage.report import Artifact, BuildReport, PeDigests
from hlimage.source_date import source_date_epoch

MIB = 1 << 20
LABEL = "HLIMAGE"
PARTITION_NAME = "EFI System Partition"
FIT_FILE = "boot.scr"
"""Where U-Boot's default boot looks on a disk: a FIT there is its own boot script."""
# What follows the last partition: the backup entry array and the backup header.
BACKUP_GPT_BYTES = (gpt.entry_array_sectors(gpt.SECTOR) + 1) * gpt.SECTOR


def _human(size: int) -> str:
    """A size as --size takes it: the largest unit that divides it."""
    for suffix, unit in (("T", 1 << 40), ("G", 1 << 30), ("M", MIB), ("K", 1 << 10)):
        if size % unit == 0:
            return f"{size // unit}{suffix}"
    return str(size)


def volume_size_for(disk_size: int) -> int:
    """The FAT volume a disk of `disk_size` bytes holds: from 1 MiB (after the protective MBR
    and primary GPT) to the last whole MiB before the backup GPT. A volume of whole MiBs keeps
    mtools' fake geometry (64 heads, 32 sectors) in whole tracks."""
    return max(0, (disk_size - MIB - BACKUP_GPT_BYTES) // MIB * MIB)


@contextlib.contextmanager
def _sized(files: Sequence[PlannedFile], output: Path) -> Iterator[list[tuple[str, Payload]]]:
    """(path, payload) pairs whose sizes are all known: the FAT writer puts a file's size in
    its directory entry before its data."""
    with streams.sized([item.payload for item in files], output) as payloads:
        yield [(item.name, payload) for item, payload in zip(files, payloads, strict=True)]


def least_disk_size(files: Sequence[tuple[str, Payload]]) -> int:
    """The smallest --size whose volume (`volume_size_for`) holds the files, in whole MiB."""
    smallest = fat.plan(files, headroom=0, label=LABEL).size
    # The MiB in front of the partition, and one more for the backup GPT behind it.
    return -(-smallest // MIB) * MIB + 2 * MIB


def plan_volume(files: Sequence[tuple[str, Payload]], size: int | None) -> tuple[fat.Plan, int]:
    """The FAT volume and the disk's size: from the content with headroom, or `size`."""
    if size is None:
        volume = fat.plan(files, label=LABEL)
        return volume, gpt.layout([volume.size]).disk_size
    if size <= 0 or size % gpt.SECTOR:
        raise HlimageError(
            f"--size {size}: a disk is whole {gpt.SECTOR}-byte sectors; give a size with a K, M "
            "or G suffix, like 256M"
        )
    least = least_disk_size(files)
    if size < least:
        raise HlimageError(
            f"--size {_human(size)}: too small for the ESP's {len(files)} files; the disk needs at "
            f"least {_human(least)}: give --size {_human(least)} or more, or leave --size out"
        )
    try:
        volume = fat.plan(files, size=volume_size_for(size), label=LABEL)
    except FormatError as error:
        raise HlimageError(f"--size {_human(size)}: {error}; choose another --size") from None
    return volume, size


def _identity(disk_size: int, files: Sequence[tuple[str, Tracked]]) -> list[bytes]:
    """What the GUIDs and the volume id are derived from: the disk's size and each file's path
    and digest, which the write has just computed (deriving them first would read every input
    twice)."""
    parts = [b"hlimage disk", disk_size.to_bytes(8, "little")]
    for path, tracked in files:
        parts.append(f"{path}\0{tracked.size}\0{tracked.sha256}".encode())
    return parts


def write(
    out: BinaryIO, volume: fat.Plan, disk_size: int, *, timestamp: int
) -> tuple[gpt.Partition, tuple[fat.WrittenFile, ...]]:
    """Write the disk into `out`, a new empty file: FAT volume first, then the GPT, whose
    GUIDs depend on the digests of the files, computed as the FAT write copies them (every
    payload in `volume` is a Tracked one)."""
    extent = gpt.layout([volume.size]).extents[0]
    # The writer leaves free clusters alone: in a fresh file they are holes that read as zeros.
    out.truncate(disk_size)
    written = fat.write(out, extent.offset, volume, timestamp=timestamp)
    identity = _identity(disk_size, [(path, _tracked(p)) for path, p in volume.payloads])
    volume_id = int.from_bytes(gpt.guid_from(b"volume id", *identity).bytes[:4], "little")
    fat.set_volume_id(out, extent.offset, volume, volume_id)
    partition = gpt.Partition.at(
        extent, gpt.ESP_TYPE, gpt.guid_from(b"partition", *identity), PARTITION_NAME
    )
    gpt.write_headers(out, disk_size, [partition], gpt.guid_from(b"disk", *identity))
    return partition, written


def _pe_ranges(path: str, payload: Payload) -> tuple[tuple[int, int], ...] | None:
    return esp.authenticode_ranges(payload) if esp.is_pe_name(path) else None


def _tracked(payload: Payload) -> Tracked:
    assert isinstance(payload, Tracked), "the disk's files are planned as Tracked payloads"
    return payload


def _self_check(
    out: BinaryIO, partition: gpt.Partition, written: Sequence[fat.WrittenFile]
) -> None:
    """The readers must see what was meant (cheap: headers and directories only)."""
    out.flush()
    _, partitions = gpt.parse(out)
    listed = [(e.path, e.size) for e in fat.list_files(out, partition.offset)]
    meant = [(w.path, w.size) for w in written]
    if partitions != [partition] or sorted(listed) != sorted(meant):
        raise AssertionError(f"disk writer bug: read back {partitions} {listed}, meant {meant}")


def _write_files(files: Sequence[PlannedFile], output: Path, size: int | None) -> list[Tracked]:
    """The disk image of `files` at `output`; each file's payload as it was written (its size
    and digests), in the order given."""
    timestamp = source_date_epoch()
    with atomic_file(output) as out, _sized(files, output) as sized:
        tracked = [
            (path, Tracked(payload, ranges=_pe_ranges(path, payload))) for path, payload in sized
        ]
        volume, disk_size = plan_volume(tracked, size)
        partition, written = write(out, volume, disk_size, timestamp=timestamp)
        _self_check(out, partition, written)
    return [copied for _, copied in tracked]


def build(
    system: System,
    output: Path,
    *,
    size: int | None = None,
    loader: str | None = None,
    signing: Any = None,
    options: registry.BuildOptions | None = None,
) -> BuildReport:
    """The disk image; `loader` "uboot" or "fit" fills its partition for U-Boot instead of
    UEFI: U-Boot's default boot scans partition 1 for /boot.scr.uimg and /boot.scr
    (docs/uboot.md), and the ESP type is one it scans. `options` may name a UEFI chain
    (--loader systemd-boot*, --shim, --unified): outputs/chains.py lays it out."""
    report = BuildReport("disk", output)
    if loader == "fit":
        from hlimage.formats.fit import FitPayload
        from hlimage.outputs import fit as fit_output

        signer = fit_output.signer_of(signing)
        with uboot.spooled(uboot.modules(system), output) as sized:
            planned = fit_output.boot(system, sized, signer=signer)
            payload = FitPayload(planned.fit, signer, label=FIT_FILE)
            (copied,) = _write_files([PlannedFile(FIT_FILE, payload, Role.BOOT)], output, size)
        assert payload.result is not None and copied.size is not None
        how = "FIT: Xen, its device tree, every module and the boot script"
        report.artifacts = [
            Artifact(FIT_FILE, Role.BOOT.value, copied.size, copied.sha256, how),
            *fit_output.artifacts(planned, payload.result.sha256, prefix=f"{FIT_FILE}:"),
        ]
        return report
    # The report is made inside each `with`: a PE file's signers are read from its source,
    # which a chain's or U-Boot tree's temporaries hold.
    if loader == "uboot":
        with uboot.planned_files(system, output) as planned_tree:
            files = planned_tree.files
            return _reported(report, files, _write_files(files, output, size))
    if options is not None and registry.is_chain(options):
        from hlimage.outputs import chains

        with chains.files(system, options, output) as chain:
            files = list(chain)
            return _reported(report, files, _write_files(files, output, size))
    files = esp.files(system)
    return _reported(report, files, _write_files(files, output, size))


def _reported(
    report: BuildReport, files: Sequence[PlannedFile], tracked: Sequence[Tracked]
) -> BuildReport:
    for item, copied in zip(files, tracked, strict=True):
        assert copied.size is not None
        report.artifacts.append(esp.artifact(item, copied.size, copied.sha256))
        if copied.sha256 is not None and copied.ranged_sha256 is not None:
            report.pe_images[item.name] = PeDigests(
                item.name, copied.size, copied.sha256, copied.ranged_sha256,
                esp.pe_signers(item.payload),
            )  # fmt: skip
    return report


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(
        system, output, size=options.size, loader=_loader(options), signing=options.signing,
        options=options,
    )  # fmt: skip


def _loader(options: registry.BuildOptions) -> str | None:
    return options.loader if options.loader in ("uboot", "fit") else None


registry.register(
    registry.OutputFormat(
        name="disk",
        summary="a GPT disk image holding that ESP, to dd to a USB stick (--loader uboot "
        "or fit: the U-Boot tree or FIT instead)",
        writes=registry.Writes.FILE,
        plan=esp.plan,
        build=_build,
        example="xen-disk.img",
        options=frozenset({"size", "loader", "shim", "unified"}),
        loaders=registry.UBOOT_LOADERS | registry.SYSTEMD_BOOT_LOADERS,
        signing=registry.Signing.LOADER,
        pe_images=registry.PeImages.DISK,
    )
)
