"""The Python worker daemon of the stages' Spark sessions (``spark.python.daemon.module``):
pyspark's own daemon, which first imports the modules the stage's tasks will need (named in
:data:`PRELOAD_ENV`, which the stage's session passes to its executors: torch, the stage's task
code). Every Python worker is forked from the daemon, so each starts with them loaded instead of
importing them itself: one import per executor instead of one per worker (torch takes ~4 s here).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib
import os
import sys
import zipimport

PRELOAD_ENV = "IMAGE_PLATFORM_WORKER_PRELOAD"
# glibc's mallopt parameters (malloc.h) and the size under which freed memory stays in the process.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BYTES = 1 << 30


def main() -> None:
    keep_freed_memory()
    for name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        with contextlib.suppress(Exception):  # the task imports it again and reports the error itself
            importlib.import_module(name)
    from pyspark import daemon, worker  # noqa: F401  (what each forked worker runs: imported once, here)

    _drop_zip_importers()
    # What is loaded now lives as long as every worker: out of the cyclic collector's sight, whose
    # full passes would otherwise walk torch's and pyspark's objects again and again (and, on
    # walking them, write to pages the forked workers share with the daemon).
    gc.freeze()
    daemon.manager()


def keep_freed_memory() -> bool:
    """Make glibc keep the memory a worker frees for its next allocation. By default every block
    over its mmap threshold (128 KiB, raised up to 32 MiB as blocks are freed) is mapped on
    allocation and unmapped on free: each forward pass of a scoring batch (a conv layer's output
    for 256 images at 32 px is 32 MiB) then maps fresh pages and the kernel zeroes them on first
    touch, a third of a cnn's inference time here (sys time). Blocks up to :data:`KEEP_BYTES` now
    come from the heap and stay there; a worker's peak memory is unchanged (the same buffers are
    reused). True when glibc took the settings (False elsewhere, e.g. musl: then nothing changes)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(libc.mallopt(M_TRIM_THRESHOLD, KEEP_BYTES))
    except (OSError, AttributeError):
        return False


def _drop_zip_importers() -> None:
    """Forget the cached importers of the zip archives on the workers' path (pyspark.zip and
    py4j's, one per package imported from them). Each forked worker calls
    ``importlib.invalidate_caches()``, which on Python 3.11 makes every cached zip importer read
    its archive's whole directory again (~0.1 s per worker here); a later import from an archive
    builds its importer anew from the directory Python keeps in memory."""
    for path, finder in list(sys.path_importer_cache.items()):
        if isinstance(finder, zipimport.zipimporter):
            del sys.path_importer_cache[path]


if __name__ == "__main__":
    main()
