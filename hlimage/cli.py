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

# Kept here, not imported from hlimage.secureboot.trust, so that `hlimage --version` stays fast.
PASSWORD_ENV = "HLIMAGE_KEY_PASSWORD"


class FormatChoice(click.Choice):  # type: ignore[type-arg]
    """The output registry's format names, read only when an option is parsed or its help
    shown: the registry imports every output module."""

    def __init__(self) -> None:
        super().__init__(())

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from hlimage.outputs import registry

        return registry.names()

    @choices.setter
    def choices(self, value: object) -> None:
        pass


class BuildCommand(click.Command):
    """`hlimage build`, whose help lists the formats from the registry."""

    def format_help_text(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from hlimage.outputs import registry

        super().format_help_text(ctx, formatter)
        with formatter.section("Formats (--format)"):
            formatter.write_dl([(f.name, f.summary) for f in registry.formats()])


def _load(config: Path) -> Any:
    from hlimage import config as config_module

    return config_module.load(config)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hlimage")
@click.option(
    "-q", "--quiet", is_flag=True, help="Print only warnings and errors (and no progress bar)."
)
def cli(quiet: bool) -> None:
    """Build Xen boot media from one description (hlimage.toml).

    Outputs: a unified UEFI image, an EFI system partition tree, a GPT disk image, a PXE tree,
    GRUB configurations, and the launch control module (the device tree that tells Xen which
    domains to build at boot). x86_64 and arm64 from the same description.

    Start with `hlimage init` (the templates), then `hlimage check`, then `hlimage build`.
    `hlimage COMMAND --help` describes each command.

    Exit status: 0 success; 2 bad input, with one line on stderr naming the file or key and
    what to do, and nothing written; 1 a bug in hlimage.

    \b
    Environment:
      SOURCE_DATE_EPOCH     the disk image's FAT timestamps (default 1980-01-01)
      HLIMAGE_KEY_PASSWORD  the passphrase of an encrypted --key
      HLIMAGE_SYSTEMD_BOOT  systemd-boot's EFI binary for --loader (default
                            /usr/lib/systemd/boot/efi/systemd-boot{x64,aa64}.efi)
      _HLIMAGE_COMPLETE     shell completion: eval "$(_HLIMAGE_COMPLETE=bash_source hlimage)"
                            (zsh_source, fish_source for zsh and fish)
    """
    from hlimage.plumbing import messages

    messages.quiet = quiet


@cli.command(cls=BuildCommand)
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "-f", "--format", "output_format", type=FormatChoice(), required=True,
    help="What to build (the formats are listed above).",
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
@click.option(
    "--size",
    metavar="SIZE",
    help="--format disk: the image's size, like 2G (default: the content plus headroom).",
)
@click.option(
    "--key",
    type=click.Path(path_type=Path),
    help="Sign for Secure Boot with this PEM private key (unified, esp, disk), or a FIT's "
    "configuration for U-Boot's verified boot (fit); needs --cert.",
)
@click.option(
    "--cert", type=click.Path(path_type=Path), help="The PEM certificate of the --key key."
)
@click.option(
    "--key-password-file",
    type=click.Path(path_type=Path),
    help=f"The --key passphrase, from a file (else ${PASSWORD_ENV}).",
)
@click.option("--no-manifest", is_flag=True, help="Do not write OUTPUT.manifest.json beside it.")
@click.option(
    "--prefix",
    help="grub: where GRUB finds the files: / (ESP or memdisk root), "
    "/boot, (tftp)/xen ... Default /.",
)
@click.option(
    "--grub-lib",
    type=click.Path(path_type=Path),
    help="grub-standalone, pxe: GRUB's module directory (default "
    "/usr/lib/grub/x86_64-efi or arm64-efi).",
)
@click.option(
    "--loader",
    type=click.Choice(["uefi", "uboot", "fit", "systemd-boot", "systemd-boot-uki"]),
    help="What starts Xen. disk, pxe: UEFI firmware (uefi, the default), or U-Boot through a "
    "boot script and the files (uboot) or one FIT image (fit). esp, disk: systemd-boot, from a "
    "Type #1 entry naming the plain xen.efi (systemd-boot) or listing the unified image in "
    "EFI/Linux/ (systemd-boot-uki); unified: add the .osrel and .cmdline systemd-boot lists it "
    "by.",
)
@click.option(
    "--shim",
    type=click.Path(path_type=Path),
    help="esp, disk: start Xen through this shim (shimx64.efi) for Secure Boot: shim as "
    "BOOTX64.EFI, Xen as grubx64.efi, with the .sbat shim requires ([xen] sbat).",
)
@click.option(
    "--unified",
    is_flag=True,
    help="esp, disk: Xen is the unified image alone (xen.cfg, dom0's kernel and initrd "
    "inside, under its one signature with --key), as BOOTX64.EFI, or as grubx64.efi under "
    "--shim.",
)
def build(
    config: Path,
    output_format: str,
    output: Path,
    replace: bool,
    size: str | None,
    key: Path | None,
    cert: Path | None,
    key_password_file: Path | None,
    no_manifest: bool,
    prefix: str | None,
    grub_lib: Path | None,
    loader: str | None,
    shim: Path | None,
    unified: bool,
) -> None:
    """Build boot media from the description CONFIG in the format FORMAT (listed below).

    OUTPUT is replaced whole or left as it was, and OUTPUT.manifest.json is written beside
    it (sha256 of every payload, Authenticode digests, no times). A copy of 64 MiB or more
    shows a progress bar when stderr is a terminal (not under --quiet).
    """
    from hlimage import build as build_module
    from hlimage.config import parse_size
    from hlimage.errors import HlimageError
    from hlimage.outputs.registry import BuildOptions
    from hlimage.plumbing.messages import note

    size_bytes = None
    if size is not None:
        size_bytes = parse_size(size)
        if not size_bytes:
            raise HlimageError(
                f"--size {size}: not a size; give a number with a K, M or G suffix, like 2G"
            )
    signing = _signing_key(key, cert, key_password_file)
    system = _load(config)
    if shim is not None and not shim.is_file():
        raise HlimageError(f"--shim {shim}: not a file; give shim's EFI binary (shimx64.efi)")
    options = BuildOptions(
        replace=replace, size=size_bytes, prefix=prefix, grub_lib=grub_lib, loader=loader,
        shim=shim, unified=unified,
    )  # fmt: skip
    report = build_module.build(
        system, output_format, output, options, signing=signing, manifest=not no_manifest
    )
    note(f"wrote {report.output} ({output_format})")


def _signing_key(key: Path | None, cert: Path | None, password_file: Path | None) -> Any:
    from hlimage.errors import HlimageError

    if key is None and cert is None:
        if password_file is not None:
            raise HlimageError("--key-password-file: is for --key; give --key and --cert too")
        return None
    if key is None or cert is None:
        missing, given = ("--cert", "--key") if cert is None else ("--key", "--cert")
        raise HlimageError(
            f"{missing}: needed with {given}; signing takes a key and its certificate"
        )
    # Imported only now: secureboot.trust brings in cryptography, 60 ms that a build without a
    # key and without the manifest (--no-manifest) need not pay.
    from hlimage.secureboot.trust import load_signing_key

    return load_signing_key(key, cert, password_file)


@cli.command("sign")
@click.argument("image", type=click.Path(path_type=Path))
@click.option(
    "--key", type=click.Path(path_type=Path), required=True, help="PEM private key (RSA)."
)
@click.option(
    "--cert",
    type=click.Path(path_type=Path),
    required=True,
    help="PEM certificate of the key, and any chain to embed after it.",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where the signed image goes (may be IMAGE itself); replaced whole, or left as it was.",
)
@click.option(
    "--replace-signature",
    is_flag=True,
    help="Drop the signature IMAGE already has instead of refusing.",
)
@click.option(
    "--key-password-file",
    type=click.Path(path_type=Path),
    help=f"The --key passphrase, from a file (else ${PASSWORD_ENV}).",
)
def sign_command(
    image: Path,
    key: Path,
    cert: Path,
    output: Path,
    replace_signature: bool,
    key_password_file: Path | None,
) -> None:
    """Sign the PE image IMAGE for UEFI Secure Boot (Authenticode, sha256)."""
    from hlimage.plumbing.messages import note
    from hlimage.secureboot import trust

    signing = trust.load_signing_key(key, cert, key_password_file)
    result = trust.sign_file(image, output, signing, replace_signature=replace_signature)
    note(f"wrote {output}: signed by {result.signer}, Authenticode sha256 {result.digest.hex()}")


@cli.command("fit-key")
@click.argument("dtb", type=click.Path(path_type=Path))
@click.option(
    "--cert",
    type=click.Path(path_type=Path),
    required=True,
    help="PEM certificate of the RSA key the FIT is signed with (build's --cert).",
)
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="Where the device tree with the key goes (may be DTB itself); replaced whole, or left "
    "as it was.",
)
@click.option(
    "--key-name-hint",
    "hint",
    metavar="NAME",
    help="The key's name in the FIT's signature (default: CERT's file name without its last "
    "suffix, as build names it from --key: dev.crt and dev.key are both dev).",
)
def fit_key(dtb: Path, cert: Path, output: Path, hint: str | None) -> None:
    """Put the public key of CERT into U-Boot's control device tree DTB, as
    /signature/key-NAME with required = "conf": a U-Boot built with (or, under QEMU, given
    with -dtb) the result boots only a FIT whose configuration that key signed (`build -f fit
    --key`). What `mkimage -K DTB -r` adds, from the certificate alone."""
    from hlimage.outputs import fit
    from hlimage.plumbing.atomic import atomic_file
    from hlimage.plumbing.messages import note, warn

    added = fit.add_control_key(dtb, cert, hint)
    with atomic_file(output) as out:
        out.write(added.blob)
    if added.replaced:
        warn(f"{dtb}: its {added.node} is replaced by the key of {cert}")
    for other in added.also_required:
        warn(
            f"{dtb}: /signature/{other} is required too: U-Boot boots only a FIT that both keys "
            "signed (remove the node, or set its required to image, if that is not meant)"
        )
    note(f'wrote {output}: {added.node} ({added.algo}), required = "conf"')


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


