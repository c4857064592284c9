"""Publishing without half-written results: a file written in place of another, a folder swapped
for another, never a mix, never nothing, nothing left behind."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from spark_jobs.core import atomic


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "marker").write_text(text)
    return path


def test_replace_dir_never_leaves_the_target_missing(tmp_path: Path) -> None:
    target = _folder(tmp_path / "out", "0")
    missing, done = [], threading.Event()

    def watch() -> None:
        while not done.is_set():
            if not (target / "marker").exists():
                missing.append(time.monotonic())

    reader = threading.Thread(target=watch)
    reader.start()
    try:
        for i in range(1, 200):
            atomic.replace_dir(_folder(tmp_path / f"new-{i}", str(i)), target)
    finally:
        done.set()
        reader.join()
    assert (target / "marker").read_text() == "199"
    assert missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # every old copy deleted


def test_replace_dir_without_an_atomic_exchange_still_replaces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(atomic, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "out", "old")
    atomic.replace_dir(_folder(tmp_path / "new", "new"), target)
    assert (target / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_replaces_a_link_not_what_it_points_to(tmp_path: Path) -> None:
    shared = _folder(tmp_path / "shared", "shared")
    (tmp_path / "root").mkdir()
    link = tmp_path / "root" / "ingest"
    link.symlink_to(shared, target_is_directory=True)
    atomic.replace_dir(_folder(tmp_path / "root" / "new", "mine"), link)
    assert not link.is_symlink()
    assert (link / "marker").read_text() == "mine"
    assert (shared / "marker").read_text() == "shared"


def test_an_atomic_file_replaces_the_old_one_only_when_complete(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "state.json"
    atomic.write_file(path, "old")

    def killed_mid_write() -> None:
        with atomic.atomic_file(path) as out:
            out.write(b"half of the new")
            raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        killed_mid_write()
    assert path.read_text() == "old"  # the failed write left the old file whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]  # and no partial file
    atomic.write_file(path, b"new")
    assert path.read_bytes() == b"new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.json"]


def test_replace_file_publishes_a_staged_file_into_a_new_folder(tmp_path: Path) -> None:
    staged = tmp_path / "staging" / "part.parquet"
    staged.parent.mkdir()
    staged.write_bytes(b"rows")
    target = atomic.replace_file(staged, tmp_path / "table" / "hour=x" / "part.parquet")
    assert target.read_bytes() == b"rows"
    assert not staged.exists()


def test_copy_dir_copies_with_extra_files(tmp_path: Path) -> None:
    source = _folder(tmp_path / "model", "weights")
    target = _folder(tmp_path / "champion" / "classifier", "old")
    atomic.copy_dir(source, target, tmp_path / ".staging", {"promotion.json": {"v": 1}, "note.txt": "hi\n"})
    assert (target / "marker").read_text() == "weights"
    assert (target / "note.txt").read_text() == "hi\n"
    assert '"v": 1' in (target / "promotion.json").read_text()
    assert not (tmp_path / ".staging").exists()  # nothing else was being staged there
