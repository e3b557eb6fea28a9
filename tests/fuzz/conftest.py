"""What every fuzz test keeps to: only hlimage's own errors escape a parser, within bounded
memory (an RLIMIT_AS ceiling) and bounded time (an alarm, and hypothesis's deadline) around
each call.

The inputs are random bytes and mutations of real ones (Debian's xen.efi and xen.gz, the
kernels, QEMU's device tree, real cpio archives and hlimage's own outputs).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
from collections.abc import Callable, Iterator
from types import FrameType
from typing import TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from hlimage.errors import HlimageError

# ~200 examples each keeps the whole fuzz suite near half a minute on two cores;
# HLIMAGE_FUZZ_EXAMPLES=5000 searches longer.
EXAMPLES = int(os.environ.get("HLIMAGE_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=2000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# For examples that write a file of megabytes or run a whole probe.
FUZZ_SLOW = settings(FUZZ, max_examples=max(1, EXAMPLES // 2))

# A parser may take what its input justifies, not gigabytes because a header says so.
MEMORY_HEADROOM = 1 << 30
# No example takes this long unless something loops.
TIME_LIMIT = 10.0

T = TypeVar("T")


def _address_space() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmSize in /proc/self/status")


@contextlib.contextmanager
def memory_limit(headroom: int = MEMORY_HEADROOM) -> Iterator[None]:
    """An allocation of more than `headroom` in the block fails with MemoryError, which the
    contract counts as a bug like any other exception. Lifted before pytest reports it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    ceiling = _address_space() + headroom
    if hard != resource.RLIM_INFINITY:
        ceiling = min(ceiling, hard)
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


class Looping(AssertionError):
    """An example ran past TIME_LIMIT."""


@contextlib.contextmanager
def time_limit(seconds: float = TIME_LIMIT) -> Iterator[None]:
    def expire(signum: int, frame: FrameType | None) -> None:
        raise Looping(f"still running after {seconds} s: an unbounded loop?")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def survives(call: Callable[[], T]) -> T | None:
    """Run `call`: its result, or None when it refused the input with hlimage's own error.
    Anything else (and MemoryError, and Looping) propagates: hypothesis reports it."""
    with memory_limit(), time_limit():
        try:
            return call()
        except HlimageError:  # FormatError included
            return None


INTERESTING_32 = (
    0, 1, 2, 3, 4, 7, 8, 0x10, 0x40, 0x7F, 0x80, 0xFF, 0x100, 0x200, 0x1000, 0x7FFF, 0x8000,
    0xFFFF, 0x10000, 0x100000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFE, 0xFFFFFFFF,
)  # fmt: skip


Hot = int | tuple[tuple[int, int], ...] | None
# Field changes more often than cuts, which mostly end in "truncated".
OPERATIONS = ("byte", "byte", "u32", "u32", "u16", "insert", "delete", "cut")


@st.composite
def mutated(draw: st.DrawFn, base: bytes, hot: Hot = None) -> bytes:
    """`base` with a few mutations: bytes set, 32- and 16-bit fields set to boundary values,
    ranges cut out, bytes put in, the end cut. Mostly where `hot` says: its first `hot` bytes
    (the headers), or in the (start, end) ranges it lists."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        if not data:
            data += draw(st.binary(min_size=1, max_size=16))
            continue
        if isinstance(hot, tuple):
            start, end = draw(st.sampled_from(hot))
            position = draw(st.integers(min(start, len(data) - 1), min(end, len(data)) - 1))
        else:
            span = min(len(data), hot or len(data))
            position = draw(st.integers(0, span - 1))
        operation = draw(st.sampled_from(OPERATIONS))
        if operation == "byte":
            data[position] = draw(st.integers(0, 255))
        elif operation in ("u32", "u16"):
            width = 4 if operation == "u32" else 2
            value = draw(st.sampled_from(INTERESTING_32)) & ((1 << (8 * width)) - 1)
            big = draw(st.booleans())
            data[position : position + width] = value.to_bytes(width, "big" if big else "little")
        elif operation == "cut":
            del data[draw(st.integers(position, len(data))) :]
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=32))
        else:
            del data[position : position + draw(st.integers(1, 64))]
    return bytes(data)