@cli.command("loader-entry")
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--efi",
    "efi_path",
    required=True,
    help="The EFI binary the entry starts, from the ESP's root: a unified image, or an "
    "xen.efi with its cfg beside it (/EFI/Linux/xen-6.1.efi).",
)
@click.option("--version", "entry_version", help="The entry's version line (a kernel's).")
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    help="Write the entry there, whole or not at all (default: stdout).",
)
def loader_entry(
    config: Path, efi_path: str, entry_version: str | None, output: Path | None
) -> None:
    """Print a systemd-boot Type #1 entry (loader/entries/NAME.conf) that starts CONFIG's Xen,
    with the load options Xen reads: its image name, then the xen.cfg section."""
    from hlimage import config as config_module
    from hlimage.outputs import chains
    from hlimage.plumbing.atomic import atomic_file

    system = config_module.load(config)
    text = chains.type1_entry(system, efi_path, entry_version)
    if output is None:
        click.echo(text.decode(), nl=False)
        return
    with atomic_file(output) as out:
        out.write(text)


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
    from hlimage.build import lcm as make_lcm
    from hlimage.formats import fdt
    from hlimage.plumbing.atomic import atomic_file

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
    from hlimage import inspection as inspect_module

    data = inspect_module.inspect_path(file, digests=not no_digests)
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        click.echo(inspect_module.render(data), nl=False)


