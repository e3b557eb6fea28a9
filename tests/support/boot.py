"""The one boot helper every end-to-end test uses: boot media in QEMU and watch the serial
console until every domain's marker has appeared, something fatal shows, or time runs out."""

from __future__ import annotations

import contextlib
import os
import re
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from hlimage import qemu
from tests.support.payloads import CMDLINE_PREFIX, marker

# What a marker initramfs prints: its /proc/cmdline in brackets (the last ']' on the line
# closes it, so a command line may hold brackets itself).
CMDLINE_LINE = re.compile(re.escape(CMDLINE_PREFIX) + r"([^\[\s]+)\[(.*)\]\r*$", re.MULTILINE)

# Lines after which nothing good comes (docs/qemu-boot.md, "Traps"); `noreboot` keeps QEMU running.
FATAL = (
    "Panic on CPU",
    "Hardware Dom0 crashed",
    "Manual reset required",
    "must be loaded below 4Gb",
    "Shell> ",
    "grub> ",
    "UiApp",
    "Couldn't obtain the File System",
    "Synchronous Exception",
    # U-Boot (docs/uboot.md): a script or an image it refused, or hlimage's script giving up.
    "SCRIPT FAILED",
    "Bad Data Hash",
    "Bad FIT image format",
    "can't get kernel image",
    "Wrong Image Format",
    "; Xen not started",
)


@dataclass
class BootResult:
    markers: Sequence[str]
    seen: list[str]
    fatal: str | None
    stopped_by: str | None
    elapsed: float
    returncode: int | None
    log_path: Path
    output: str = field(repr=False)
    cmdlines: Mapping[str, str] = field(default_factory=dict)
    """What each domain's /proc/cmdline must be."""

    @property
    def missing(self) -> list[str]:
        return [name for name in self.markers if name not in self.seen]

    def tail(self, lines: int = 60) -> str:
        return "\n".join(self.output.splitlines()[-lines:])

    def seen_cmdlines(self) -> dict[str, list[str]]:
        """Each domain's /proc/cmdline, every copy it printed (the marker initramfs prints
        it on each console it has, /dev/console and hvc0 at least, and Xen's console lines
        can cut into one of a domU's)."""
        found: dict[str, list[str]] = {}
        for match in CMDLINE_LINE.finditer(self.output):
            found.setdefault(match.group(1), []).append(match.group(2))
        return found

    def check(self) -> None:
        """Fail the test unless every marker appeared and every domain's /proc/cmdline is
        the one expected, with the console's end to read."""
        if self.missing or self.fatal:
            reason = f"fatal console line {self.fatal!r}" if self.fatal else "timed out"
            raise AssertionError(
                f"boot did not print {self.missing} ({reason} after {self.elapsed:.0f} s; "
                f"full log {self.log_path}):\n{self.tail()}"
            )
        seen = self.seen_cmdlines()
        for name, expected in self.cmdlines.items():
            assert name in seen, f"{name} printed no /proc/cmdline (full log {self.log_path})"
            # One whole copy that matches is the domain's line; a cut-into copy beside it is
            # console noise. No copy matching fails.
            assert expected in seen[name], (
                f"{name}'s /proc/cmdline is {seen[name][0]!r}, the description says "
                f"{expected!r} (full log {self.log_path})"
            )


def boot(
    arch: str,
    media: qemu.Media,
    domains: Sequence[str],
    *,
    log_path: Path,
    timeout: float = 300,
    secure_boot: bool = False,
    stop_on: Sequence[str] = (),
    fatal: Sequence[str] = FATAL,
    memory: str = "2G",
    command: Sequence[str] | None = None,
    until_exit: bool = False,
    cmdlines: Mapping[str, str],
    uboot: bool = False,
) -> BootResult:
    """Boot and wait for `marker(name)` of every name in `domains`.

    `stop_on` are console strings that end the run early without being fatal (a firmware that
    refuses an image, say); the one seen is in `stopped_by`. `command` runs instead of QEMU
    (`hlimage run`, which starts QEMU itself; `media` is then unused), and `until_exit` keeps
    reading after the markers until it exits by itself, for its `returncode`. `cmdlines`:
    what each domain's /proc/cmdline must be for `check` to pass (descriptions.cmdlines gives
    the description's; a test whose Xen cannot pass one exactly says so with its own value).
    `uboot` boots arm64 with Debian's U-Boot as firmware, and no key is ever pressed (stdin is
    closed).
    """
    qemu.check_tools(arch, secure_boot=secure_boot, uboot=uboot)
    expected = {marker(name): name for name in domains}
    with tempfile.TemporaryDirectory(prefix="hlimage-boot-") as scratch:
        if command is not None:
            argv = list(command)
        else:
            vars_copy = None
            if arch == qemu.X86_64:
                vars_copy = qemu.prepare_vars(Path(scratch) / "vars.fd", secure_boot=secure_boot)
            argv = qemu.command(
                arch, media, vars_copy=vars_copy, secure_boot=secure_boot, memory=memory,
                uboot=uboot,
            )  # fmt: skip
        started = time.monotonic()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        output = bytearray()
        seen: list[str] = []
        found_fatal: str | None = None
        stopped_by: str | None = None
        selector = selectors.DefaultSelector()
        selector.register(process.stdout, selectors.EVENT_READ)
        os.set_blocking(process.stdout.fileno(), False)
        scanned = 0
        try:
            while True:
                remaining = timeout - (time.monotonic() - started)
                if remaining <= 0:
                    break
                if selector.select(timeout=min(remaining, 1.0)):
                    chunk = process.stdout.read(65536)
                    if chunk:
                        output += chunk
                    elif process.poll() is not None:
                        break
                elif process.poll() is not None:
                    break
                # Search only what is new, plus an overlap for strings split across reads.
                window = output[max(0, scanned - 256) :].decode("utf-8", "replace")
                scanned = len(output)
                for text, name in expected.items():
                    if name not in seen and text in window:
                        seen.append(name)
                found_fatal = found_fatal or next((f for f in fatal if f in window), None)
                stopped_by = stopped_by or next((s for s in stop_on if s in window), None)
                if found_fatal or stopped_by or (len(seen) == len(expected) and not until_exit):
                    # Let a few more lines reach the log before stopping the machine.
                    time.sleep(0.5)
                    with contextlib.suppress(BlockingIOError, ValueError):
                        output += process.stdout.read() or b""
                    break
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            selector.close()
            elapsed = time.monotonic() - started
            log_path.parent.mkdir(parents=True, exist_ok=True)
            header = f"$ {' '.join(argv)}\n# elapsed {elapsed:.1f} s\n"
            log_path.write_bytes(header.encode() + bytes(output))
    text = bytes(output).decode("utf-8", "replace")
    return BootResult(
        markers=list(domains),
        seen=seen,
        fatal=found_fatal,
        stopped_by=stopped_by,
        elapsed=elapsed,
        returncode=process.returncode,
        log_path=log_path,
        output=text,
        cmdlines=dict(cmdlines),
    )


def loaded_domus(output: str) -> list[tuple[int, int]]:
    """(cpus, memory KiB) of each 'LOADING DOMU' line, memory printed in hex KiB: Xen 4.17
    prints `memory=30000KB`, 4.20 `memory=0x30000KB`."""
    found = re.findall(r"LOADING DOMU cpus=(\d+) memory=(?:0x)?([0-9a-fA-F]+)KB", output)
    return [(int(cpus), int(memory, 16)) for cpus, memory in found]


def strip_ansi(text: str) -> str:
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text)
