"""The Python worker daemon of the stages' Spark sessions (``spark.python.daemon.module``):
pyspark's own daemon, which first imports the modules the stage's tasks will need (named in
:data:`PRELOAD_ENV`, which the stage's session passes to its executors: torch, the stage's task
code). Every Python worker is forked from the daemon, so each starts with them loaded instead of
importing them itself: one import per executor instead of one per worker (torch takes ~4 s here).
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import zipimport

PRELOAD_ENV = "IMAGE_PLATFORM_WORKER_PRELOAD"


def main() -> None:
    for name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        with contextlib.suppress(Exception):  # the task imports it again and reports the error itself
            importlib.import_module(name)
    from pyspark import daemon, worker  # noqa: F401  (what each forked worker runs: imported once, here)

    _drop_zip_importers()
    daemon.manager()


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
