"""`hlimage check`: which formats can carry a description, and why the others cannot."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.descriptions import Guest


def verdicts(description: Path) -> tuple[int, dict[str, str | None]]:
    result = run_cli("check", "--json", description)
    return result.code, {v["format"]: v["problem"] for v in json.loads(result.stdout or "[]")}


def test_x86_classic_fits_everything(cache: Path, tmp_path: Path) -> None:
    code, found = verdicts(descriptions.x86_classic(tmp_path))
    assert code == 0
    arm64_only = {name: found.pop(name) for name in ("uboot", "fit")}
    assert found == dict.fromkeys(
        ["unified", "esp", "disk", "grub", "grub-standalone", "pxe"], None
    )
    for name, problem in arm64_only.items():
        assert f'--format {name} is for arm64 only, not "x86_64"' in (problem or "")


def test_arm64_domus_name_the_formats(cache: Path, tmp_path: Path) -> None:
    code, found = verdicts(descriptions.arm64(tmp_path, [Guest("guest1")]))
    assert code == 0
    assert found["esp"] is None and found["disk"] is None
    assert "use --format esp or disk" in (found["unified"] or "")
    assert "GRUB on arm64 boots dom0 only" in (found["grub"] or "")
    text = run_cli("check", descriptions.arm64(tmp_path, [Guest("guest1")], name="b.toml")).stdout
    assert text.splitlines()[1].split() == ["esp", "ok"]


def test_a_bad_description_exits_2(cache: Path, tmp_path: Path) -> None:
    description = descriptions.arm64(tmp_path, [Guest("g", vcpus=None)], dom0=False)
    result = run_cli("check", description)
    assert result.code == 2
    assert "vcpus: is missing" in result.stdout
