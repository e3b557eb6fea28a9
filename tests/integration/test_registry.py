"""Every format in the output registry, through the command line: `check` names it, `build`
writes it, `inspect` reads it, a rebuild gives the same bytes, and the options it does not
take are refused with exit 2 and nothing written."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from hlimage.model import Arch
from hlimage.outputs import registry
from tests.conftest import run_cli
from tests.support import descriptions
from tests.support.descriptions import Guest

FORMATS = registry.names()
# A value for each build option, as the command line takes it.
OPTION_ARGS = {
    "replace": ["--replace"],
    "size": ["--size", "64M"],
    "prefix": ["--prefix", "/boot"],
    "grub_lib": ["--grub-lib", "/usr/lib/grub/x86_64-efi"],
    "loader": ["--loader", "uboot"],
    "shim": ["--shim", "/usr/lib/shim/shimx64.efi"],
    "unified": ["--unified"],
}


def digest_of(path: Path) -> str:
    """One digest of a file, or of a directory's every file with its relative path."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    for item in files:
        digest.update(str(item.relative_to(path.parent)).encode() + b"\0")
        with item.open("rb") as stream:
            while chunk := stream.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def description_for(output: registry.OutputFormat, directory: Path) -> Path:
    """x86 classic where the format takes x86, else arm64 dom0 and a dom0less domU."""
    if Arch.X86_64 in output.arches:
        return descriptions.x86_classic(directory)
    return descriptions.arm64(directory, [Guest("guest1", "128M", 1)])


def test_the_registry_lists_each_output_module_once() -> None:
    assert FORMATS == ["unified", "esp", "disk", "grub", "grub-standalone", "pxe", "uboot", "fit"]
    assert set(OPTION_ARGS) == set(registry.OPTIONS)
    for output in registry.formats():
        assert output.summary and output.example and output.options <= registry.OPTIONS.keys()


def test_check_names_every_registered_format(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    result = run_cli("check", description)
    assert result.code == 0, result.stderr
    listed = [line.split()[0] for line in result.stdout.splitlines()]
    assert listed == FORMATS


@pytest.mark.parametrize("name", FORMATS)
def test_every_format_builds_inspects_and_rebuilds_the_same(
    name: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    output = registry.get(name)
    description = description_for(output, tmp_path)
    digests = []
    for attempt in ("first", "second"):
        target = tmp_path / attempt / output.example
        target.parent.mkdir()
        result = run_cli("build", description, "--format", name, "-o", target)
        assert result.code == 0, result.stderr
        assert target.is_dir() == (output.writes is registry.Writes.DIRECTORY)
        digests.append(digest_of(target))
        manifest = target.with_name(target.name + ".manifest.json")
        assert manifest.is_file()
    assert digests[0] == digests[1]
    # What a build wrote, inspect can read (an ESP tree, a disk, a PE, a directory of files).
    inspected = tmp_path / "first" / output.example
    if name in ("unified", "esp", "disk", "grub-standalone", "uboot", "fit"):
        result = run_cli("inspect", inspected, "--no-digests")
        assert result.code == 0, result.stderr
        assert result.stdout


@pytest.mark.parametrize(
    ("name", "option"),
    [(f.name, option) for f in registry.formats() for option in OPTION_ARGS
     if option not in f.options],
)  # fmt: skip
def test_options_a_format_does_not_take_are_refused(
    name: str, option: str, cache: Path, tmp_path: Path
) -> None:
    description = descriptions.x86_classic(tmp_path)
    target = tmp_path / "out"
    result = run_cli("build", description, "--format", name, "-o", target, *OPTION_ARGS[option])
    assert result.code == 2
    lines = result.stderr.strip().splitlines()
    takers = " or ".join(f.name for f in registry.formats() if option in f.options)
    flag = registry.OPTIONS[option].flag
    assert lines == [
        f"hlimage: error: {flag}: only --format {takers} {registry.OPTIONS[option].does}; "
        f"drop it for {name}"
    ]
    assert not target.exists()


def test_a_format_outside_the_registry_is_a_usage_error(cache: Path, tmp_path: Path) -> None:
    description = descriptions.x86_classic(tmp_path)
    result = run_cli("build", description, "--format", "floppy", "-o", tmp_path / "out")
    assert result.code == 2 and "'floppy' is not one of" in result.stderr


def read_back(target: Path, name: str) -> tuple[int, str, str]:
    """(size, sha256, Authenticode sha256) of a PE image the build wrote, read back."""
    from hlimage.formats import fat, gpt, pe
    from hlimage.secureboot import trust

    if target.is_dir():
        path = target / name
    elif target.name == name:
        path = target
    else:  # inside the disk image's ESP
        path = target.with_name("extracted.efi")
        with target.open("rb") as disk, path.open("wb") as out:
            _, partitions = gpt.parse(disk)
            for chunk in fat.read_file(disk, partitions[0].offset, name):
                out.write(chunk)
    with path.open("rb") as stream:
        sha256, image_digest = trust.file_digests(stream, pe.parse(stream))
    return path.stat().st_size, sha256, image_digest


@pytest.mark.parametrize("name", FORMATS)
def test_digests_computed_while_writing_match_the_output(
    name: str, cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The manifest's digests, all computed on the pass that wrote the output, are those of
    what is on disk; and a build without them (--no-manifest, whose PE headers are written
    after the data) writes the same bytes."""
    import json

    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    output = registry.get(name)
    description = description_for(output, tmp_path)
    targets = []
    for attempt, flags in (("with", []), ("without", ["--no-manifest"])):
        target = tmp_path / attempt / output.example
        target.parent.mkdir()
        result = run_cli("build", description, "--format", name, "-o", target, *flags)
        assert result.code == 0, result.stderr
        targets.append(target)
    assert digest_of(targets[0]) == digest_of(targets[1])
    assert not targets[1].with_name(targets[1].name + ".manifest.json").exists()
    manifest = json.loads(targets[0].with_name(targets[0].name + ".manifest.json").read_text())
    # A GRUB directory holds Xen and the modules for a GRUB the machine already has: no PE.
    if output.pe_images is not registry.PeImages.NONE and name != "grub":
        assert manifest["pe_images"], name
    for image in manifest["pe_images"]:
        size, sha256, image_digest = read_back(targets[0], image["path"])
        assert (image["size"], image["sha256"], image["authenticode_sha256"]) == (
            size, sha256, image_digest,
        )  # fmt: skip
    if targets[0].is_dir():
        for item in manifest["artifacts"]:
            path = targets[0] / item["name"]
            if path.is_file():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == item["sha256"]
