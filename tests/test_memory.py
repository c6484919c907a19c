"""The C heap: freed pages handed back now, and large blocks returned as freed inside a block only.

Each check runs in a fresh interpreter: what glibc does with a request depends on the free chunks the
process already holds, and a test worker that ran other tests first holds gigabytes of them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cinderseg.core.memory import _libc

FREED_HEAP = """
import gc
from cinderseg.core.memory import release_free_heap

def rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")

blocks = [bytes(2000) for _ in range(100_000)]  # 200 MB of malloc'd (not pymalloc) blocks
keep = blocks[::50]  # one in 50 kept: the heap cannot shrink from its top alone
del blocks
gc.collect()
before = rss_mib()
assert release_free_heap()
after = rss_mib()
assert after < before - 100, f"most of the 200 MB freed goes back: {before:.0f} -> {after:.0f} MiB"
assert len(keep) == 2000
"""

SCOPED_THRESHOLD = """
import ctypes
import numpy as np
from cinderseg.core.memory import _libc, returning_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
        "keepcost",
    )]

mallinfo2 = _libc().mallinfo2
mallinfo2.restype = Mallinfo2

def own_mappings_while_holding(nbytes):
    before = mallinfo2().hblks
    block = np.ones(nbytes, dtype=np.uint8)
    during = mallinfo2().hblks
    del block
    return during - before

with returning_freed_memory(1 << 20) as applied:
    assert applied
    assert own_mappings_while_holding(2 << 20) == 1, "a 2 MiB block is its own mapping inside"
    assert own_mappings_while_holding(512 << 10) == 0, "smaller ones come from the heap"
# after the block large numpy temporaries come from the heap again, up to glibc's 32 MiB: they then
# cost no fresh mapping each (the vectorize step after a prediction, bench/README.md S11)
assert own_mappings_while_holding(2 << 20) == 0, "a 2 MiB block comes from the heap after"
assert own_mappings_while_holding(64 << 20) == 1
"""


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_freed_heap_goes_back_to_the_system() -> None:
    if _libc() is None:
        pytest.skip("no glibc")
    _run(FREED_HEAP)


def test_large_blocks_go_back_as_freed_inside_the_block_only() -> None:
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later")
    _run(SCOPED_THRESHOLD)


def test_the_check_catches_a_threshold_left_behind() -> None:
    """The check above fails for the bug it guards against: a 1 MiB threshold that outlives its block
    (the predict step before b0d9812)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        pytest.skip("not glibc 2.33 or later")
    left_behind = (
        "import contextlib\n"
        "@contextlib.contextmanager\n"
        "def returning_freed_memory(threshold):\n"
        "    yield bool(_libc().mallopt(-3, threshold))\n"
    )
    broken = SCOPED_THRESHOLD.replace("mallinfo2 = _libc()", left_behind + "mallinfo2 = _libc()")
    done = subprocess.run([sys.executable, "-c", broken], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "comes from the heap after" in done.stderr
