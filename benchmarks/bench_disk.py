"""Speed and memory of `hlimage build --format disk` with a large initrd.

Prints wall time and peak RSS of hlimage against `cat` of the same inputs (the floor: every
byte read and written once). hlimage also computes each file's sha256 on the way (for the
report and the content-derived GUIDs); on a 2-core machine that hash, in a second thread, is
what bounds it. Run:

    .venv/bin/python -m benchmarks.bench_disk [--size-mib 1024] [--runs 3]

Targets (issue "USB media"): <= 1.5x cat, peak RSS <= 64 MiB whatever the payload size.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from benchmarks.bench_unified import hlimage_command, measure, x86_inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    hlimage = hlimage_command()
    with tempfile.TemporaryDirectory(prefix="hlimage-bench-", dir=Path.cwd()) as scratch:
        work = Path(scratch)
        xen, kernel, ramdisk, description = x86_inputs(work, args.size_mib)
        print(f"payload: {args.size_mib} MiB initrd + {kernel.stat().st_size >> 20} MiB kernel")
        cat = measure(["cat", str(xen), str(kernel), str(ramdisk)], work / "cat.out",
                      to_stdout=True, runs=args.runs)  # fmt: skip
        disk = work / "disk.img"
        ours = measure(
            [hlimage, "-q", "build", str(description), "-f", "disk", "-o", str(disk)],
            disk,
            runs=args.runs,
        )
        time_ratio = ours.seconds / cat.seconds
        print(f"cat      {cat.seconds:7.2f} s  {cat.max_rss_mib:7.1f} MiB")
        print(f"hlimage  {ours.seconds:7.2f} s  {ours.max_rss_mib:7.1f} MiB  "
              f"= {time_ratio:.2f}x cat, {ours.max_rss_mib / 64:.2f}x the 64 MiB budget "
              "(target <= 1.5x cat, <= 64 MiB)")  # fmt: skip
        ok = time_ratio <= 1.5 and ours.max_rss_mib <= 64
        print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
