"""The C heap: freed pages handed back to the system.

The check runs in a fresh interpreter: what glibc does with a request depends on the free chunks the
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


def _run(code: str) -> None:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads Linux's /proc")
def test_freed_heap_goes_back_to_the_system() -> None:
    if _libc() is None:
        pytest.skip("no glibc")
    _run(FREED_HEAP)
