"""Durable outputs: what is renamed into place is on disk first, and so is the rename.

A power cut cannot be simulated here, so these tests record the calls that make an output
durable (every fsync, by the path of what it flushed, and every rename) and check their order:
each output file flushed with all its bytes, then the directory holding the temporary, then
the rename, then that directory again; for a directory output every file and directory in it
before the rename, each directory after what it holds.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from hlimage.plumbing import atomic
from tests.conftest import run_cli


@dataclass(frozen=True)
class Event:
    kind: str
    """'fsync' or 'rename' (an exchange is a rename both ways)."""
    path: str
    """What was flushed; what was renamed."""
    to: str = ""
    size: int = 0
    mode: int = 0


class Recorder:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def fsyncs(self) -> list[str]:
        return [event.path for event in self.events if event.kind == "fsync"]

    def index(self, kind: str, path: Path | str, *, last: bool = False) -> int:
        found = [
            index
            for index, event in enumerate(self.events)
            if event.kind == kind and event.path == str(path)
        ]
        assert found, f"no {kind} of {path} in {self.events}"
        return found[-1] if last else found[0]

    def between(self, kind: str, path: Path | str, after: int, before: int) -> bool:
        """Whether a `kind` of `path` happened after event `after` and before `before`."""
        return any(
            event.kind == kind and event.path == str(path)
            for event in self.events[after + 1 : before]
        )

    def renames(self) -> list[Event]:
        return [event for event in self.events if event.kind == "rename"]


@pytest.fixture
def recorder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Recorder]:
    recorder = Recorder()
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename
    real_exchange = atomic._exchange

    def fsync(descriptor: int) -> None:
        status = os.fstat(descriptor)
        path = os.readlink(f"/proc/self/fd/{descriptor}")
        recorder.events.append(Event("fsync", path, size=status.st_size, mode=status.st_mode))
        real_fsync(descriptor)

    def renamer(real: Callable[..., object]) -> Callable[..., None]:
        def rename(source: os.PathLike[str] | str, target: os.PathLike[str] | str) -> None:
            recorder.events.append(Event("rename", os.fspath(source), os.fspath(target)))
            real(source, target)

        return rename

    def exchange(first: Path, second: Path) -> bool:
        done = real_exchange(first, second)
        if done:
            recorder.events.append(Event("rename", str(first), str(second)))
        return done

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", renamer(real_replace))
    monkeypatch.setattr(os, "rename", renamer(real_rename))
    monkeypatch.setattr(atomic, "_exchange", exchange)
    yield recorder


def test_file_output_is_flushed_before_and_after_its_rename(
    tmp_path: Path, recorder: Recorder
) -> None:
    target = tmp_path / "out.img"
    target.write_bytes(b"old output")
    data = b"new output " * 10000
    with atomic.atomic_file(target) as out:
        out.write(data)
        temporary = Path(out.name)
        assert not recorder.events, "nothing is flushed while the output is being written"
    assert target.read_bytes() == data
    (rename,) = recorder.renames()
    assert (rename.path, rename.to) == (str(temporary), str(target))
    flushed = recorder.index("fsync", temporary)
    assert recorder.events[flushed].size == len(data)  # all of it, not what a buffer held
    assert stat.S_IMODE(recorder.events[flushed].mode) == 0o666 & ~atomic._umask()
    renamed = recorder.events.index(rename)
    assert flushed < recorder.index("fsync", tmp_path) < renamed
    assert recorder.index("fsync", tmp_path, last=True) > renamed


def fill(directory: Path) -> None:
    (directory / "EFI" / "BOOT").mkdir(parents=True)
    (directory / "EFI" / "BOOT" / "BOOTX64.EFI").write_bytes(b"x" * 5000)
    (directory / "EFI" / "BOOT" / "BOOTX64.cfg").write_text("[global]\n")
    (directory / "README.txt").write_text("hello\n")
    (directory / "empty").mkdir()
    (directory / "link").symlink_to("README.txt")


def check_tree_flushed(recorder: Recorder, temporary: Path, target: Path) -> None:
    """Every file and directory now at `target` was flushed, under its temporary name, with
    all its bytes and before the temporary was renamed to `target`; each directory after
    what it holds; the directory holding both before and after."""
    (rename,) = [event for event in recorder.renames() if event.path == str(temporary)]
    assert rename.to == str(target)
    renamed = recorder.events.index(rename)
    placed = [target, *sorted(target.rglob("*"))]
    for path in placed:
        if path.is_symlink():
            continue  # not a file of its own: an entry of its directory
        flushed = recorder.index("fsync", temporary / path.relative_to(target))
        assert flushed < renamed, f"{path} is flushed after the rename"
        if path.is_file():
            assert recorder.events[flushed].size == path.stat().st_size
        if path.is_dir():
            for child in path.iterdir():
                if not child.is_symlink():
                    earlier = recorder.index("fsync", temporary / child.relative_to(target))
                    assert earlier < flushed, f"{child} is flushed after its directory"
    first_rename = recorder.events.index(recorder.renames()[0])
    assert recorder.index("fsync", target.parent) < first_rename
    assert recorder.index("fsync", target.parent, last=True) > renamed


def test_new_directory_output(tmp_path: Path, recorder: Recorder) -> None:
    target = tmp_path / "esp"
    with atomic.atomic_directory(target) as temporary:
        fill(temporary)
    check_tree_flushed(recorder, temporary, target)


@pytest.mark.parametrize("exchange", [True, False])
def test_replaced_directory_output(
    tmp_path: Path, recorder: Recorder, monkeypatch: pytest.MonkeyPatch, exchange: bool
) -> None:
    """Replacing an earlier output: by one exchange, or by two renames where the file system
    cannot exchange; either way all flushed before, and the directory after."""
    target = tmp_path / "esp"
    target.mkdir()
    (target / "README.txt").write_text("old\n")
    if not exchange:
        monkeypatch.setattr(atomic, "_exchange", lambda first, second: False)
    with atomic.atomic_directory(target) as temporary:
        fill(temporary)
    assert (target / "README.txt").read_text() == "hello\n"
    assert len(recorder.renames()) == (1 if exchange else 2)
    check_tree_flushed(recorder, temporary, target)


def test_nothing_is_renamed_or_flushed_when_the_build_fails(
    tmp_path: Path, recorder: Recorder
) -> None:
    target = tmp_path / "out.img"
    with pytest.raises(RuntimeError), atomic.atomic_file(target) as out:
        out.write(b"half")
        raise RuntimeError("the build failed")
    assert recorder.events == [] and not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_failed_flush_fails_the_build_and_keeps_the_old_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "out.img"
    target.write_bytes(b"old output")

    def broken(descriptor: int) -> None:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    monkeypatch.setattr(os, "fsync", broken)
    with (
        pytest.raises(OSError, match="cannot flush to disk") as caught,
        atomic.atomic_file(target) as out,
    ):
        out.write(b"new output")
    assert caught.value.filename == str(target)
    assert target.read_bytes() == b"old output"
    assert [path.name for path in tmp_path.iterdir()] == ["out.img"]


def test_a_directory_the_file_system_cannot_flush_is_not_an_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def no_directories(descriptor: int) -> None:
        if stat.S_ISDIR(os.fstat(descriptor).st_mode):
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL))
        real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", no_directories)
    with atomic.atomic_file(tmp_path / "out.img") as out:
        out.write(b"data")
    assert (tmp_path / "out.img").read_bytes() == b"data"


@pytest.mark.parametrize("output_format", ["unified", "esp", "disk"])
def test_builds_flush_their_outputs(
    x86_system: Path, tmp_path: Path, recorder: Recorder, output_format: str
) -> None:
    """What `hlimage build` writes goes through the same steps: the output and its manifest,
    each flushed whole before it is renamed into place."""
    output = tmp_path / f"out-{output_format}"
    result = run_cli("-q", "build", x86_system, "-f", output_format, "-o", output)
    assert result.code == 0, result.stderr
    renames = {Path(event.to): event for event in recorder.renames()}
    for target in (output, tmp_path / f"out-{output_format}.manifest.json"):
        rename = renames[target]
        renamed = recorder.events.index(rename)
        flushed = recorder.index("fsync", rename.path)
        assert recorder.between("fsync", tmp_path, flushed, renamed)
        assert recorder.between("fsync", tmp_path, renamed, len(recorder.events))
        if target.is_file():
            assert recorder.events[flushed].size == target.stat().st_size
        else:
            flushed_files = [
                event
                for event in recorder.events[:renamed]
                if event.kind == "fsync" and event.path.startswith(rename.path + "/")
            ]
            assert len(flushed_files) == sum(1 for _ in target.rglob("*"))
