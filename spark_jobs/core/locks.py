"""Exclusive locks on outputs (``fcntl.flock``): one run at a time per output, released however
the holder ends. A lock file names who holds it, so a refused run can say."""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator, Sequence
from pathlib import Path


class OutputBusy(RuntimeError):
    """Another run holds the output's lock; this one waited and gave up."""


def _open_lock(lock_file: Path) -> int:
    """A descriptor of ``lock_file`` (made if need be); read-only when another user made it in a
    shared folder (the host's inbox locks): ``flock`` works on either."""
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    cloexec = getattr(os, "O_CLOEXEC", 0)
    try:
        return os.open(lock_file, os.O_RDWR | os.O_CREAT | cloexec, 0o644)
    except PermissionError:
        return os.open(lock_file, os.O_RDONLY | cloexec)


def _holder(fd: int) -> str:
    return os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"


def take_lock(lock_file: Path, wait: float, busy: str, holder: str) -> int:
    """An exclusive ``fcntl.flock`` on ``lock_file`` (its descriptor: closing it releases the
    lock, and so does the process's end, however it ends), waiting up to ``wait`` seconds; then
    :class:`OutputBusy` saying ``busy`` and who holds it. The file then names ``holder``."""
    import fcntl

    fd = _open_lock(lock_file)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                held_by = _holder(fd)
                os.close(fd)
                raise OutputBusy(f"{busy} ({held_by}); waited {wait:g} s (data.lock_wait_s): try again later") from None
            time.sleep(0.2)
    with contextlib.suppress(OSError):  # a read-only descriptor: the lock holds, unnamed
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{holder}, pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
    return fd


@contextlib.contextmanager
def holding(locks: Sequence[tuple[Path, str]], holder: str, wait: float = 0.0) -> Iterator[None]:
    """Hold every ``(lock file, what to say when it is busy)`` of ``locks`` for the block, taken
    in order (those already taken are released when a later one is busy)."""
    held: list[int] = []
    try:
        for lock_file, busy in locks:
            held.append(take_lock(lock_file, wait, busy, holder))
        yield
    finally:
        for fd in held:
            os.close(fd)


def lock_holder(lock_file: Path) -> str | None:
    """Who holds ``lock_file`` now (what the holder wrote in it), or None when nobody does."""
    import fcntl

    if not lock_file.exists():
        return None
    fd = _open_lock(lock_file)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return _holder(fd)
    finally:
        os.close(fd)
    return None
