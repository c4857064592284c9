"""Locks on outputs: exclusive, naming their holder, released however the holder ends."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from spark_jobs.core import locks


def test_a_held_lock_refuses_another_and_names_its_holder(tmp_path: Path) -> None:
    lock = tmp_path / ".locks" / "out.lock"
    assert locks.lock_holder(lock) is None
    fd = locks.take_lock(lock, 0, "busy", "run one")
    try:
        assert locks.lock_holder(lock).startswith(f"run one, pid {os.getpid()}")
        with pytest.raises(locks.OutputBusy, match=r"^out is taken \(run one, pid"):
            locks.take_lock(lock, 0, "out is taken", "run two")
    finally:
        os.close(fd)
    assert locks.lock_holder(lock) is None
    os.close(locks.take_lock(lock, 0, "busy", "run two"))


def test_holding_releases_what_it_took_when_a_later_lock_is_busy(tmp_path: Path) -> None:
    first, second = tmp_path / "a.lock", tmp_path / "b.lock"
    other = locks.take_lock(second, 0, "busy", "someone else")
    try:
        with (
            pytest.raises(locks.OutputBusy, match="b is busy"),
            locks.holding([(first, "a"), (second, "b is busy")], "me"),
        ):
            pass
        assert locks.lock_holder(first) is None  # the first was given back
    finally:
        os.close(other)
    with locks.holding([(first, "a"), (second, "b")], "me"):
        assert locks.lock_holder(first).startswith("me")
        assert locks.lock_holder(second).startswith("me")
    assert locks.lock_holder(first) is None


def test_a_killed_holder_leaves_the_lock_free(tmp_path: Path) -> None:
    lock = tmp_path / "out.lock"
    script = (
        "import os, sys\n"
        "from spark_jobs.core import locks\n"
        f"locks.take_lock(__import__('pathlib').Path({str(lock)!r}), 0, 'busy', 'doomed')\n"
        "os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert done.returncode == -9
    assert locks.lock_holder(lock) is None  # the system released it with the process
