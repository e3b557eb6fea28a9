"""Speed and memory at scale: builds with 1 GiB and 4 GiB of payloads, against `cat` of the
same input files (the floor: every byte read and written once), plus `inspect --no-digests` of
a 1 GiB unified image and `hlimage --version`.

    .venv/bin/python -m benchmarks.bench_scale [--runs 2] [--skip-4g]

Cases: unified (x86, dom0 alone; the "4 GiB" case is 4000 MiB, the most an x86 unified image
can carry: Xen must end below 4 GiB and PE images end there too); esp and disk (arm64
dom0less: dom0 and 7 domUs, the payload spread over the 8 initrds); uboot and fit (the same
domains for U-Boot, 1 GiB only: a FIT's size is a 32-bit number). The 4 GiB cases need about
14 GB free where the benchmark runs (inputs 4 GiB, hlimage's and cat's outputs 4 GiB each, the
disk image's temporary). Each build is timed as users run it (writing the manifest, which
re-reads each PE image to hash it), with --no-manifest, and with fsync disabled
(benchmarks/without_fsync.py): hlimage flushes every output to disk before renaming it into
place, so that a power cut leaves the old output or the new one, and the last column is what
that costs: the time the durable build spends in fsync (and the difference in wall time from
the build without it, which a busy machine makes noisy). A durable build's floor is `cat` and
then `sync` of its output.

Targets: builds <= 1.5x their floor (cat + sync; cat for the build without fsync) and peak
RSS <= 64 MiB whatever the size; inspect --no-digests of a 1 GiB unified image <= 0.2 s;
--version <= 0.15 s.
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
from benchmarks.bench_unified import Run, make_ramdisk
from tests.support import payloads

MIB = 1 << 20
DOMAINS = 8
TARGET_RATIO = 1.5
TARGET_RSS_MIB = 64
TARGET_INSPECT = 0.2
TARGET_VERSION = 0.15


@dataclass(frozen=True)
class Case:
    name: str
    format: str
    description: Path
    inputs: list[Path]
    """What cat reads: the same files hlimage copies."""
    payload_mib: int


def hlimage_program() -> str:
    beside = Path(sys.executable).parent / "hlimage"
    return str(beside) if beside.exists() else shutil.which("hlimage") or "hlimage"


def x86_case(work: Path, total_mib: int, label: str) -> Case:
    """x86 unified: xen.efi, the kernel and one initrd making up the payload total."""
    xen, kernel = payloads.path("x86_64/xen.efi"), payloads.path("x86_64/vmlinuz")
    initrd = work / f"x86-initrd-{total_mib}.img"
    make_ramdisk(initrd, (total_mib << 20) - (kernel.stat().st_size // MIB + 1) * MIB)
    description = work / f"unified-{total_mib}.toml"
    description.write_text(
        f'[image]\narch = "x86_64"\n[xen]\nefi = "{xen}"\ncmdline = "console=com1"\n'
        f'[[domain]]\nname = "dom0"\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        'memory = "1G"\n'
    )
    return Case(f"unified {label}", "unified", description, [xen, kernel, initrd], total_mib)


def big_ram_dtb(work: Path) -> Path:
    """QEMU's arm64 tree with 16 GiB of RAM: U-Boot reads a FIT whole below what it loads, so
    1 GiB of modules needs more than the 2 GiB the tests' machine has."""
    from hlimage.formats import fdt

    path = work / "virt-16g.dtb"
    tree = fdt.parse(payloads.path(payloads.ARM64_DTB).read_bytes())
    memory = tree.node("/memory@40000000")
    assert memory is not None
    memory.set("reg", fdt.cells(0, 0x40000000, 4, 0))
    path.write_bytes(tree.build())
    return path


