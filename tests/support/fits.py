"""Sample FIT inputs for the FIT tests: a script, a kernel, a device tree and a ramdisk."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from hlimage.formats import fdt, fit

TIMESTAMP = 1700000000
SCRIPT = b"echo hlimage\nbootm ${scriptaddr}\n"


@dataclass(frozen=True)
class Sample:
    fit: fit.Fit
    files: dict[str, Path]
    """Each image's input, by image name (the script is written out too)."""


def sample(directory: Path, *, kernel_size: int = 3_000_001, load_base: int = 0x48000000) -> Sample:
    """Random payloads of odd sizes (so the 4-byte padding after each data is exercised)."""
    files = {
        "script": directory / "script.txt",
        "xen": directory / "xen",
        "fdt": directory / "host.dtb",
        "initrd": directory / "initrd",
    }
    files["script"].write_bytes(SCRIPT)
    files["xen"].write_bytes(os.urandom(kernel_size))
    # A real tree: fit_check_sign loads the fdt image and refuses one that is not a DTB.
    host = fdt.DeviceTree()
    host.root.set("compatible", fdt.string("linux,dummy-virt"))
    host.ensure("/chosen").set("random", os.urandom(1001))
    files["fdt"].write_bytes(host.build())
    files["initrd"].write_bytes(os.urandom(1_000_003))
    images = (
        fit.FitImage("script", "script", SCRIPT, description="boot script"),
        fit.FitImage("xen", "kernel", files["xen"], load=load_base, entry=load_base),
        fit.FitImage("fdt", "flat_dt", files["fdt"], load=load_base + 0x800000),
        fit.FitImage("initrd", "ramdisk", files["initrd"], load=load_base + 0x1000000),
    )
    configuration = fit.FitConfiguration(
        "conf-1", description="Xen", kernel="xen", fdt="fdt", loadables=("initrd",)
    )
    description = fit.Fit(
        "hlimage test", TIMESTAMP, images, (configuration,), default_image="script"
    )
    return Sample(description, files)


def write(description: fit.Fit, path: Path, signer: fit.FitSigner | None = None) -> Path:
    with path.open("wb") as out:
        fit.write(description, out, signer)
    return path
