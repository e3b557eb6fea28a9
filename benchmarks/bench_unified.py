"""Speed and memory of `hlimage build --format unified` with a large ramdisk.

Prints wall time and peak RSS of hlimage against `cat` of the same inputs (the floor: every
byte read and written once) and against the objcopy recipe of Xen's docs. hlimage flushes its
output to disk before renaming it into place (durable against a power cut); what that costs
is printed too, from a run with fsync disabled (benchmarks/without_fsync.py), and the durable
build is compared with `cat` followed by `sync` of its output, the durable floor. Run:

    .venv/bin/python -m benchmarks.bench_unified [--size-mib 1024] [--runs 3]

Targets (issue 2): <= 1.5x the floor (cat + sync for the durable build, cat without fsync),
peak RSS <= 64 MiB whatever the payload size.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks import without_fsync
from tests.support import payloads


@dataclass(frozen=True)
class Run:
    seconds: float
    max_rss_mib: float
    cpu_seconds: float = 0.0
    """User plus system time of the run with the least."""


def measure(argv: list[str], output: Path, *, to_stdout: bool = False, runs: int = 3) -> Run:
    """Best wall time of `runs` (after one warm-up), and the largest peak RSS seen.

    Every run starts with the page cache's dirty data written back and no previous output,
    so that one run's writeback does not slow the next (or the other command)."""
    best = cpu = float("inf")
    rss = 0.0
    for attempt in range(runs + 1):
        if output.is_dir():
            shutil.rmtree(output)
        output.unlink(missing_ok=True)
        os.sync()
        out = output.open("wb") if to_stdout else subprocess.DEVNULL
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if to_stdout:
            out.close()  # type: ignore[union-attr]
        errors = process.stderr.read().decode() if process.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{errors}")
        if attempt:
            best = min(best, elapsed)
            cpu = min(cpu, usage.ru_utime + usage.ru_stime)
            rss = max(rss, usage.ru_maxrss / 1024)
    if output.is_dir():
        shutil.rmtree(output)
    output.unlink(missing_ok=True)
    return Run(best, rss, cpu)


def make_ramdisk(path: Path, size: int) -> None:
    """Incompressible data so that nothing can shortcut the copy."""
    if path.exists() and path.stat().st_size == size:
        return
    chunk = os.urandom(1 << 20)
    with path.open("wb") as stream:
        for index in range(size >> 20):
            stream.write(chunk[index % 256 :] + chunk[: index % 256])


def hlimage_command() -> str:
    """The hlimage beside this Python (the venv's), else the one on PATH."""
    beside = Path(sys.executable).parent / "hlimage"
    return str(beside) if beside.exists() else shutil.which("hlimage") or "hlimage"


def x86_inputs(work: Path, size_mib: int) -> tuple[Path, Path, Path, Path]:
    """Debian's xen.efi and kernel, a ramdisk of `size_mib`, and a description of them."""
    payloads.fetch(verbose=False)
    xen = payloads.path("x86_64/xen.efi")
    kernel = payloads.path("x86_64/vmlinuz")
    ramdisk = work / "ramdisk.img"
    make_ramdisk(ramdisk, size_mib << 20)
    description = work / "hlimage.toml"
    description.write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "{xen}"\ncmdline = "console=com1"\n'
        f'[[domain]]\nname = "dom0"\nkernel = "{kernel}"\ninitrd = "{ramdisk}"\n'
    )
    return xen, kernel, ramdisk, description


def objcopy_recipe(xen: Path, cfg: Path, kernel: Path, ramdisk: Path, out: Path) -> list[str]:
    base = 0xFFFF82D041000000
    return [
        "objcopy",
        "--add-section", f".config={cfg}", "--change-section-vma", f".config={base:#x}",
        "--add-section", f".kernel={kernel}",
        "--change-section-vma", f".kernel={base + (2 << 20):#x}",
        "--add-section", f".ramdisk={ramdisk}",
        "--change-section-vma", f".ramdisk={base + (32 << 20):#x}",
        str(xen), str(out),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--no-objcopy", action="store_true", help="skip the slow objcopy run")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hlimage-bench-", dir=Path.cwd()) as scratch:
        work = Path(scratch)
        xen, kernel, ramdisk, description = x86_inputs(work, args.size_mib)
        cfg = work / "xen.cfg"
        cfg.write_text("[global]\ndefault=xen\n[xen]\nkernel=vmlinuz console=hvc0\n")
        print(f"payload: {args.size_mib} MiB ramdisk + {kernel.stat().st_size >> 20} MiB kernel")
        cat = measure(["cat", str(xen), str(kernel), str(ramdisk)], work / "cat.out",
                      to_stdout=True, runs=args.runs)  # fmt: skip
        inputs = [xen, kernel, ramdisk]
        synced = measure(without_fsync.cat_and_sync(inputs, work / "cat.out"), work / "cat.out",
                         runs=args.runs)  # fmt: skip
        build = ["-q", "build", str(description), "-f", "unified", "-o", str(work / "u.efi")]
        log = work / "fsync.log"
        ours = measure([*without_fsync.command(log), *build], work / "u.efi", runs=args.runs)
        calls, in_fsync = without_fsync.fsync_time(log)
        loose = measure([*without_fsync.command(), *build], work / "u.efi", runs=args.runs)
        print(f"cat      {cat.seconds:7.2f} s  {cat.max_rss_mib:7.1f} MiB")
        print(f"cat+sync {synced.seconds:7.2f} s  {synced.max_rss_mib:7.1f} MiB")
        print(f"hlimage  {ours.seconds:7.2f} s  {ours.max_rss_mib:7.1f} MiB  "
              f"= {ours.seconds / synced.seconds:.2f}x cat+sync  "
              "(target <= 1.5x, <= 64 MiB)")  # fmt: skip
        print(f"no fsync {loose.seconds:7.2f} s  {loose.max_rss_mib:7.1f} MiB  "
              f"= {loose.seconds / cat.seconds:.2f}x cat")  # fmt: skip
        print(f"durability costs {in_fsync:.2f} s in {calls} fsync calls "
              f"({in_fsync / ours.seconds:.0%} of the build; the builds' difference "
              f"{ours.seconds - loose.seconds:+.2f} s; cat+sync - cat "
              f"{synced.seconds - cat.seconds:.2f} s)")  # fmt: skip
        if not args.no_objcopy and shutil.which("objcopy"):
            stripped = work / "xen-s.efi"
            subprocess.run(["objcopy", "--strip-debug", str(xen), str(stripped)], check=True)
            recipe = objcopy_recipe(stripped, cfg, kernel, ramdisk, work / "o.efi")
            objcopy = measure(recipe, work / "o.efi", runs=1)
            print(f"objcopy  {objcopy.seconds:7.2f} s  {objcopy.max_rss_mib:7.1f} MiB  "
                  f"= {objcopy.seconds / cat.seconds:.2f}x cat; hlimage is "
                  f"{objcopy.seconds / ours.seconds:.1f}x faster")  # fmt: skip
        ok = ours.seconds <= 1.5 * synced.seconds and loose.seconds <= 1.5 * cat.seconds
        ok = ok and max(ours.max_rss_mib, loose.max_rss_mib) <= 64
        print("targets met" if ok else "TARGETS MISSED")


if __name__ == "__main__":
    main()
