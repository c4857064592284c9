"""The Python worker daemon's memory setting, checked in a fresh interpreter through glibc's own
accounting (``mallinfo2``): after :func:`spark_jobs.core.daemon.keep_freed_memory`, a batch-sized
buffer comes from the heap and stays there when freed, instead of being mapped for each batch and
unmapped after it (the kernel then zeroes fresh pages for every forward pass)."""

from __future__ import annotations

import subprocess
import sys

from tests.factories import REPO

PROBE = """
import ctypes, sys
import numpy as np
sys.path.insert(0, sys.argv[1])
from spark_jobs.core.daemon import keep_freed_memory
class Info(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
if sys.argv[2] == "keep":
    assert keep_freed_memory()
for _ in range(2):  # the second batch: glibc has seen one freed already (its threshold adapts)
    batch = np.ones(40 * 2**20, dtype=np.uint8)  # a conv layer's output for a scoring batch, roughly
    mapped = libc.mallinfo2().hblkhd
    del batch
print(mapped, libc.mallinfo2().fordblks)
"""


def _memory(mode: str) -> tuple[int, int]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(REPO), mode], capture_output=True, text=True, check=True)
    mapped, free_in_heap = map(int, out.stdout.split())
    return mapped, free_in_heap


def test_freed_batches_stay_in_the_heap() -> None:
    batch = 40 * 2**20
    mapped, _ = _memory("default")
    assert mapped >= batch  # glibc maps it, and unmaps it when freed: every batch starts from fresh pages
    mapped, free_in_heap = _memory("keep")
    assert mapped < batch
    assert free_in_heap >= batch  # freed, kept for the next batch
