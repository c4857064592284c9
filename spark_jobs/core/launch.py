"""A stage's process: when it started (the start-up every manifest times), and the heavy modules
it imports in the background while the JVM starts."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

GATE = ("great_expectations",)  # what a stage with a gate preloads (see :func:`preload`)
TORCH = ("torch",)


@dataclass(frozen=True)
class Launch:
    """When the process running a stage started, and when its Spark session was ready."""

    started: float  # epoch seconds
    session_ready: float | None = None


_launch: Launch | None = None  # set by :func:`launched` for the stage a process runs


@contextlib.contextmanager
def launched(started: float, session_ready: float | None) -> Iterator[None]:
    """Within the block, stage runs count their wall time from ``started`` (the process start)."""
    global _launch
    previous, _launch = _launch, Launch(started, session_ready)
    try:
        yield
    finally:
        _launch = previous


def current() -> Launch | None:
    """The launch of the stage this process runs (None: a run inside a process that did not start
    for it, e.g. a test calling ``run(cfg, spark)``)."""
    return _launch


def process_started() -> float:
    """Epoch seconds at which this process started, or under ``spark-submit`` the JVM that
    started it (its parent): the whole start-up of the stage, as the user waits for it."""
    import psutil

    me = psutil.Process()
    if "PYSPARK_GATEWAY_PORT" in os.environ:
        parent = me.parent()
        if parent is not None and "java" in parent.name().lower():
            return parent.create_time()
    return me.create_time()


def preload(modules: Sequence[str]) -> threading.Thread:
    """Import ``modules`` in a background thread (while the JVM starts, say): the first real use
    then finds them loaded instead of paying their import on the critical path."""
    import importlib

    def load() -> None:
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception as exc:  # the real import, later, reports it properly
                log.debug("preloading %s failed: %s", name, exc)

    thread = threading.Thread(target=load, name="preload", daemon=True)
    thread.start()
    return thread
