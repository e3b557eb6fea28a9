"""`hlimage check`: validate a description against the Xen image it names, writing nothing.

Every input is probed and every format planned as `build` would; the answer is which formats
can carry the description, and why the others cannot.
"""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.errors import HlimageError
from hlimage.model import System
from hlimage.xen import policy


@dataclass(frozen=True)
class FormatVerdict:
    format: str
    problem: str | None
    """None when the format can be built."""


def _plan(system: System, output_format: str) -> None:
    """Everything `build` does before writing."""
    if output_format == "unified":
        from hlimage.outputs import unified

        unified.check(system)
    elif output_format == "pxe":
        from hlimage.outputs import pxe

        pxe.check(system)
    elif output_format in ("esp", "disk"):
        from hlimage.outputs import esp

        esp.plan(system)
    elif output_format in ("grub", "grub-standalone"):
        from hlimage.xen import grub

        grub.stanza(system)


FORMATS = ("unified", "esp", "disk", "grub", "grub-standalone", "pxe")


def check(system: System) -> list[FormatVerdict]:
    """Raises HlimageError for a description no format can take."""
    policy.check_domains(system)
    verdicts = []
    for output_format in FORMATS:
        try:
            _plan(system, output_format)
        except HlimageError as error:
            verdicts.append(FormatVerdict(output_format, str(error)))
        else:
            verdicts.append(FormatVerdict(output_format, None))
    return verdicts
