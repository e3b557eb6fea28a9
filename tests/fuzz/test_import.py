"""Fuzzing `hlimage import imagebuilder`: random shell-looking text through the assignment
reader and the converter ends in a description or in hlimage's own error, and a quoted value
reads back as written."""

from __future__ import annotations

import tomllib
from pathlib import Path

from hypothesis import event, given
from hypothesis import strategies as st

from hlimage.importers import imagebuilder, shellvars
from tests.fuzz.conftest import FUZZ, survives

CONFIG = Path("/fuzz/config")
NAMES = st.sampled_from([*imagebuilder.KNOWN, "X", "BIN"])
READ = st.sampled_from(
    [*imagebuilder.SCALARS, *imagebuilder.DOMU_ARRAYS, imagebuilder.AFFINITY, "CPUPOOL"]
)
# Mostly what ImageBuilder reads, sometimes what is refused (hypothesis favours the first
# choice of a strategy, so the rare ones come last in long lists).
INDICES = st.sampled_from(["", "[0]", "[1]", "[2]", "[0,1]", "[1,0]"] * 8 + ["[x]"])
VALUES = st.sampled_from(
    ["0", "1", "2", "3", "0x40000000", "0x10000000", "512", "Image", "xen", "virt.dtb", "tftp",
     "sd", "booti", "bootefi", "bootm", "fit", "cpu@1", "null", "control|xenstore", "0-3",
     "10 1 11", "11 0 10", "shm 0x1000 0x2000 0x3000", "0x50000000 0x1000000", "${BIN}"]
)  # fmt: skip
NOISE = st.sampled_from(
    ["$(x)", "`x`", "~", "|", ";", "(", ")", "\\", "#", "'", '"', " ", "\n", "$", "$X"]
)
BASE = 'BIN=/b\nXEN="$BIN/xen"\nDOM0_KERNEL=Image\n'


def _index(draw: st.DrawFn, name: str) -> str:
    """An index of the kind the option takes."""
    if name == imagebuilder.AFFINITY:
        return draw(st.sampled_from(["[0,0]", "[0,1]", "[1,0]"]))
    if name.startswith(("DOMU_", "CPUPOOL", "DT_OVERLAY", "BOOT_AUX")):
        return draw(st.sampled_from(["[0]", "[1]", "[2]", ""]))
    return ""


@st.composite
def configs(draw: st.DrawFn) -> str:
    lines = [BASE] if draw(st.sampled_from([True] * 4 + [False])) else []
    for _ in range(draw(st.integers(0, 16))):
        name = draw(st.one_of(READ, READ, READ, NAMES))
        index = draw(INDICES) if draw(st.sampled_from([False] * 9 + [True])) else _index(draw, name)
        noisy = draw(st.sampled_from([False] * 6 + [True]))
        words = draw(st.lists(st.one_of(VALUES, NOISE) if noisy else VALUES, max_size=3))
        quote = draw(st.sampled_from(['"', "'"] if len(words) > 1 else ['"', "'", ""]))
        append = draw(st.sampled_from(["=", "=", "=", "+="]))
        lines.append(f"{name}{index}{append}{quote}{' '.join(words)}{quote}")
    if draw(st.sampled_from([False] * 7 + [True])):
        lines.append(draw(st.text(max_size=30)))
    return "\n".join(lines) + "\n"


@FUZZ
@given(configs())
def test_random_configs_convert_or_are_refused(text: str) -> None:
    def convert() -> str:
        variables = shellvars.read_text(text, CONFIG)
        return (
            imagebuilder._Converter(variables, CONFIG.parent, Path("/fuzz/hlimage.toml"), None)
            .convert()
            .text
        )

    description = survives(convert)
    event("converted" if description is not None else "refused")
    if description is not None:
        tomllib.loads(description)  # always TOML


@FUZZ
@given(st.text(max_size=200))
def test_any_text_is_read_or_refused(text: str) -> None:
    survives(lambda: shellvars.read_text(text, CONFIG))


@FUZZ
@given(
    st.text(
        alphabet=st.characters(blacklist_characters="'", blacklist_categories=["Cs"]), max_size=40
    ),
    st.sampled_from(["XEN_CMD", "DOMU_CMD[3]", "CPUPOOL[0]"]),
)
def test_a_single_quoted_value_reads_back(value: str, written: str) -> None:
    variables = shellvars.read_text(f"{written}='{value}'\n", CONFIG)
    name, _, index = written.partition("[")
    entry = variables.get(name, index.rstrip("]") or "0")
    assert entry is not None and entry.value == value and entry.line == 1
