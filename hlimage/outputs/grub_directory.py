"""`--format grub`: grub.cfg and the files it names, for an ESP, /boot or a TFTP root (the
entry's paths start with `--prefix`)."""

from __future__ import annotations

from pathlib import Path

from hlimage.formats import grubcfg
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.outputs.esp import artifact
from hlimage.plumbing.atomic import atomic_directory
from hlimage.plumbing.streams import copy_stream
from hlimage.report import Artifact, BuildReport
from hlimage.xen import grub_entry


def config_text(system: System, stanza: grub_entry.Stanza, *, timeout: int = 0) -> str:
    header = [f"set default={grubcfg.quote(stanza.entry.entry_id)}", f"set timeout={timeout}"]
    return grubcfg.render([stanza.entry], header=header)


def write_files(stanza: grub_entry.Stanza, root: Path, *, digests: bool = True) -> list[Artifact]:
    artifacts = []
    for item in stanza.files:
        with (root / item.name).open("wb") as out:
            result = copy_stream(item.payload, out, digest=digests)
        assert result.size is not None
        artifacts.append(artifact(item, result.size, result.sha256))
    return artifacts


def build(system: System, output: Path, *, prefix: str = "/", digests: bool = True) -> BuildReport:
    stanza = grub_entry.stanza(system, grub_entry.Layout(prefix=prefix))
    report = BuildReport("grub", output)
    with atomic_directory(output) as temporary:
        text = config_text(system, stanza)
        (temporary / "grub.cfg").write_text(text)
        report.artifacts = write_files(stanza, temporary, digests=digests)
    return report


def plan(system: System) -> None:
    grub_entry.stanza(system)


def _build(system: System, output: Path, options: registry.BuildOptions) -> BuildReport:
    return build(system, output, prefix=options.prefix or "/", digests=options.digests)


registry.register(
    registry.OutputFormat(
        name="grub",
        summary="grub.cfg and the files it names (--prefix for /boot or TFTP)",
        writes=registry.Writes.DIRECTORY,
        plan=plan,
        build=_build,
        pe_images=registry.PeImages.TREE,
        example="xen-grub",
        options=frozenset({"prefix"}),
        unsigned_because="boots Xen through GRUB's multiboot2, which firmware does not verify",
    )
)
