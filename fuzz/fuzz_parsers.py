"""Coverage-guided fuzzing of hlimage's parsers with atheris (libFuzzer), for runs longer than
the hypothesis tests in tests/fuzz make.

    .venv/bin/pip install atheris
    .venv/bin/python fuzz/fuzz_parsers.py --seed-corpus fuzz/corpus      # once: real inputs
    HLIMAGE_FUZZ_TARGET=pe .venv/bin/python fuzz/fuzz_parsers.py fuzz/corpus/pe \\
        -max_total_time=600 -rss_limit_mb=1024 -timeout=5

Without HLIMAGE_FUZZ_TARGET the input's first byte picks the target. The contract is the test
suite's: a parser returns or raises hlimage's own error (HlimageError, FormatError); anything
else, a run past -timeout or above -rss_limit_mb is a crash, saved by libFuzzer as crash-*.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import os
import sys
import tempfile
import tomllib
from collections.abc import Callable
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from hlimage import config, inspect
    from hlimage.errors import HlimageError
    from hlimage.formats import compression, cpio, elf, fdt, linux, multiboot2, pe, xencfg
    from hlimage.formats.payload import Region
    from hlimage.inputs import check_initrd_length, probe_initrd, probe_kernel
    from hlimage.xen.probe import probe_efi, probe_multiboot

SCRATCH = Path(tempfile.mkdtemp(prefix="hlimage-fuzz-"))
FILE = SCRATCH / "input"
CONFIG_DIR = SCRATCH / "config"


def _as_file(data: bytes) -> Path:
    FILE.write_bytes(data)
    return FILE


def _pe(data: bytes) -> None:
    stream = io.BytesIO(data)
    image = pe.parse(stream)
    pe.PeWriter(stream, image).write([], io.BytesIO())


def _decompress(kind: str) -> Callable[[bytes], None]:
    def run(data: bytes) -> None:
        middle = len(data) // 2
        with contextlib.suppress(HlimageError):
            compression.stream_end(kind, lambda at, count: data[at : at + count], 0, len(data))
        for piece in compression.decompress(kind, iter([data[:middle], data[middle:]])):
            assert len(piece) <= compression.LZ4_LEGACY_BLOCK

    return run


def _config(data: bytes) -> None:
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return
    config.from_document(CONFIG_DIR / "hlimage.toml", document)


def _linux(data: bytes) -> None:
    linux.parse_bzimage(data)
    linux.parse_arm64(data)
    linux.linux_banner_version(data)
    elf.stated_length(data)


def _cpio(data: bytes) -> None:
    with contextlib.suppress(HlimageError):
        check = cpio.ArchiveCheck()
        check.feed(data)
        check.finish()
    for _ in cpio.members(io.BytesIO(data)):
        pass


def _initrd(data: bytes) -> None:
    region = Region(_as_file(data))
    if probe_initrd(region).kind != "unknown":
        check_initrd_length(region)


def _inspect(data: bytes) -> None:
    inspect.render(inspect.inspect_path(_as_file(data)))


TARGETS: dict[str, Callable[[bytes], object]] = {
    "pe": _pe,
    "multiboot2": multiboot2.find,
    "linux": _linux,
    "cpio": _cpio,
    "gzip": _decompress(compression.GZIP),
    "xz": _decompress(compression.XZ),
    "zstd": _decompress(compression.ZSTD),
    "lz4": _decompress(compression.LZ4_LEGACY),
    "xencfg": lambda data: xencfg.parse(data.decode("latin-1")),
    "fdt": fdt.parse,
    "kernel": lambda data: probe_kernel(Region(_as_file(data))),
    "initrd": _initrd,
    "xen-efi": lambda data: probe_efi(_as_file(data)),
    "xen-multiboot": lambda data: probe_multiboot(_as_file(data)),
    "config": _config,
    "inspect": _inspect,
}
NAMES = sorted(TARGETS)
FIXED = os.environ.get("HLIMAGE_FUZZ_TARGET")


def test_one_input(data: bytes) -> None:
    if FIXED:
        target = TARGETS[FIXED]
    elif data:
        target, data = TARGETS[NAMES[data[0] % len(NAMES)]], data[1:]
    else:
        return
    with contextlib.suppress(HlimageError):
        target(data)


def seed_corpus(root: Path) -> None:
    """A directory per target with real inputs from the test payload cache."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tests.support import payloads

    cache = payloads.CACHE

    def head(name: str, count: int) -> bytes:
        with (cache / name).open("rb") as stream:
            return stream.read(count)

    initrd = payloads.initramfs_cpio("x86_64", "dom0")[:65536]
    xen = gzip.decompress((cache / "x86_64/xen.gz").read_bytes())
    seeds = {
        "pe": [head("x86_64/xen.efi", 1 << 20), head("arm64/xen.efi", 1 << 20)],
        "multiboot2": [xen[: multiboot2.SEARCH_LIMIT]],
        "linux": [head("x86_64/vmlinuz", 65536), head("arm64/Image", 65536)],
        "cpio": [initrd],
        "gzip": [gzip.compress(initrd)],
        "xz": [__import__("lzma").compress(initrd)],
        "zstd": [__import__("zstandard").ZstdCompressor().compress(initrd)],
        "lz4": [b"".join(compression.lz4_legacy_compress([initrd]))],
        "xencfg": [b"[global]\ndefault=xen\n[xen]\noptions=console=com1\nkernel=vmlinuz x\n"],
        "fdt": [(cache / payloads.ARM64_DTB).read_bytes()],
        "kernel": [head("x86_64/vmlinuz", 65536), gzip.compress(head("arm64/Image", 1 << 18))],
        "initrd": [initrd, gzip.compress(initrd)],
        "xen-efi": [(cache / "arm64/xen.efi").read_bytes()],
        "xen-multiboot": [(cache / "x86_64/xen.gz").read_bytes()],
        "config": [b'[image]\narch = "x86_64"\n[[domain]]\nname = "dom0"\nkernel = "k"\n'],
        "inspect": [(cache / payloads.ARM64_DTB).read_bytes()],
    }
    for name, samples in seeds.items():
        directory = root / name
        directory.mkdir(parents=True, exist_ok=True)
        for index, sample in enumerate(samples):
            (directory / f"seed-{index}").write_bytes(sample)
            # The mixed target reads the first byte as the target's number.
            mixed = root / "all"
            mixed.mkdir(exist_ok=True)
            (mixed / f"{name}-{index}").write_bytes(bytes([NAMES.index(name)]) + sample)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--seed-corpus":
        seed_corpus(Path(sys.argv[2]))
        return
    if FIXED and FIXED not in TARGETS:
        raise SystemExit(f"HLIMAGE_FUZZ_TARGET: one of {', '.join(NAMES)}")
    CONFIG_DIR.mkdir(exist_ok=True)
    (CONFIG_DIR / "k").write_bytes(b"\0" * 1024)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