def dom0less_case(work: Path, total_mib: int, label: str, output_format: str) -> Case:
    """arm64 dom0 and 7 domUs, each with its own initrd (hard links of one random file, so
    that 4 GiB of inputs take 512 MiB of disk; hlimage and cat read all eight names)."""
    xen, kernel = payloads.path("arm64/xen.efi"), payloads.path("arm64/Image")
    uboot = output_format in ("uboot", "fit")
    dtb = big_ram_dtb(work) if uboot else payloads.path(payloads.ARM64_DTB)
    each = work / f"arm64-initrd-{total_mib}.img"
    make_ramdisk(each, (total_mib << 20) // DOMAINS)
    initrds = []
    for index in range(DOMAINS):
        link = work / f"arm64-initrd-{total_mib}-{index}.img"
        if not link.exists():
            os.link(each, link)
        initrds.append(link)
    text = (
        f'[image]\narch = "arm64"\n[xen]\nefi = "{xen}"\ndtb = "{dtb}"\n'
        'cmdline = "console=dtuart"\n'
    )
    for index, initrd in enumerate(initrds):
        name = "dom0" if index == 0 else f"guest{index}"
        text += f'[[domain]]\nname = "{name}"\nkernel = "{kernel}"\ninitrd = "{initrd}"\n'
        text += 'memory = "512M"\n' + ("" if index == 0 else "vcpus = 1\n")
    description = work / f"dom0less-{total_mib}.toml"
    description.write_text(text)
    inputs = [xen, dtb, kernel, *initrds]
    return Case(f"{output_format} {label}", output_format, description, inputs, total_mib)


def build_argv(case: Case, output: Path, manifest: bool) -> list[str]:
    argv = [hlimage_program(), "-q", "build", str(case.description), "-f", case.format,
            "-o", str(output)]  # fmt: skip
    return argv if manifest else [*argv, "--no-manifest"]


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    Path(f"{path}.manifest.json").unlink(missing_ok=True)


def measure(argv: list[str], output: Path, *, to_stdout: bool = False, runs: int = 2) -> Run:
    """bench_unified.measure for file and directory outputs alike: the best wall time of
    `runs` after a warm-up, each started with no previous output and the page cache's dirty
    data written back; the largest peak RSS seen."""
    best = float("inf")
    rss = 0.0
    for attempt in range(runs + 1):
        remove(output)
        os.sync()
        out = output.open("wb") if to_stdout else None
        started = time.perf_counter()
        process = subprocess.Popen(argv, stdout=out or subprocess.DEVNULL, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        if out is not None:
            out.close()
        errors = process.stderr.read().decode() if process.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark command failed: {' '.join(argv)}\n{errors}")
        if attempt:
            best = min(best, elapsed)
            rss = max(rss, usage.ru_maxrss / 1024)
    remove(output)
    return Run(best, rss)


@dataclass(frozen=True)
class BuildRuns:
    cat: Run
    synced: Run
    """cat, then sync of its output: the floor of a durable build."""
    ours: Run
    """hlimage as users run it."""
    bare: Run
    """--no-manifest."""
    loose: Run
    """As users run it, with fsync disabled."""
    fsync_calls: int
    fsync_seconds: float
    """Spent in fsync by the durable build (its run that spent least)."""


def measure_build(case: Case, work: Path, runs: int) -> BuildRuns:
    cat = measure(["cat", *map(str, case.inputs)], work / "cat.out", to_stdout=True, runs=runs)
    synced = measure(without_fsync.cat_and_sync(case.inputs, work / "cat.out"), work / "cat.out",
                     runs=runs)  # fmt: skip
    output = work / f"out-{case.format}"
    argv = build_argv(case, output, True)
    log = work / f"fsync-{case.format}.log"
    log.unlink(missing_ok=True)
    ours = measure([*without_fsync.command(log), *argv[1:]], output, runs=runs)
    bare = measure(build_argv(case, output, False), output, runs=runs)
    loose = measure([*without_fsync.command(), *argv[1:]], output, runs=runs)
    return BuildRuns(cat, synced, ours, bare, loose, *without_fsync.fsync_time(log))


def best_time(argv: list[str], runs: int) -> float:
    best = float("inf")
    for _ in range(runs + 1):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        best = min(best, time.perf_counter() - started)
    return best


def verdict(ok: bool) -> str:
    return "ok" if ok else "MISSED"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2, help="timed runs per command (best)")
    parser.add_argument("--skip-4g", action="store_true", help="only the 1 GiB cases")
    args = parser.parse_args()
    payloads.fetch(verbose=False)
    sizes = [(1024, "1 GiB")] + ([] if args.skip_4g else [(4096, "4 GiB")])
    missed = []
    inspect = float("nan")
    with tempfile.TemporaryDirectory(prefix="hlimage-bench-", dir=Path.cwd()) as scratch:
        work = Path(scratch)
        print(f"{'case':<16} {'cat':>14} {'cat+sync':>14} | {'hlimage':>25} | "
              f"{'--no-manifest':>25} | {'no fsync':>25} | durability: time in fsync")  # fmt: skip
        for total, label in sizes:
            unified_total = total if total < 4096 else 4000  # the most below 4 GiB
            cases = [
                x86_case(work, unified_total, label if total < 4096 else "4000 MiB"),
                dom0less_case(work, total, label, "esp"),
                dom0less_case(work, total, label, "disk"),
            ]
            if total < 4096:
                # A FIT is one device tree, whose size is a 32-bit number: no 4 GiB case.
                cases += [dom0less_case(work, total, label, name) for name in ("uboot", "fit")]
            for case in cases:
                runs = measure_build(case, work, args.runs)
                cells = [f"{runs.cat.seconds:6.2f} s {runs.cat.max_rss_mib:4.0f} MiB "
                         f"{runs.synced.seconds:6.2f} s"]  # fmt: skip
                for run, floor, label in (
                    (runs.ours, runs.synced, ""),
                    (runs.bare, runs.synced, " --no-manifest"),
                    (runs.loose, runs.cat, " without fsync"),
                ):
                    ratio = run.seconds / floor.seconds
                    ok = ratio <= TARGET_RATIO and run.max_rss_mib <= TARGET_RSS_MIB
                    cells.append(f"{run.seconds:6.2f} s {ratio:4.2f}x {run.max_rss_mib:4.0f} MiB"
                                 f" {verdict(ok)}")  # fmt: skip
                    if not ok:
                        missed.append(case.name + label)
                cost = runs.ours.seconds - runs.loose.seconds
                cells.append(f"{runs.fsync_seconds:5.2f} s in {runs.fsync_calls} fsync "
                             f"({runs.fsync_seconds / runs.ours.seconds:.0%}; wall "
                             f"{cost:+.2f} s)")  # fmt: skip
                print(f"{case.name:<16} " + " | ".join(cells), flush=True)
            if total == 1024:
                image = work / "inspect.efi"
                argv = build_argv(cases[0], image, False)
                subprocess.run(argv, check=True, stderr=subprocess.DEVNULL)
                inspect = best_time(
                    [hlimage_program(), "inspect", "--no-digests", str(image)], max(args.runs, 3)
                )
                image.unlink()
            for path in work.glob("*.img"):
                path.unlink()  # the next size's inputs take their place
        version = best_time([hlimage_program(), "--version"], max(args.runs, 3))
        for name, seconds, target in (
            ("inspect --no-digests (1 GiB unified)", inspect, TARGET_INSPECT),
            ("--version", version, TARGET_VERSION),
        ):
            if seconds > target:
                missed.append(name)
            print(
                f"{name:<38} {seconds:6.3f} s  (target <= {target} s)  {verdict(seconds <= target)}"
            )
    print("targets met" if not missed else f"TARGETS MISSED: {', '.join(missed)}")


if __name__ == "__main__":
    main()
