"""Speed and memory of writing a FIT (hlimage.formats.fit) with a large ramdisk, signed or not.

Prints wall time and peak RSS of a process that writes the FIT against `cat` of the same
inputs (the floor: every byte read and written once). The FIT writer also computes each
payload's sha256 on the way (for its hash node), in a second thread. This runs the library in
a subprocess of its own; benchmarks/bench_scale.py times `hlimage build -f fit` as users run
it (the plan, the probes, the manifest, fsync). It also times sha256 of the inputs alone,
which every FIT needs (each image's hash node) and which bounds the writer on 2 cores. Run:

    .venv/bin/python -m benchmarks.bench_fit [--size-mib 1024] [--runs 3] [--sign]

Targets (issue 14): <= 1.5x cat, peak RSS <= 64 MiB whatever the payload size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_unified import make_ramdisk, measure
from hlimage import __version__
from hlimage.plumbing.streams import file_sha256
from tests.support import payloads


def write_fit(out: Path, xen: Path, kernel: Path, ramdisk: Path, dtb: Path, signed: bool) -> None:
    from hlimage.formats import fit

    images = (
        fit.FitImage("script", "script", b"bootm ${scriptaddr}\n"),
        fit.FitImage("xen", "kernel", xen, load=0x48000000, entry=0x48000000),
        fit.FitImage("fdt", "flat_dt", dtb, load=0x48800000),
        fit.FitImage("dom0-kernel", "kernel", kernel, load=0x49000000),
        fit.FitImage("dom0-ramdisk", "ramdisk", ramdisk, load=0x4C000000),
    )
    conf = fit.FitConfiguration(
        "conf-1", kernel="xen", fdt="fdt", loadables=("dom0-kernel", "dom0-ramdisk")
    )
    description = fit.Fit("bench", 1700000000, images, (conf,), default_image="script")
    signer = None
    if signed:
        # Only here: importing cryptography costs 0.1-0.3 s, which an unsigned FIT never pays.
        from cryptography.hazmat.primitives.asymmetric import rsa

        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        signer = fit.FitSigner(key, "bench", __version__)
    with out.open("wb") as stream:
        fit.write(description, stream, signer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--sign", action="store_true", help="sign the configuration too")
    parser.add_argument("--write", nargs=5, metavar="PATH", help=argparse.SUPPRESS)
    parser.add_argument("--hash", nargs="+", metavar="PATH", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.hash:
        for path in args.hash:
            file_sha256(path)
        return
    if args.write:
        out, xen, kernel, ramdisk, dtb = map(Path, args.write)
        write_fit(out, xen, kernel, ramdisk, dtb, args.sign)
        return
    payloads.fetch(verbose=False)
    xen = payloads.path("arm64/xen.efi")
    kernel = payloads.path("arm64/Image")
    dtb = payloads.path(payloads.ARM64_DTB)
    with tempfile.TemporaryDirectory(prefix="hlimage-bench-", dir=Path.cwd()) as scratch:
        work = Path(scratch)
        ramdisk = work / "ramdisk.img"
        make_ramdisk(ramdisk, args.size_mib << 20)
        inputs = [str(xen), str(kernel), str(ramdisk), str(dtb)]
        print(f"payload: {args.size_mib} MiB ramdisk + {kernel.stat().st_size >> 20} MiB kernel")
        cat = measure(["cat", *inputs], work / "cat.out", to_stdout=True, runs=args.runs)
        out = work / "image.fit"
        argv = [sys.executable, "-m", "benchmarks.bench_fit", "--write", str(out), *inputs]
        ours = measure(argv + (["--sign"] if args.sign else []), out, runs=args.runs)
        # Every image has a sha256 hash node: one core hashing every byte is the floor here.
        hash_argv = [sys.executable, "-m", "benchmarks.bench_fit", "--hash", *inputs]
        floor = measure(hash_argv, work / "hash.out", runs=args.runs)
        time_ratio = ours.seconds / cat.seconds
        print(f"cat      {cat.seconds:7.2f} s  {cat.max_rss_mib:7.1f} MiB")
        print(f"sha256   {floor.seconds:7.2f} s  {floor.max_rss_mib:7.1f} MiB  "
              f"= {floor.seconds / cat.seconds:.2f}x cat (hashing alone, no copy)")  # fmt: skip
        print(f"fit      {ours.seconds:7.2f} s  {ours.max_rss_mib:7.1f} MiB  "
              f"= {time_ratio:.2f}x cat, {ours.max_rss_mib / 64:.2f}x the 64 MiB budget "
              "(target <= 1.5x cat, <= 64 MiB)")  # fmt: skip
        ok = time_ratio <= 1.5 and ours.max_rss_mib <= 64
        print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
