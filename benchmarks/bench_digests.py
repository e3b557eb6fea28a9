"""How close unified, esp and disk builds come to the machine's limit, with and without the
manifest's digests.

The limit of a build that writes a manifest is SHA-256 itself: it hashes each payload, and for
a PE output the whole image twice more (its sha256 and its Authenticode digest), on the one
pass that writes it. So this measures, in the same run:

- `cat` of the inputs into one file: wall and CPU time (the copy's own floor);
- SHA-256's time per byte on this machine (hashlib over the ramdisk, CPU time);
- each build, wall and CPU time and peak RSS, and the bytes its manifest says it hashed.

and prints the floor of each build, as the issue defines it:

    wall floor = max(cat's wall, bytes hashed x SHA-256's time per byte / cores)
    CPU floor  = cat's CPU + bytes hashed x SHA-256's time per byte

and also the chain floor: one SHA-256 is a chain that no second core can shorten, so a build
cannot end before its longest digest (for esp and disk, the ramdisk's own) is done; the
issue's wall floor assumes the bytes hashed spread over every core, which one digest cannot.
Targets: wall <= 1.15x the floor, CPU <= 1.2x its floor; `--no-manifest` <= 1.3x cat; peak RSS
<= 64 MiB. cat does not flush its output to disk and hlimage does (durable outputs), so the
ratios are of builds with fsync made a no-op (benchmarks/without_fsync.py), and what the flush
adds is printed beside them, against `cat` + `sync`. Run:

    .venv/bin/python -m benchmarks.bench_digests [--size-mib 1024] [--runs 3]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import subprocess
import tempfile
from pathlib import Path

from benchmarks import without_fsync
from benchmarks.bench_unified import Run, measure, x86_inputs

CHUNK = 1 << 20


def describe(name: str, run: Run) -> str:
    return (f"{name:13} wall {run.seconds:6.2f} s  CPU {run.cpu_seconds:6.2f} s  "
            f"{run.max_rss_mib:6.1f} MiB")  # fmt: skip


def sha256_seconds_per_byte(path: Path) -> float:
    """SHA-256's CPU time per byte here, from hashing `path` (from the page cache)."""
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as stream:
        while stream.readinto(buffer):  # warm the page cache; time only the hashing below
            pass
        stream.seek(0)
        digest = hashlib.sha256()
        size = 0
        before = resource.getrusage(resource.RUSAGE_SELF)
        while count := stream.readinto(buffer):
            digest.update(view[:count])
            size += count
        after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = after.ru_utime - before.ru_utime
    return cpu / size


def hashed_bytes(manifest: Path) -> tuple[int, int]:
    """(bytes hashed in all, the longest single digest's bytes) by what the manifest lists."""
    data = json.loads(manifest.read_text())
    chains = [int(item["size"]) for item in data["artifacts"] if item.get("sha256")]
    for image in data["pe_images"]:
        # The file's sha256 and its Authenticode digest; a PE image copied whole into a tree
        # is also an artifact, whose payload digest is that same sha256.
        if not any(item["name"] == image["path"] for item in data["artifacts"]):
            chains.append(int(image["size"]))
        chains.append(int(image["size"]))
    return sum(chains), max(chains, default=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--formats", default="unified,esp,disk")
    args = parser.parse_args()
    cores = len(os.sched_getaffinity(0))
    with tempfile.TemporaryDirectory(prefix="hlimage-bench-", dir=Path.cwd()) as scratch:
        work = Path(scratch)
        xen, kernel, ramdisk, description = x86_inputs(work, args.size_mib)
        inputs = [str(xen), str(kernel), str(ramdisk)]
        cat = measure(["cat", *inputs], work / "cat.out", to_stdout=True, runs=args.runs)
        synced = measure(without_fsync.cat_and_sync([xen, kernel, ramdisk], work / "cat.out"),
                         work / "cat.out", runs=args.runs)  # fmt: skip
        per_byte = sha256_seconds_per_byte(ramdisk)
        print(f"payload: {args.size_mib} MiB ramdisk + {kernel.stat().st_size >> 20} MiB kernel; "
              f"{cores} cores")  # fmt: skip
        print(describe("cat", cat))
        print(f"cat+sync      wall {synced.seconds:6.2f} s (the flush adds "
              f"{synced.seconds - cat.seconds:+.2f} s)")  # fmt: skip
        print(f"sha256     {per_byte * (1 << 30):.2f} s of CPU per GiB")
        ok = True
        for name in args.formats.split(","):
            output = work / {"unified": "u.efi", "esp": "esp", "disk": "disk.img"}[name]
            build = ["-q", "build", str(description), "-f", name, "-o", str(output)]
            durable = measure([*without_fsync.command(), "--durable", *build], output, runs=1)
            full = measure([*without_fsync.command(), *build], output, runs=args.runs)
            subprocess.run([*without_fsync.command(), *build], check=True, capture_output=True)
            total, longest = hashed_bytes(output.with_name(output.name + ".manifest.json"))
            loose = measure([*without_fsync.command(), *build, "--no-manifest"], output,
                            runs=args.runs)  # fmt: skip
            floor = max(cat.seconds, total * per_byte / cores)
            chain_floor = max(floor, longest * per_byte)
            cpu_floor = cat.cpu_seconds + total * per_byte
            print(f"{describe(name, full)}  hashed {total / (1 << 30):.2f} GiB")
            print(f"{'':13} = {full.seconds / floor:.2f}x the wall floor ({floor:.2f} s; target "
                  f"<= 1.15x), {full.seconds / chain_floor:.2f}x the chain floor "
                  f"({chain_floor:.2f} s), {full.cpu_seconds / cpu_floor:.2f}x the CPU floor "
                  f"({cpu_floor:.2f} s; target <= 1.2x)")  # fmt: skip
            print(f"{'durable':13} wall {durable.seconds:6.2f} s: the flush adds "
                  f"{durable.seconds - full.seconds:+.2f} s (cat+sync adds "
                  f"{synced.seconds - cat.seconds:+.2f} s to cat)")  # fmt: skip
            print(f"{describe('--no-manifest', loose)}  = {loose.seconds / cat.seconds:.2f}x "
                  "cat (target <= 1.3x)")  # fmt: skip
            ok = ok and full.seconds <= 1.15 * floor and full.cpu_seconds <= 1.2 * cpu_floor
            ok = (
                ok
                and loose.seconds <= 1.3 * cat.seconds
                and max(full.max_rss_mib, loose.max_rss_mib) <= 64
            )
        print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