@cli.command()
@click.argument("output", type=click.Path(path_type=Path))
@click.option("--arch", type=click.Choice(["x86_64", "arm64"]), help="Default: from the output.")
@click.option("--memory", default="2G", show_default=True, metavar="SIZE", help="Guest RAM.")
def run(output: Path, arch: str | None, memory: str) -> None:
    """Boot OUTPUT in QEMU, serial console on this terminal (Ctrl-A X quits)."""
    from hlimage.run import run as run_output

    sys.exit(run_output(output, arch=arch, memory=memory))


@cli.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of text.")
def check(config: Path, as_json: bool) -> None:
    """Validate CONFIG against the images it names, writing nothing: which formats can carry
    it, and why the others cannot. Exit 2 when none can.

    The U-Boot formats (uboot, fit) print their memory map below their verdict: where each
    file is loaded, the host tree's reserved ranges and the top of RAM kept for U-Boot.

    --json prints a list of {"format": NAME, "problem": TEXT or null}, one per format, with
    "details": [LINE, ...] where the format has them (the memory map).
    """
    from hlimage.verdict import verdicts as format_verdicts

    verdicts = format_verdicts(_load(config))
    if as_json:
        listed: list[dict[str, Any]] = []
        for v in verdicts:
            entry: dict[str, Any] = {"format": v.format, "problem": v.problem}
            if v.details:
                entry["details"] = list(v.details)
            listed.append(entry)
        click.echo(json.dumps(listed, indent=2))
    else:
        for verdict in verdicts:
            click.echo(
                f"{verdict.format:<16} {'ok' if verdict.problem is None else verdict.problem}"
            )
            for line in verdict.details:
                click.echo(f"{'':<17}{line}")
    if all(verdict.problem is not None for verdict in verdicts):
        sys.exit(2)


