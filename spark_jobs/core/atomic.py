"""Publishing without half-written results: the one way to write a file and the one way to
replace a folder, so a reader (or a process killed mid-write) sees the old content or the new,
never a mix and never nothing.

- Files: :func:`atomic_file` writes into a hidden sibling and renames it over the target when
  the block ends (:func:`replace_file`, which also publishes a file staged elsewhere on the same
  filesystem). Checkpoints, stream records, model weights, params.yaml, build zips, manifests.
- Folders: :func:`replace_dir` swaps a staged folder for the target in one step where the OS can
  (Linux ``renameat2(RENAME_EXCHANGE)``); :func:`copy_dir` stages a copy and publishes it so.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any


def replace_file(staged: Path, target: Path) -> Path:
    """Make the file ``staged`` visible as ``target`` by one rename (``staged`` must be on
    ``target``'s filesystem); whatever ``target`` was is replaced whole."""
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staged, target)
    return target


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "wb") -> Iterator[IO[Any]]:
    """A file object to write ``path`` with: the bytes go to a hidden sibling, flushed to disk,
    renamed over ``path`` when the block ends without an error (and removed when it does not)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with partial.open(mode) as out:
            yield out
            out.flush()
            os.fsync(out.fileno())
        replace_file(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def write_file(path: Path, content: bytes | str) -> Path:
    """``content`` (text is written as UTF-8) at ``path``, atomically (:func:`atomic_file`)."""
    with atomic_file(path) as out:
        out.write(content.encode() if isinstance(content, str) else content)
    return Path(path)


_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directory entries in one step (Linux ``renameat2(RENAME_EXCHANGE)``); False where
    the system or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EPERM):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _remove(path: Path) -> None:
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def replace_dir(new: Path, target: Path) -> Path:
    """Make the folder ``new`` visible as ``target``: readers see the old folder or the new one,
    never a mix and never nothing (an atomic exchange where the OS offers it, else two renames).
    ``new`` must be on ``target``'s filesystem (a sibling folder); the old content is deleted."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if not (target.exists() or target.is_symlink()):
        new.rename(target)
        return target
    if _exchange(new, target):
        _remove(new)  # now the old output
        return target
    old = target.with_name(f".{target.name}.old-{uuid.uuid4().hex[:8]}")
    target.rename(old)
    new.rename(target)
    _remove(old)
    return target


def copy_dir(source: Path, target: Path, staging_root: Path, extra: dict[str, Any] | None = None) -> Path:
    """Replace ``target`` by a copy of ``source`` plus the ``extra`` files (name -> JSON document,
    record or text), copied first into ``staging_root`` (on ``target``'s filesystem)."""
    from spark_jobs.core import manifest

    staged = staging_root / f"{target.name}-{uuid.uuid4().hex[:8]}"
    staging_root.mkdir(parents=True, exist_ok=True)
    try:
        shutil.copytree(source, staged, symlinks=True)
        for name, content in (extra or {}).items():
            if isinstance(content, str):
                (staged / name).write_text(content)
            else:
                manifest.write(staged, content, name)
        return replace_dir(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)
        with contextlib.suppress(OSError):
            staging_root.rmdir()  # when no other copy is being staged there
