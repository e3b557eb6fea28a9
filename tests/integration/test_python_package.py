"""The Python package as an index would get it: `python -m build` makes an sdist and a wheel
(the wheel built from the sdist, so the sdist is complete) that `twine check --strict` accepts;
the wheel carries the templates, and installed into a clean venv it builds what the checkout
builds, byte for byte."""

from __future__ import annotations

import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

from tests.conftest import require, run_cli
from tests.support import staging

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run([sys.executable, "-m", "build", "--outdir", out, ROOT],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out


def test_twine_accepts_the_sdist_and_the_wheel(dist: Path) -> None:
    files = sorted(dist.iterdir())
    assert sorted(p.suffix for p in files) == [".gz", ".whl"], files
    result = subprocess.run([sys.executable, "-m", "twine", "check", "--strict", *files],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("PASSED") == 2, result.stdout


def test_the_wheel_in_a_clean_venv_builds_what_the_checkout_builds(
    dist: Path, cache: Path, tmp_path: Path
) -> None:
    wheel = next(dist.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    for template in ("x86-classic", "x86-hyperlaunch", "arm64-dom0less", "arm64-no-dom0"):
        assert f"hlimage/templates/{template}.toml" in names
    assert "hlimage/py.typed" in names
    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    pip = subprocess.run([environment / "bin/pip", "install", "-q", wheel],
                         capture_output=True, text=True)  # fmt: skip
    require(pip.returncode == 0, f"pip install of the wheel's dependencies failed: {pip.stderr}")
    hlimage = environment / "bin/hlimage"
    system = tmp_path / "system"
    # The templates come from the installed package, not from this checkout.
    result = staging.run([hlimage, "init", "x86-classic", system])
    assert result.returncode == 0, result.stderr
    staging.stage(system, "x86_64", ["xen.efi", "xen.gz", "vmlinuz", "initrd.img"])
    result = staging.run([hlimage, "build", system / "hlimage.toml", "-f", "unified", "-o",
                          tmp_path / "wheel.efi"])  # fmt: skip
    assert result.returncode == 0, result.stderr
    checkout = run_cli("build", system / "hlimage.toml", "-f", "unified", "-o",
                       tmp_path / "checkout.efi")  # fmt: skip
    assert checkout.code == 0, checkout.stderr
    assert (tmp_path / "wheel.efi").read_bytes() == (tmp_path / "checkout.efi").read_bytes()