@cli.command("grub-config")
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--prefix",
    default="/",
    show_default=True,
    help="Where GRUB finds the files: / , /boot, (tftp)/xen ...",
)
@click.option(
    "--in-place",
    is_flag=True,
    help="Name the input files where they are (below --relative-to) instead of copies.",
)
@click.option(
    "--relative-to",
    type=click.Path(path_type=Path),
    default=Path("/"),
    show_default=True,
    help="--in-place: the directory --prefix stands for.",
)
@click.option(
    "--lcm",
    type=click.Path(path_type=Path),
    help="--in-place, hyperlaunch: the LCM file (written with hlimage lcm).",
)
@click.option("--write-lcm", is_flag=True, help="--in-place: also write the LCM to --lcm.")
@click.option(
    "--prelude",
    default="",
    help="Lines to put first in the entry (e.g. search commands), newline-separated.",
)
def grub_config(
    config: Path,
    prefix: str,
    in_place: bool,
    relative_to: Path,
    lcm: Path | None,
    write_lcm: bool,
    prelude: str,
) -> None:
    """Print the GRUB menu entry that boots CONFIG (multiboot2 on x86, xen_hypervisor on arm64)."""
    from hlimage.errors import HlimageError
    from hlimage.plumbing.atomic import atomic_file
    from hlimage.xen import grub_entry

    if write_lcm and (lcm is None or not in_place):
        raise HlimageError("--write-lcm: needs --in-place and --lcm PATH")
    layout = grub_entry.Layout(
        prefix=prefix, in_place=in_place, relative_to=relative_to, lcm_path=lcm
    )
    lines = [line for line in prelude.splitlines() if line.strip()]
    stanza = grub_entry.stanza(_load(config), layout, prelude=lines)
    if write_lcm and stanza.lcm is not None:
        assert lcm is not None
        lcm.parent.mkdir(parents=True, exist_ok=True)
        with atomic_file(lcm) as out:
            out.write(stanza.lcm)
    click.echo(stanza.entry.render(), nl=False)


