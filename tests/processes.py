"""Servers the tests start themselves (Airflow, a Spark cluster): wait until they are ready, and
stop each one with everything it started; file systems they mount (a full or read-only tmpfs)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
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


def descendants(pid: int) -> set[int]:
    """Every living process descended from ``pid`` (children, theirs, ...: sessions of their own too)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


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


@contextlib.contextmanager
def tmpfs(folder: Path, size: str = "1m", read_only: bool = False, full: bool = False) -> Iterator[Path]:
    """A tmpfs mounted at ``folder`` for the block (read-only, or with every byte taken by a
    filler file when ``full``); the test is skipped, saying why, where mounting is not allowed
    (not root, or no CAP_SYS_ADMIN in a container)."""
    import pytest

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root: a full or read-only data.root is not tried here")
    folder.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}): not tried")
    try:
        if full:
            with contextlib.suppress(OSError), (folder / "filler").open("wb") as filler:
                while True:
                    filler.write(b"\0" * 65536)
                    filler.flush()
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)
