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

PRELOAD_ENV = "IMAGE_PLATFORM_WORKER_PRELOAD"


def main() -> None:
    for name in filter(None, os.environ.get(PRELOAD_ENV, "").split(",")):
        with contextlib.suppress(Exception):  # the task imports it again and reports the error itself
            importlib.import_module(name)
    from pyspark import daemon

    daemon.manager()


if __name__ == "__main__":
    main()
