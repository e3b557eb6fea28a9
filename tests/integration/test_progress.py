"""The progress bar of long copies: on a terminal (a pseudo-terminal here) for a payload over
the threshold, cleared before the next message; silent when stderr is not a terminal and
under --quiet; and never a byte of difference in the output."""

from __future__ import annotations

import io
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from hlimage.formats import cpio
from hlimage.plumbing import messages, progress
from hlimage.plumbing.streams import file_sha256
from tests.conftest import require
from tests.support import staging

BIG = progress.THRESHOLD + (6 << 20)


def big_system(tmp_path: Path) -> Path:
    """A classic x86 system whose initrd (a cpio archive, then zeros: the kernel's unpacker
    skips them) is over the threshold; sparse, so it costs no disk."""
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")
    initrd = tmp_path / "initrd.img"
    initrd.write_bytes(cpio.build([cpio.regular("init", b"#!/bin/sh\n", 0o755)]))
    os.truncate(initrd, BIG)
    staging.stage(tmp_path, "x86_64", ["xen.efi", "vmlinuz"])
    description = tmp_path / "hlimage.toml"
    description.write_text(
        '[image]\narch = "x86_64"\n\n[xen]\nefi = "xen.efi"\n\n'
        '[[domain]]\nname = "dom0"\nkernel = "vmlinuz"\ninitrd = "initrd.img"\n'
    )
    return description


def build_on_terminal(description: Path, output: Path, *options: str) -> bytes:
    """`hlimage build` with stderr on a pseudo-terminal; what the terminal showed."""
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [staging.HLIMAGE, *options, "build", description, "-f", "unified", "-o", output],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
        )
        os.close(terminal)
        shown = bytearray()
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not data:
                break
            shown += data
        assert process.wait(timeout=120) == 0, shown.decode(errors="replace")
    finally:
        os.close(controller)
    return bytes(shown)


def test_a_terminal_shows_a_bar_that_changes_nothing(cache: Path, tmp_path: Path) -> None:
    description = big_system(tmp_path)
    shown = build_on_terminal(description, tmp_path / "tty.efi")
    assert b"hlimage: copying initrd.img" in shown
    assert f"/{BIG >> 20} MiB".encode() in shown and b"%" in shown
    # Cleared, so that the next message has the line to itself.
    bar_end = shown.rindex(b"MiB")
    assert shown.index(b"\r\x1b[K", bar_end) < shown.index(b"hlimage: wrote")

    result = staging.run(
        [staging.HLIMAGE, "build", description, "-f", "unified", "-o", tmp_path / "pipe.efi"]
    )
    assert result.returncode == 0
    assert result.stderr == f"hlimage: wrote {tmp_path / 'pipe.efi'} (unified)\n"
    assert file_sha256(tmp_path / "tty.efi") == file_sha256(tmp_path / "pipe.efi")


def test_quiet_silences_it(cache: Path, tmp_path: Path) -> None:
    description = big_system(tmp_path)
    assert build_on_terminal(description, tmp_path / "out.efi", "--quiet") == b""


def test_small_copies_and_files_get_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "quiet", False)
    captured = io.StringIO()
    monkeypatch.setattr(sys, "stderr", captured)
    assert progress.start("big", BIG) is None  # stderr is a file, a pipe: not a terminal
    monkeypatch.setattr(captured, "isatty", lambda: True)
    assert progress.start("small", progress.THRESHOLD - 1) is None
    assert progress.start("unknown size", None) is None
    assert captured.getvalue() == ""


def test_the_tty_check_and_quiet_decide(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(messages, "quiet", False)
    terminal = io.StringIO()
    monkeypatch.setattr(terminal, "isatty", lambda: True)
    monkeypatch.setattr(sys, "stderr", terminal)
    bar = progress.start("/boot/vmlinuz-6.12.0-amd64", BIG)
    assert bar is not None and bar.name == "vmlinuz-6.12.0-amd64"
    assert terminal.getvalue().startswith("\rhlimage: copying vmlinuz-6.12.0-amd64")
    monkeypatch.setattr(messages, "quiet", True)
    assert progress.start("big", BIG) is None


def test_redraws_are_throttled() -> None:
    stream = io.StringIO()
    bar = progress.Bar("payload", BIG, stream)
    for done in range(0, BIG, 1 << 20):
        bar.update(done)
    bar.finish()
    text = stream.getvalue()
    # 70 updates in far less than a second: drawn once or twice, not 70 times.
    assert 1 <= text.count("\rhlimage: copying") <= 3
    assert text.endswith("\r\x1b[K")
