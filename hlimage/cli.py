"""The `hlimage` command. Thin: parse options, call the library, print.

Exit codes: 0 success, 2 bad input (one line on stderr naming the file or key and what to
do), 1 a bug in hlimage. Imports are deferred so that `hlimage --version` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hlimage import __version__

FORMATS = ("unified", "esp", "disk", "grub", "grub-standalone", "pxe")


def _load(config: Path) -> Any:
    from hlimage import config as config_module

    return config_module.load(config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hlimage")
@click.option("-q", "--quiet", is_flag=True, help="Print only warnings and errors.")
def cli(quiet: bool) -> None:
    """Build Xen boot media from one description (hlimage.toml).

    Outputs: a unified UEFI image, an EFI system partition tree, a GPT disk image, a PXE tree,
    GRUB configurations, and the launch control module (the device tree that tells Xen which
    domains to build at boot). x86_64 and arm64 from the same description.
    """
    from hlimage import messages

    messages.quiet = quiet


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "-f", "--format", "output_format", type=click.Choice(FORMATS), required=True,
    help="What to build (see the table in the README).",
)  # fmt: skip
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The file or directory to write; replaced whole, or left as it was.",
)
@click.option(
    "--replace",
    is_flag=True,
    help="Replace payload sections the Xen image already has instead of refusing.",
)
def build(config: Path, output_format: str, output: Path, replace: bool) -> None:
    """Build boot media from the description CONFIG."""
    from hlimage import build as build_module
    from hlimage.messages import note

    system = _load(config)
    report = build_module.build(system, output_format, output, replace=replace)
    note(f"wrote {report.output} ({output_format})")


@cli.command("efi-config")
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--embedded",
    is_flag=True,
    help="Print the config as the unified image embeds it (modules as sections).",
)
def efi_config(config: Path, embedded: bool) -> None:
    """Print the xen.cfg that Xen's EFI loader reads for CONFIG."""
    from hlimage.build import efi_config_text

    click.echo(efi_config_text(_load(config), embedded=embedded), nl=False)


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where to write the device tree ('-' for stdout).",
)
@click.option("--dts", is_flag=True, help="Write DTS source instead of a DTB.")
def lcm(config: Path, output: Path, dts: bool) -> None:
    """Write the launch control module: the device tree naming the domains Xen builds.

    x86: the hyperlaunch LCM (multiboot2 module 0). arm64: the host device tree with a
    `xen,domain` node per dom0less domain.
    """
    from hlimage.atomic import atomic_file
    from hlimage.build import lcm as make_lcm
    from hlimage.formats import fdt

    blob = make_lcm(_load(config))
    data = fdt.parse(blob).to_dts().encode() if dts else blob
    if str(output) == "-":
        sys.stdout.buffer.write(data)
        return
    with atomic_file(output) as out:
        out.write(data)


@cli.command()
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
@click.option("--no-digests", is_flag=True, help="Skip sha256 of the contents (fast).")
def inspect(file: Path, as_json: bool, no_digests: bool) -> None:
    """Show what a built image, ESP tree, disk image or device tree holds."""
    from hlimage import inspect as inspect_module

    data = inspect_module.inspect_path(file, digests=not no_digests)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        click.echo(inspect_module.render(data), nl=False)


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), help="Default: from the output.")
@click.option("--memory", default="2G", show_default=True, help="Guest RAM.")
def run(output: Path, arch: str | None, memory: str) -> None:
    """Boot OUTPUT in QEMU, serial console on this terminal (Ctrl-A X quits)."""
    from hlimage.run import run as run_output

    sys.exit(run_output(output, arch=arch, memory=memory))


def main() -> None:
    from hlimage.errors import HlimageError

    try:
        code = cli.main(prog_name="hlimage", standalone_mode=False)
    except HlimageError as error:
        print(f"hlimage: error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except click.ClickException as error:
        error.show()
        sys.exit(2 if isinstance(error, click.UsageError) else error.exit_code)
    except click.exceptions.Abort:
        print("hlimage: interrupted", file=sys.stderr)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
