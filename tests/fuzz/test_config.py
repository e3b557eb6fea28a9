"""Fuzzing the description: random TOML-shaped documents through config.from_document, and
what loads through `hlimage check`'s planning of every format, the xen.cfg and the LCM."""

from __future__ import annotations

import datetime
import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from hlimage import build, config, verdict
from hlimage.formats import cpio
from tests.fuzz.conftest import FUZZ, FUZZ_SLOW, survives

FILES = ("xen.efi", "arm64.efi", "xen.gz", "vmlinuz", "Image", "initrd.gz", "host.dtb",
         "junk.bin", "empty", "folder", "sbat.csv")  # fmt: skip


@pytest.fixture(scope="session")
def folder(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A description's directory with real inputs (links into the cache) and bad ones."""
    root = tmp_path_factory.mktemp("fuzz-config")
    links = {"xen.efi": "x86_64/xen.efi", "arm64.efi": "arm64/xen.efi", "xen.gz": "x86_64/xen.gz",
             "vmlinuz": "x86_64/vmlinuz", "Image": "arm64/Image",
             "host.dtb": "arm64/virt-gicv3.dtb"}  # fmt: skip
    for name, target in links.items():
        (root / name).symlink_to(cache / target)
    initrd = cpio.build([cpio.regular("init", b"#!/bin/sh\n", 0o755)])
    (root / "initrd.gz").write_bytes(gzip.compress(initrd, mtime=0))
    (root / "junk.bin").write_bytes(os.urandom(4096))
    (root / "empty").write_bytes(b"")
    (root / "folder").mkdir()
    (root / "sbat.csv").write_text(
        "sbat,1,SBAT Version,sbat,1,https://github.com/rhboot/shim/blob/main/SBAT.md\n"
    )
    return root


# TOML's values: strings, integers (64-bit in TOML, any size here), floats, booleans, dates,
# arrays and tables.
SCALARS = (
    st.text(max_size=12)
    | st.integers()
    | st.floats()
    | st.booleans()
    | st.datetimes()
    | st.dates()
    | st.times()
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)
PATHS = (
    st.sampled_from(FILES)
    | st.text(max_size=20)
    | st.sampled_from(["x" * 300, "folder/" * 600, "/", "..", "empty/x", "folder\0x"])
)
ADDRESSES = st.sampled_from(["0x50000000", "0", "-1", "0x1" + "0" * 16, "zz"]) | st.integers()
SIZES = st.sampled_from(["512M", "1G", "0", "1K", "64T", "3Q", " 2 GiB", "99999999999999999999G"])


def by_key(key: str) -> st.SearchStrategy[Any]:
    """Values a user might write for `key`, right or nearly right."""
    known: dict[str, st.SearchStrategy[Any]] = {
        "arch": st.sampled_from(["x86_64", "arm64", "riscv64"]),
        "binding": st.sampled_from(["auto", "classic", "dom0less", "hyperlaunch", "other"]),
        "name": st.sampled_from(["dom0", "guest", "g-1", "a" * 40, "bad name", "chosen"]),
        "title": st.text(max_size=20),
        "efi": PATHS, "multiboot": PATHS, "xsm": PATHS, "ucode": PATHS, "dtb": PATHS,
        "sbat": PATHS, "kernel": PATHS, "passthrough_dtb": PATHS,
        "initrd": PATHS | st.lists(PATHS, max_size=3),
        "initrd_compression": st.sampled_from(["lz4", "gzip"]),
        "cmdline": st.text(max_size=30),
        "memory": SIZES,
        "vcpus": st.integers(-1, 5000),
        "capabilities": st.lists(st.sampled_from(["control", "hardware", "xenstore", "x"]),
                                 max_size=4),
        "mode": st.sampled_from(["pv", "pvh", "hvm"]),
        "vpl011": st.booleans(),
        "enhanced": st.sampled_from(["enabled", "legacy", "disabled", "no-xenstore", "on"]),
        "passthrough": st.sampled_from(["enabled", "disabled", "yes"]),
        "static_mem": st.lists(st.tuples(ADDRESSES, SIZES).map(list), max_size=3),
        "direct_map": st.booleans(),
        "cpupool": st.sampled_from(["pool0", "cpupool"]),
        "colors": st.sampled_from(["0-3", "0-3,8", ""]),
        "nr_spis": st.integers(-1, 2000),
    }  # fmt: skip
    return known.get(key, VALUES)


def plausible(key: str) -> st.SearchStrategy[Any]:
    """For `key`: what a user might write, or any TOML value."""
    return by_key(key) | VALUES


GOOD: dict[str, dict[str, Any]] = {
    "x86_64": {
        "image": {"arch": "x86_64"},
        "xen": {"efi": "xen.efi", "multiboot": "xen.gz", "cmdline": "console=com1"},
        "domain": [{"name": "dom0", "kernel": "vmlinuz", "initrd": "initrd.gz", "memory": "512M"}],
    },
    "arm64": {
        "image": {"arch": "arm64"},
        "xen": {"efi": "arm64.efi", "dtb": "host.dtb", "cmdline": "console=dtuart"},
        "domain": [
            {"name": "dom0", "kernel": "Image", "initrd": "initrd.gz", "memory": "512M"},
            {"name": "guest", "kernel": "Image", "memory": "128M", "vcpus": 1, "vpl011": True},
        ],
    },
}
KEYS = {
    "image": [option.key for option in config.IMAGE_OPTIONS],
    "xen": [option.key for option in config.XEN_OPTIONS],
    "domain": [option.key for option in config.DOMAIN_OPTIONS],
}


@st.composite
def documents(draw: st.DrawFn) -> dict[str, Any]:
    """A description that loads, with a few keys set to what a user might get wrong (or right),
    removed, or domains added."""
    base = GOOD[draw(st.sampled_from(sorted(GOOD)))]
    document: dict[str, Any] = {
        "image": dict(base["image"]),
        "xen": dict(base["xen"]),
        "domain": [dict(domain) for domain in base["domain"]],
    }
    for _ in range(draw(st.integers(0, 4))):
        section = draw(st.sampled_from(["image", "xen", "domain", "domain", "new domain"]))
        if section == "new domain":
            name = draw(st.sampled_from(["guest2", "dom0", "g3"]))
            document["domain"].append({"name": name, "kernel": draw(PATHS)})
            continue
        target = (
            draw(st.sampled_from(document["domain"])) if section == "domain" else document[section]
        )
        key = draw(st.sampled_from(KEYS[section] + ["unknown"]))
        if draw(st.integers(0, 4)) == 0:
            target.pop(key, None)
        else:
            target[key] = draw(plausible(key) if draw(st.booleans()) else by_key(key))
    return document


def check_document(folder: Path, document: dict[str, Any]) -> None:
    system = survives(lambda: config.from_document(folder / "hlimage.toml", document))
    event("refused" if system is None else "loaded")
    if system is None:
        return
    verdicts = survives(lambda: verdict.verdicts(system))
    if verdicts is not None:
        for found in verdicts:
            event(f"{found.format}: {'ok' if found.problem is None else 'refused'}")
            assert found.problem is None or "\n" not in found.problem
    survives(lambda: build.efi_config_text(system, embedded=True))
    survives(lambda: build.lcm(system))


@FUZZ
@given(st.dictionaries(st.text(max_size=8), VALUES, max_size=4))
def test_random_documents(folder: Path, document: dict[str, Any]) -> None:
    check_document(folder, document)


@FUZZ_SLOW
@given(documents())
def test_plausible_documents(folder: Path, document: dict[str, Any]) -> None:
    check_document(folder, document)


@FUZZ
@given(st.text(max_size=30))
def test_sizes(text: str) -> None:
    size = config.parse_size(text)
    assert size is None or size >= 0


def test_datetimes_are_values_too(folder: Path) -> None:
    """TOML has dates; a date where a string belongs is refused like any wrong type."""
    document = {"image": {"arch": datetime.date(2024, 1, 1)}, "domain": [{}]}
    assert survives(lambda: config.from_document(folder / "hlimage.toml", document)) is None
