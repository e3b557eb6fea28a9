"""What stands in for a man page: every command and option has help, the README points to it,
shell completion prints a script for bash, zsh and fish, and the README's description of the
`--json` output names every key `inspect` and `check` print."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pytest

from hlimage.cli import cli
from tests.conftest import require, run_cli
from tests.support import descriptions, staging
from tests.support.descriptions import Guest

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def test_every_command_and_option_has_help() -> None:
    assert cli.help
    for param in cli.params:
        assert isinstance(param, click.Option) and param.help, param.name
    for name, command in cli.commands.items():
        assert command.help and command.short_help != "", name
        for param in command.params:
            if isinstance(param, click.Option):
                assert param.help, f"hlimage {name} {param.opts[0]}: no help"
        assert f"`hlimage {name} " in README, f"hlimage {name} is not in the README"
        assert run_cli(name, "--help").code == 0
    assert "`hlimage COMMAND --help`" in README


@pytest.mark.parametrize(
    ("shell", "expected"),
    [
        ("bash", "complete -o nosort -F _hlimage_completion hlimage"),
        ("zsh", "#compdef hlimage"),
        ("fish", "complete --no-files --command hlimage"),
    ],
)
def test_completion_scripts(shell: str, expected: str) -> None:
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")
    assert f"_HLIMAGE_COMPLETE={shell}_source hlimage" in README
    result = staging.run([staging.HLIMAGE], _HLIMAGE_COMPLETE=f"{shell}_source")
    assert result.returncode == 0, result.stderr
    assert expected in result.stdout


def test_completion_offers_formats_and_templates() -> None:
    require(staging.HLIMAGE.is_file(), f"{staging.HLIMAGE} (pip install -e .)")

    def complete(words: str) -> list[str]:
        result = staging.run(
            [staging.HLIMAGE],
            _HLIMAGE_COMPLETE="bash_complete",
            COMP_WORDS=words,
            COMP_CWORD=str(len(words.split()) - (0 if words.endswith(" ") else 1)),
        )
        assert result.returncode == 0, result.stderr
        return [line.split(",", 1)[1] for line in result.stdout.splitlines()]

    assert "grub-standalone" in complete("hlimage build x.toml --format ")
    assert complete("hlimage init arm64") == ["arm64-dom0less", "arm64-no-dom0"]


def documented_keys() -> set[str]:
    section = README[README.index("`hlimage inspect --json` prints") :]
    section = section[: section.index("\n## ")]
    return set(re.findall(r'"([a-z_0-9]+)"', section))


def json_keys(data: object, depth: int = 0) -> set[str]:
    """Keys of the objects down to `depth` 2 (the README lists the first levels)."""
    found: set[str] = set()
    if isinstance(data, dict):
        for key, value in data.items():
            if not key.startswith(".") and "," not in key:
                found.add(key)
            if depth < 2:
                found |= json_keys(value, depth + 1)
    elif isinstance(data, list):
        for item in data:
            found |= json_keys(item, depth)
    return found


def test_readme_names_every_inspect_and_check_key(cache: Path, tmp_path: Path) -> None:
    description = descriptions.arm64(tmp_path, [Guest("guest1")])
    outputs = {
        "esp": tmp_path / "esp",
        "disk": tmp_path / "disk.img",
        "uboot": tmp_path / "uboot",
        "fit": tmp_path / "boot.fit",
    }
    for output_format, output in outputs.items():
        assert run_cli("build", description, "-f", output_format, "-o", output).code == 0
    outputs["uboot-disk"] = tmp_path / "uboot.img"
    result = run_cli("build", description, "-f", "disk", "--loader", "uboot", "-o",
                     outputs["uboot-disk"])  # fmt: skip
    assert result.code == 0, result.stderr
    outputs["script"] = outputs["uboot"] / "boot.scr"
    unified = descriptions.x86_classic(tmp_path, name="x86.toml")
    assert run_cli("build", unified, "-f", "unified", "-o", tmp_path / "x.efi").code == 0
    assert run_cli("lcm", description, "-o", tmp_path / "host.dtb").code == 0

    documented = documented_keys()
    for path in (tmp_path / "x.efi", *outputs.values(), tmp_path / "host.dtb"):
        result = run_cli("inspect", "--json", path)
        assert result.code == 0, result.stderr
        data = json.loads(result.stdout)
        assert f'"type": "{data["type"]}"' in README
        # Domain properties and xen.cfg keys are the description's own, not inspect's.
        if data["type"] != "dtb":
            missing = json_keys(data) - documented - {"global", "xen", "options", "kernel"}
            missing -= {"ramdisk", "dtb", "default", "xsm", "ucode"}
            assert not missing, f"{data['type']}: README does not name {sorted(missing)}"
        else:
            assert {"type", "path", "kind", "domains"} <= documented

    check = json.loads(run_cli("check", "--json", description).stdout)
    assert all(set(verdict) <= {"format", "problem", "details"} for verdict in check)
    assert any("details" in verdict for verdict in check)
    assert '"details"' in README[README.index("`hlimage check --json` prints") :]
    assert '{"format": "unified", "problem": null}' in README


def test_readme_key_table_lists_every_key() -> None:
    """Every key of the option tables has a row in the README's key table (with the release
    that reads it, where one does), and the table names no key hlimage does not have."""
    import re

    from hlimage import config

    section = README[README.index("| key | what Xen gets | Xen | build |") :]
    table = section[: section.index("\n\n")]
    rows = [line for line in table.splitlines() if line.startswith("| `")]
    listed: set[tuple[str, str]] = set()
    for row in rows:
        first_cell = row.split("|")[1]
        words = re.findall(r"`([^`]+)`", first_cell)
        label, _, key = words[0].rpartition(" ")
        name = label.strip("[]")
        for word in [key, *words[1:]]:
            listed.add((name, word))
    known = {(name, option.key) for name, options in config.SECTIONS.items() for option in options}
    assert known - listed == set(), "keys missing from the README's table"
    assert listed - known == set(), "the README's table names keys hlimage does not have"
