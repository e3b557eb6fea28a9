"""Atomic outputs under SIGKILL: a build killed at any moment leaves the target holding the
previous complete output (or, for a build that finished first, the new complete one), never a
partial one. Every output kind, eight kills each at seeded random moments, with an initrd of
320 MiB (a sparse file) so that each build takes a moment."""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from hlimage.plumbing.atomic import TEMP_MARK
from hlimage.plumbing.streams import file_sha256
from tests.conftest import require
from tests.support import descriptions, payloads

KILLS = 8
LARGE = 320 << 20
GRUB_LIB = Path("/usr/lib/grub/x86_64-efi")


@dataclass(frozen=True)
class Kind:
    name: str
    argv: tuple[str, ...]
    """After `python -m hlimage.cli`: {config} and {out} are filled in."""
    needs_grub: bool = False


KINDS = [
    Kind("unified", ("build", "{config}", "-f", "unified", "-o", "{out}", "--no-manifest")),
    Kind("esp", ("build", "{config}", "-f", "esp", "-o", "{out}", "--no-manifest")),
    Kind("disk", ("build", "{config}", "-f", "disk", "-o", "{out}", "--no-manifest")),
    Kind("grub", ("build", "{config}", "-f", "grub", "-o", "{out}", "--no-manifest")),
    Kind(
        "grub-standalone",
        ("build", "{config}", "-f", "grub-standalone", "-o", "{out}", "--no-manifest"),
        needs_grub=True,
    ),
    Kind(
        "pxe", ("build", "{config}", "-f", "pxe", "-o", "{out}", "--no-manifest"), needs_grub=True
    ),
    Kind("lcm", ("lcm", "{config}", "-o", "{out}")),
]


@pytest.fixture(scope="module")
def inputs(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(small description, large description): the same system, the large one's initrd a
    real initramfs followed by 320 MiB of hole (read fast, written for real)."""
    directory = tmp_path_factory.mktemp("kill-inputs")
    small = directory / "small.img"
    small.write_bytes(payloads.initramfs_cpio("x86_64", "dom0"))
    large = directory / "large.img"
    with large.open("wb") as stream:
        stream.write(small.read_bytes())
        stream.truncate(LARGE)
    # Different memory too, so that the LCM (which names no file contents) differs as well.
    return (
        descriptions.x86_classic(
            directory, name="small.toml", initrd_name="small.img", memory="256M"
        ),
        descriptions.x86_classic(directory, name="large.toml", initrd_name="large.img"),
    )


State = tuple[object, ...] | None


def state(target: Path) -> State:
    """What is at the target: nothing, a file's size and digest, or a directory's tree."""
    if not target.exists():
        return None
    if target.is_file():
        return ("file", target.stat().st_size, file_sha256(target))
    entries: list[tuple[object, ...]] = []
    for path in sorted(target.rglob("*")):
        relative = str(path.relative_to(target))
        if path.is_dir():
            entries.append((relative, "dir"))
        else:
            entries.append((relative, path.stat().st_size, file_sha256(path)))
    return ("dir", tuple(entries))


def command(kind: Kind, config: Path, out: Path) -> list[str]:
    args = [arg.format(config=config, out=out) for arg in kind.argv]
    return [sys.executable, "-m", "hlimage.cli", "-q", *args]


def complete_build(kind: Kind, config: Path, out: Path) -> float:
    """Build to the end; returns the wall time it took."""
    started = time.monotonic()
    result = subprocess.run(command(kind, config, out), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return time.monotonic() - started


def remove_temporaries(directory: Path, name: str) -> None:
    """What killed builds leave beside the target (hlimage removes them after an hour)."""
    for stale in directory.glob(f".{name}.*{TEMP_MARK}"):
        if stale.is_dir():
            shutil.rmtree(stale)
        else:
            stale.unlink()


def exchange_supported(directory: Path) -> bool:
    """Whether directories here are swapped in one step (renameat2 RENAME_EXCHANGE); if not,
    a kill between the two renames of a directory output may leave nothing at the target."""
    from hlimage.plumbing.atomic import _exchange

    first, second = directory / "swap-a", directory / "swap-b"
    first.mkdir()
    second.mkdir()
    try:
        return _exchange(first, second)
    finally:
        first.rmdir()
        second.rmdir()


@pytest.mark.parametrize("kind", KINDS, ids=[kind.name for kind in KINDS])
def test_killed_builds_leave_a_whole_output(
    kind: Kind, inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    if kind.needs_grub:
        require((GRUB_LIB / "kernel.img").is_file(), f"{GRUB_LIB} missing (grub-efi-amd64-bin)")
        require(shutil.which("grub-mkimage") is not None, "grub-mkimage missing (grub-common)")
    small, large = inputs
    target = tmp_path / "out"
    (tmp_path / "reference-dir").mkdir()
    reference = tmp_path / "reference-dir" / "out"
    # The two outputs a kill may leave: the previous one, or the new one if it got there.
    complete_build(kind, small, target)
    previous = state(target)
    # The faster of two, so that the kills spread over a build rather than after it.
    took = min(complete_build(kind, large, reference), complete_build(kind, large, reference))
    finished = state(reference)
    shutil.rmtree(reference) if reference.is_dir() else reference.unlink()
    assert previous is not None and finished is not None and previous != finished
    allowed: set[State] = {previous, finished}
    if not exchange_supported(tmp_path):
        allowed.add(None)

    chance = random.Random(f"hlimage-kill-{kind.name}")
    outcomes = []
    midway = 0
    for _ in range(KILLS):
        delay = chance.uniform(0.05, took * 0.7)
        process = subprocess.Popen(
            command(kind, large, target), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(delay)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.kill(process.pid, signal.SIGKILL)
            process.wait()
        now = state(target)
        assert now in allowed, f"{kind.name}: killed after {delay:.2f} s, the target is partial"
        outcomes.append("previous" if now == previous else "new" if now == finished else "none")
        # A temporary beside the target: the kill came while the new output was being written.
        midway += any(tmp_path.glob(f".{target.name}.*{TEMP_MARK}"))
        remove_temporaries(tmp_path, target.name)
        if now != previous:
            complete_build(kind, small, target)  # so that the next kill has the old one again
    print(f"{kind.name}: {KILLS} kills ({midway} while writing), build {took:.2f} s: {outcomes}")
    # The delays must have caught builds in the middle, not only before or after them (the
    # LCM is written in a moment, so its kills mostly come before).
    assert "previous" in outcomes, outcomes
    assert midway or kind.name == "lcm", "no kill came while the output was being written"
