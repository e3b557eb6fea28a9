"""`hlimage check`: which formats can carry a description, and why the others cannot.

Every input is probed and every format planned as `build` would, writing nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from hlimage.errors import HlimageError
from hlimage.model import System
from hlimage.outputs import registry
from hlimage.xen import policy


@dataclass(frozen=True)
class FormatVerdict:
    format: str
    problem: str | None
    """None when the format can be built."""
    details: tuple[str, ...] = ()
    """What the format's plan says beyond ok (the U-Boot memory map)."""


def verdicts(system: System) -> list[FormatVerdict]:
    """Raises HlimageError for a description no format can take."""
    policy.validate_domains(system)
    found = []
    for output in registry.formats():
        try:
            registry.refuse_arch(output, system)
            details = output.plan(system)
        except HlimageError as error:
            found.append(FormatVerdict(output.name, str(error)))
        else:
            found.append(FormatVerdict(output.name, None, tuple(details or ())))
    return found