def _complete_template(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[str]:
    from hlimage import scaffold

    return [t.name for t in scaffold.templates() if t.name.startswith(incomplete)]


@cli.command("init")
@click.argument("template", required=False, shell_complete=_complete_template)
@click.argument("directory", type=click.Path(path_type=Path), default=".")
@click.option("--force", is_flag=True, help="Overwrite DIRECTORY/hlimage.toml if it exists.")
def init_command(template: str | None, directory: Path, force: bool) -> None:
    """Start a description: copy the commented template TEMPLATE to DIRECTORY/hlimage.toml
    (DIRECTORY defaults to the current one) and say what to edit. Without TEMPLATE, list the
    templates."""
    from hlimage import scaffold
    from hlimage.outputs import registry
    from hlimage.plumbing.messages import note

    if template is None:
        for known in scaffold.templates():
            click.echo(f"{known.name:<18} {known.summary}")
        return
    written = scaffold.init(template, directory, force=force)
    chosen = written.template
    note(f"wrote {written.path} from the {chosen.name} template")
    lines = [f"{chosen.name}: {chosen.summary}", "Next:"]
    if written.missing:
        lines.append(
            f"  - put these files beside it, or change their paths in it: "
            f"{', '.join(written.missing)}"
        )
    lines.append("  - edit the command lines, memory and vCPUs for your machine")
    if "# Needs:" in chosen.text:
        lines.append("  - read the '# Needs:' comment at its top: which Xen it takes")
    lines.append(f"  - hlimage check {written.path}")
    outputs = {output.name: output for output in registry.formats()}
    first = next((name for name in chosen.builds if name in outputs or name == "lcm"), None)
    if first == "lcm":
        lines.append(f"  - hlimage lcm {written.path} -o lcm.dtb")
    elif first is not None:
        example = outputs[first].example
        lines.append(f"  - hlimage build {written.path} --format {first} -o {example}")
    click.echo("\n".join(lines))


@cli.group("import")
def import_group() -> None:
    """Turn another tool's configuration into a description (hlimage.toml) with the same
    meaning, and print the `hlimage build` command that makes what that tool made."""


@import_group.command("imagebuilder")
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(path_type=Path),
    required=True,
    help="The description to write (hlimage.toml); written whole or not at all.",
)
@click.option(
    "-d",
    "--directory",
    type=click.Path(path_type=Path),
    help="ImageBuilder's -d: the directory the config's paths start from (default: the "
    "config's own).",
)
@click.option(
    "-t",
    "--load-cmd",
    metavar="LOAD_CMD",
    help="ImageBuilder's -t: replaces the config's LOAD_CMD (tftp, sd, usb, scsi, virtio, or "
    "fit for a FIT).",
)
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
def import_imagebuilder(
    config: Path, output: Path, directory: Path | None, load_cmd: str | None, force: bool
) -> None:
    """Read the ImageBuilder config CONFIG (the shell variable file of Xen's
    uboot-script-gen) as data, never running it, and write the description it means.

    Sizes keep ImageBuilder's units (DOM0_MEM and DOMU_MEM in MB), its defaults are written
    out, and only the first NUM_DOMUS domUs count. An option hlimage has no equivalent for, or
    a line that is not an assignment, is an error naming its line. Prints the `hlimage build`
    command line to run next on stdout.
    """
    import shlex

    from hlimage.importers import imagebuilder
    from hlimage.plumbing.messages import note, warn

    imported = imagebuilder.import_file(
        config, output, directory=directory, load_cmd=load_cmd, force=force
    )
    for warning in imported.warnings:
        warn(warning)
    note(f"wrote {output}; then {imported.then}")
    click.echo(shlex.join(imported.command))


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
    except OSError as error:
        # The file system refused (a disk full, a name too long, no permission): the user's
        # to fix, so one line and exit 2, as for any bad input.
        where = f"{error.filename}: " if error.filename else ""
        print(f"hlimage: error: {where}{error.strerror or error}", file=sys.stderr)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
