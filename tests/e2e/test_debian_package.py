"""The Debian package: `dpkg-buildpackage -us -uc` of debian/ in a clean Debian 12 root builds
hlimage_*_all.deb with no lintian error; installed alone in another clean root (its
dependencies are Debian's own python3-* packages, at Debian 12's versions) it builds what every
template declares, and the unified image it built boots."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path

import pytest

from hlimage import qemu, scaffold
from tests.integration.test_templates import OUTPUT_NAMES, arch_of
from tests.support import clean_root, staging
from tests.support.boot import boot

# One worker runs the whole module, so its clean root is made once (scripts/test: loadgroup).
pytestmark = pytest.mark.xdist_group("debian-package")

# Debian 12's versions of what hlimage imports (pyproject.toml's lower bounds).
BOOKWORM = {
    "python3-click": "8.1.3",
    "python3-construct": "2.10.68",
    "python3-cryptography": "38.0.4",
    "python3-lz4": "4.0.2",
    "python3-numpy": "1:1.24.2",
    "python3-pefile": "2023.2.7",
    "python3-pyelftools": "0.29",
    "python3-zstandard": "0.20.0",
}
# What the package installs, from the root of the file system it is installed on.
INSTALLED = (
    "usr/bin/hlimage",
    "etc/grub.d/25_hyperlaunch",
    "etc/hlimage",
    "usr/lib/kernel/install.d/90-hlimage.install",
    "usr/share/man/man1/hlimage.1.gz",
    "usr/share/bash-completion/completions/hlimage",
    "usr/share/zsh/vendor-completions/_hlimage",
    "usr/share/fish/vendor_completions.d/hlimage.fish",
    "usr/lib/python3/dist-packages/hlimage/templates/x86-classic.toml",
    "usr/share/doc/hlimage/examples/kernel-install.toml",
)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    outcome = clean_root.run("deb-build.sh", {}, tmp_path_factory.mktemp("deb") / "build")
    assert outcome.returncode == 0, outcome.log[-6000:]
    return outcome.results


def plan() -> list[tuple[str, str, str]]:
    """(template, format, output) for what each template declares it builds with Debian's
    Xen 4.17 (none for a template written for a newer Xen; `hlimage lcm` for hyperlaunch)."""
    lines = []
    for template in scaffold.templates():
        builds_line = next(line for line in template.text.splitlines() if "# Builds:" in line)
        if "Xen 4.21" in builds_line:
            continue
        for output_format in template.builds:
            output = "lcm.dtb" if output_format == "lcm" else OUTPUT_NAMES[output_format]
            lines.append((template.name, output_format, output))
    return lines


@pytest.fixture(scope="module")
def installed(built: Path, cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("deb-install")
    wanted = plan()
    (work / "plan.txt").write_text("".join(f"{t} {f} {o}\n" for t, f, o in wanted))
    inputs = {"plan.txt": work / "plan.txt"}
    for name in sorted({template for template, _, _ in wanted}):
        template = scaffold.find(name)
        staging.stage(work / "templates" / name, arch_of(template), template.files())
        inputs[f"templates/{name}"] = work / "templates" / name
    deb = next(built.glob("hlimage_*_all.deb"))
    inputs[deb.name] = deb
    outcome = clean_root.run("deb-install.sh", inputs, work / "results")
    assert outcome.returncode == 0, outcome.log[-6000:]
    return outcome.results


def test_dpkg_buildpackage_makes_a_lintian_clean_deb(built: Path) -> None:
    lintian = (built / "lintian.txt").read_text()
    assert not [line for line in lintian.splitlines() if line.startswith("E: ")], lintian
    contents = (built / "contents.txt").read_text()
    for path in INSTALLED:
        assert f"./{path}" in contents, path
    control = (built / "control.txt").read_text()
    depends = next(line for line in control.splitlines() if line.startswith("Depends: "))
    for relation in depends.removeprefix("Depends: ").split(", "):
        assert relation.startswith(("python3-", "python3:any")), relation


def test_the_deb_alone_builds_what_every_template_declares(installed: Path) -> None:
    files = (installed / "files.txt").read_text().splitlines()
    for path in INSTALLED:
        assert f"/{path}" in files, path
    assert (installed / "which.txt").read_text().strip() == f"/{INSTALLED[0]}"
    assert (installed / "built.txt").read_text().splitlines() == [
        f"{template} {output_format}" for template, output_format, _ in plan()
    ]
    versions = dict(
        line.split(" ", 1) for line in (installed / "python3-packages.txt").read_text().splitlines()
    )
    for package, version in BOOKWORM.items():
        assert versions.get(package, "").startswith(version), (package, versions.get(package))
    assert "wrote /home/builder/system/hlimage.toml" in (installed / "as-user.txt").read_text()


def test_a_unified_image_the_deb_built_boots(
    installed: Path, qemu_x86: str, tmp_path: Path, boot_log: Path
) -> None:
    esp = tmp_path / "esp"
    (esp / "EFI/BOOT").mkdir(parents=True)
    shutil.copyfile(installed / "outputs/x86-classic-out.efi", esp / "EFI/BOOT/BOOTX64.EFI")
    # Debian's Xen 4.17 passes dom0 the template's line exactly (README, "Exact command lines").
    template = tomllib.loads(scaffold.find("x86-classic").text)
    dom0_cmdline = next(d["cmdline"] for d in template["domain"] if d["name"] == "dom0")
    outcome = boot(qemu_x86, qemu.Media(esp_dir=esp), ["dom0"], log_path=boot_log, timeout=240,
                   cmdlines={"dom0": dom0_cmdline})  # fmt: skip
    outcome.check()
    assert "Using builtin config file" in outcome.output
