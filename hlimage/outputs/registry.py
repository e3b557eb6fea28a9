"""The output formats hlimage builds: one record each, registered by the format's own module.

`hlimage build`, `hlimage check`, signing and the manifest read this registry and name no
format themselves: a new output is a module under hlimage/outputs/ that registers its record,
plus its name in MODULES. The modules are imported on first use, so that commands which build
nothing (`hlimage --version`) do not pay for them.
"""

from __future__ import annotations

import dataclasses
import enum
import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hlimage.errors import HlimageError
from hlimage.model import Arch, System
from hlimage.report import BuildReport

# The output modules, in the order `hlimage check` and the help list their formats.
MODULES = ("unified", "esp", "disk", "grub_directory", "grub_standalone", "pxe", "uboot", "fit")


@dataclass(frozen=True)
class BuildOptions:
    """What `hlimage build` takes beyond the description: each format accepts some of these
    (OutputFormat.options), and the others are refused."""

    replace: bool = False
    size: int | None = None
    prefix: str | None = None
    grub_lib: Path | None = None
    loader: str | None = None
    """What starts Xen: None (the firmware itself), or a key of LOADERS."""
    shim: Path | None = None
    """shim's EFI binary: the ESP starts Xen through it (a Secure Boot chain)."""
    unified: bool = False
    """The ESP's Xen is the unified image (xen.cfg, dom0's kernel and initrd inside it, all
    under its one signature), started by the firmware or by --shim."""
    digests: bool = True
    """Whether the build computes the digests the manifest prints (not under --no-manifest):
    not an option a user gives, so not in OPTIONS."""
    signing: Any = None
    """The --key a Signing.SELF build signs its boot files with (secureboot.trust.SigningKey);
    set by the build, not an option of its own."""

    def given(self) -> list[str]:
        return [name for name, option in OPTIONS.items() if getattr(self, name) != option.unset]


@dataclass(frozen=True)
class Option:
    flag: str
    does: str
    """What it does, for the refusal: "only --format disk {does}"."""
    unset: object = None


OPTIONS = {
    "replace": Option("--replace", "replaces sections of xen.efi", False),
    "size": Option("--size", "has a size"),
    "prefix": Option("--prefix", "has a path prefix"),
    "grub_lib": Option("--grub-lib", "makes a GRUB image"),
    "loader": Option("--loader", "chooses what starts Xen"),
    "shim": Option("--shim", "lays out a shim chain"),
    "unified": Option("--unified", "puts the unified image on its ESP", False),
}


class Signing(enum.Enum):
    """How `--key` signs a format's output for Secure Boot."""

    OUTPUT = "output"
    """The output is one PE file: built beside the target, then signed into place."""
    LOADER = "loader"
    """The output carries xen.efi as the loader firmware starts: built from a signed copy."""
    SELF = "self"
    """The build signs its own output with the key (a FIT's configuration signature, or a
    chain of loaders each signed where it is not already): it is given the key in
    BuildOptions.signing."""
    NONE = "none"


@dataclass(frozen=True)
class Loader:
    """What `--loader NAME` makes start Xen, instead of UEFI firmware starting it directly
    (the formats that take each say so in OutputFormat.loaders)."""

    name: str
    what: str
    signing: Signing
    unsigned_because: str = ""


LOADERS = {
    "uefi": Loader("uefi", "UEFI firmware (the default)", Signing.LOADER),
    "uboot": Loader(
        "uboot",
        "U-Boot, through a boot script and the files beside it (the uboot format's tree)",
        Signing.NONE,
        "with --loader uboot boots through a U-Boot script, which U-Boot does not verify",
    ),
    "fit": Loader("fit", "U-Boot, from one FIT image (the fit format) as the script", Signing.SELF),
    # A systemd-boot chain signs its own files (with_options): Signing.LOADER here.
    "systemd-boot": Loader(
        "systemd-boot",
        "systemd-boot, from a Type #1 entry (loader/entries/NAME.conf) naming the plain "
        "EFI/NAME/xen.efi; --format unified: the image systemd-boot lists from EFI/Linux/",
        Signing.LOADER,
    ),
    "systemd-boot-uki": Loader(
        "systemd-boot-uki",
        "systemd-boot, listing the unified image in EFI/Linux/NAME.efi (a Type #2 entry)",
        Signing.LOADER,
    ),
}
UBOOT_LOADERS = frozenset({"uefi", "uboot", "fit"})
SYSTEMD_BOOT_LOADERS = frozenset({"systemd-boot", "systemd-boot-uki"})


class Writes(enum.Enum):
    FILE = "file"
    DIRECTORY = "directory"


class PeImages(enum.Enum):
    """Where the manifest finds the PE images firmware verifies."""

    NONE = "none"
    OUTPUT = "output"
    """The output file itself."""
    TREE = "tree"
    """The *.efi files of the directory output."""
    DISK = "disk"
    """The *.efi files of the EFI System Partition inside the disk image."""


