"""Running a script in a clean Debian 12 root (scripts/fresh-root), as a fresh machine would.

The root holds the checkout's tracked files (at /src/hlimage, the script's working directory)
and nothing else of this machine but how it reaches its package archives. The test's inputs go
in through stdin, as a tar unpacked at /inputs; what the script leaves in /results comes back
through stdout, as a tar unpacked into the test's directory. Everything the script prints goes
to its log (stderr). fresh-root needs root (it uses debootstrap, mount and chroot).
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require

ROOT = Path(__file__).resolve().parents[2]
FRESH_ROOT = ROOT / "scripts" / "fresh-root"
SCRIPTS = Path(__file__).resolve().parent / "roots"
WRAPPER = SCRIPTS / "run.sh"


@dataclass(frozen=True)
class Outcome:
    returncode: int
    results: Path
    log: str


def available() -> None:
    """Skip (fail under CI=true) where no clean root can be made."""
    require(os.geteuid() == 0, "fresh-root needs root (debootstrap, mount, chroot)")
    require(shutil.which("chroot") is not None, "chroot missing (coreutils)")
    require(shutil.which("cpio") is not None, "cpio missing (fresh-root copies with it)")


def run(script: str, inputs: dict[str, Path], results: Path, *, timeout: float = 1800) -> Outcome:
    """Run tests/support/roots/SCRIPT in a clean root; `inputs` (name -> file) are /inputs."""
    available()
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", dereference=True) as archive:
        for name, path in inputs.items():
            archive.add(path.resolve(), arcname=name)
    script_path = (SCRIPTS / script).relative_to(ROOT)
    completed = subprocess.run(
        [FRESH_ROOT, "bash", WRAPPER.relative_to(ROOT), script_path],
        input=buffer.getvalue(),
        capture_output=True,
        timeout=timeout,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    results.mkdir(parents=True, exist_ok=True)
    log = completed.stderr.decode("utf-8", "replace")
    (results / "root.log").write_text(log)
    if completed.stdout:
        with tarfile.open(fileobj=io.BytesIO(completed.stdout), mode="r") as archive:
            # Python 3.11.4 and later take a filter; bookworm's 3.11.2 (a clean root's) does not.
            if hasattr(tarfile, "tar_filter"):
                archive.extractall(results, filter="tar")
            else:
                archive.extractall(results)
    return Outcome(completed.returncode, results, log)
