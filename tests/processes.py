"""Servers the tests start themselves (Airflow, a Spark cluster): wait until they are ready, and
stop each one with everything it started."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any


def wait_for(what: str, check: Callable[[], Any], timeout: float, log: Path | None = None, every: float = 2.0) -> Any:
    """Poll ``check`` until it returns something true and return that; on timeout fail with the
    tail of ``log``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := check():
            return result
        time.sleep(every)
    tail = f"; log tail:\n{log.read_text()[-6000:]}" if log else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{tail}")


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL a process started with ``start_new_session`` and its whole group."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def stop_group(proc: subprocess.Popen, grace: float = 20) -> None:
    """Stop a process started with ``start_new_session`` and everything in its group (Airflow's
    components and task supervisors, spark-submit and executor JVMs, Python workers): SIGTERM,
    ``grace`` seconds for their own shutdown, then SIGKILL for whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(grace)
    time.sleep(2)  # children of the group finishing their own shutdown
    kill_group(proc)