@dataclass(frozen=True)
class OutputFormat:
    name: str
    summary: str
    """One line for `hlimage build --help`."""
    writes: Writes
    plan: Callable[[System], Sequence[str] | None]
    """Everything `build` does before it writes (what `hlimage check` runs); it may return
    lines for check to print under the format's verdict (the U-Boot memory map)."""
    build: Callable[[System, Path, BuildOptions], BuildReport]
    example: str
    """An output name to suggest: `hlimage build ... --format NAME -o EXAMPLE`."""
    options: frozenset[str] = frozenset()
    signing: Signing = Signing.NONE
    unsigned_because: str = ""
    """Why --key is refused, where it is: "boots Xen through ...", after "--format NAME"."""
    pe_images: PeImages = PeImages.NONE
    arches: frozenset[Arch] = frozenset(Arch)
    """The architectures whose descriptions it can carry."""
    loaders: frozenset[str] = frozenset()
    """The --loader values the format takes (with "loader" in `options`)."""


@dataclass
class _Registry:
    formats: dict[str, OutputFormat] = field(default_factory=dict)
    loaded: bool = False


_registry = _Registry()


def register(output: OutputFormat) -> OutputFormat:
    """Called once by each output module, at import."""
    if output.name in _registry.formats:
        raise AssertionError(f"output format {output.name} registered twice")
    unknown = output.options - OPTIONS.keys()
    if unknown:
        raise AssertionError(f"output format {output.name}: unknown options {sorted(unknown)}")
    _registry.formats[output.name] = output
    return output


def _load() -> dict[str, OutputFormat]:
    if not _registry.loaded:
        for module in MODULES:
            importlib.import_module(f"hlimage.outputs.{module}")

        # In MODULES order, whichever module happened to import another first.
        def order(output: OutputFormat) -> int:
            module = output.build.__module__.rsplit(".", 1)[-1]
            return MODULES.index(module) if module in MODULES else len(MODULES)

        _registry.formats = {f.name: f for f in sorted(_registry.formats.values(), key=order)}
        _registry.loaded = True
    return _registry.formats


def formats() -> list[OutputFormat]:
    return list(_load().values())


def names() -> list[str]:
    return list(_load())


def get(name: str) -> OutputFormat:
    known = _load()
    if name not in known:
        raise HlimageError(f"--format {name}: unknown; choose one of {', '.join(known)}")
    return known[name]


def refuse_options(output: OutputFormat, options: BuildOptions) -> None:
    """The options the format does not take are errors, not silently ignored."""
    for name in options.given():
        if name in output.options:
            continue
        option = OPTIONS[name]
        takers = [f.name for f in formats() if name in f.options]
        raise HlimageError(
            f"{option.flag}: only --format {' or '.join(takers)} {option.does}; drop it for "
            f"{output.name}"
        )


def refuse_arch(output: OutputFormat, system: System) -> None:
    """A format that cannot carry the description's architecture says so before any work."""
    if system.arch in output.arches:
        return
    takers = [f.name for f in formats() if system.arch in f.arches]
    raise HlimageError(
        f"[image] arch: --format {output.name} is for "
        f"{' and '.join(sorted(a.value for a in output.arches))} only, not "
        f'"{system.arch.value}"; use --format {" or ".join(", ".join(takers).rsplit(", ", 1))}',
        where=system.source,
    )


def is_chain(options: BuildOptions) -> bool:
    """Whether the ESP's files are laid out by outputs/chains.py: something other than the
    firmware starts Xen (shim, systemd-boot), or Xen is the unified image."""
    return options.shim is not None or options.loader in SYSTEMD_BOOT_LOADERS or options.unified


def refuse_loader(output: OutputFormat, options: BuildOptions) -> None:
    """A --loader value the format does not take, --shim beside --loader, and --unified
    beside a loader that starts something else."""
    if options.loader is not None and options.loader not in output.loaders:
        takers = [f.name for f in formats() if options.loader in f.loaders]
        if options.loader not in LOADERS:
            known = ", ".join(sorted({name for f in formats() for name in f.loaders}))
            raise HlimageError(f"--loader {options.loader}: unknown; choose one of {known}")
        raise HlimageError(
            f"--loader {options.loader}: only --format {' or '.join(takers)} takes it; drop it "
            f"for {output.name}"
        )
    if options.loader is not None and options.shim is not None:
        raise HlimageError(
            f"--shim: starts Xen itself, so it cannot go with --loader {options.loader}; drop "
            "one of them"
        )
    if options.unified and options.loader not in (None, "uefi"):
        instead = (
            "--loader systemd-boot-uki puts the unified image in EFI/Linux/"
            if options.loader in SYSTEMD_BOOT_LOADERS
            else f"--loader {options.loader} boots Xen from U-Boot's files, not from a PE image"
        )
        raise HlimageError(f"--unified: cannot go with --loader {options.loader} ({instead}); "
                           "drop one of them")  # fmt: skip


def with_options(output: OutputFormat, options: BuildOptions) -> OutputFormat:
    """The format's record as these options make it: a boot chain (shim, systemd-boot) signs
    its own files; U-Boot's loaders change how --key signs (a FIT signs itself, a script
    cannot be signed)."""
    if is_chain(options) and output.signing is Signing.LOADER:
        return dataclasses.replace(output, signing=Signing.SELF)
    if options.loader is None or options.loader not in output.loaders:
        return output
    loader = LOADERS[options.loader]
    if loader.signing is Signing.LOADER:
        return output
    return dataclasses.replace(
        output, signing=loader.signing, unsigned_because=loader.unsigned_because
    )


def signable() -> list[str]:
    return [f.name for f in formats() if f.signing is not Signing.NONE]
