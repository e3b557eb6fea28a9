"""Fixtures shared by every test: the Debian payloads, marker initramfs images, the CLI."""

from __future__ import annotations

import io
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import payloads

IN_CI = os.environ.get("CI") == "true"


def require(condition: bool, reason: str) -> None:
    """Skip a test whose prerequisite is missing, except under CI=true, where it fails."""
    if not condition:
        if IN_CI:
            pytest.fail(f"prerequisite missing under CI=true: {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def cache() -> Path:
    absent = payloads.missing()
    require(not absent, f"test payloads missing ({', '.join(absent)}); run scripts/setup")
    return payloads.CACHE


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_cli(*args: str | os.PathLike[str]) -> Result:
    """Run the hlimage command in this process, as a user would call it."""
    from hlimage import cli

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["hlimage", *map(str, args)]
    code = 0
    try:
        with redirect_stdout(out), redirect_stderr(err):
            cli.main()
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    finally:
        sys.argv = argv
        from hlimage.plumbing import messages

        messages.quiet = False  # --quiet is process state; each call starts afresh
    return Result(code, out.getvalue(), err.getvalue())


@pytest.fixture
def hlimage() -> Callable[..., Result]:
    return run_cli


def write_description(directory: Path, text: str, name: str = "hlimage.toml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


@pytest.fixture
def x86_system(tmp_path: Path, cache: Path) -> Iterator[Path]:
    """A classic x86 description with a marker initramfs, in tmp_path."""
    payloads.make_initramfs("x86_64", "dom0", tmp_path / "initrd.gz")
    yield write_description(
        tmp_path,
        f"""
[image]
arch = "x86_64"

[xen]
efi = "{cache / "x86_64/xen.efi"}"
cmdline = "console=com1 com1=115200,8n1 loglvl=all guest_loglvl=all noreboot"

[[domain]]
name = "dom0"
kernel = "{cache / "x86_64/vmlinuz"}"
initrd = "initrd.gz"
cmdline = "console=hvc0 earlyprintk=xen"
memory = "512M"
""",
    )
