"""The write-ahead checkpoint of a stream's micro-batches, without Spark."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core import checkpoint as wal
from spark_jobs.core.manifest import RecordError
from spark_jobs.core.store import SourceFile

FIX = "start over"


def _files(n: int, start: int = 0) -> list[SourceFile]:
    return [SourceFile(f"file:///inbox/{i}.png", None, 100 + i, 1000.0 + i) for i in range(start, start + n)]


def test_a_planned_batch_without_its_commit_is_run_again_after_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "_checkpoint"
    checkpoint = wal.Checkpoint(folder, FIX)
    listing = _files(5)
    assert checkpoint.new_files(listing, 2000.0, 60) == listing
    first = checkpoint.plan(listing[:2], 2000.0, "r", "p")
    checkpoint.commit(first, "published", {"scored": 2}, 2001.0)
    second = checkpoint.plan(listing[2:4], 2002.0, "r", "p")  # ... and the process dies here

    again = wal.Checkpoint(folder, FIX)
    assert again.pending == second
    assert again.pending.source_files() == listing[2:4]
    assert again.next_batch == 2
    assert again.new_files(listing, 2003.0, 60) == listing[2:]  # the pending batch's files too
    again.commit(second, "published", {}, 2004.0)
    assert wal.Checkpoint(folder, FIX).pending is None
    assert wal.Checkpoint(folder, FIX).new_files(listing, 2005.0, 60) == listing[4:]


def test_a_rejected_batch_is_retried_after_its_wait(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    listing = _files(3)
    checkpoint.commit(checkpoint.plan(listing[:2], 100.0, "r", "p"), "rejected", {}, 100.0)
    assert checkpoint.new_files(listing, 150.0, 60) == listing[2:]
    assert checkpoint.new_files(listing, 160.0, 60) == listing
    assert wal.Checkpoint(tmp_path, FIX).new_files(listing, 160.0, 60) == listing  # after a restart too


def test_a_rewritten_file_is_a_new_arrival(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    [f] = _files(1)
    checkpoint.commit(checkpoint.plan([f], 1.0, "r", "p"), "published", {}, 2.0)
    rewritten = SourceFile(f.uri, f.label, f.size, f.arrived + 5)
    assert checkpoint.new_files([f, rewritten], 3.0, 0) == [rewritten]


def test_compaction_keeps_the_checkpoint_the_size_of_the_inbox(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    for b in range(30):  # 30 batches of 10 files; only the last 20 files are still in the inbox
        checkpoint.commit(checkpoint.plan(_files(10, 10 * b), 1.0, "r", "p"), "published", {}, 2.0)
    pending = checkpoint.plan(_files(1, 300), 3.0, "r", "p")
    listing = _files(21, 280)
    checkpoint.compact(listing, 60, 4.0)
    assert sorted(int(p.stem) for p in (tmp_path / "offsets").glob("*.json")) == [30]
    assert not list((tmp_path / "commits").glob("*.json"))
    reopened = wal.Checkpoint(tmp_path, FIX)
    assert len(reopened.handled) == 20
    assert reopened.pending == pending
    assert reopened.new_files(listing, 5.0, 60) == listing[-1:]


def test_an_edited_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    checkpoint.plan(_files(1), 1.0, "r", "p")
    (tmp_path / "offsets" / "0.json").write_text('{"batch": 0}')
    with pytest.raises(RecordError, match="offsets"):
        wal.Checkpoint(tmp_path, FIX)


def test_stray_files_in_the_log_are_not_batches(tmp_path: Path, caplog) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    planned = checkpoint.plan(_files(2), 1.0, "0-run", "hour=x")
    (tmp_path / "offsets" / "._0.json").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # macOS metadata
    (tmp_path / "offsets" / "notes.json").write_text("{}")
    (tmp_path / "offsets" / "\u00b2.json").write_text("{}")  # a digit to str.isdigit, not to int()
    (tmp_path / "commits").mkdir()
    (tmp_path / "commits" / "1.json~").write_text("{}")
    with caplog.at_level("WARNING"):
        again = wal.Checkpoint(tmp_path, FIX)
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 2
    assert "3 files" in warned[1] or "3 files" in warned[0]
    assert again.pending == planned
    assert (again.pending.run_id, again.pending.partition) == ("0-run", "hour=x")
    checkpoint.compact(_files(2), 60, 2.0)
    assert (tmp_path / "offsets" / "._0.json").exists()  # not the checkpoint's: left alone


def test_the_outcome_records_the_run(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    planned = checkpoint.plan(_files(1), 1.0, "7-run", "hour=x")
    checkpoint.commit(planned, "rejected", {"files_seen": 1}, 2.0)
    record = (tmp_path / "commits" / "0.json").read_text()
    assert '"run_id": "7-run"' in record
    assert '"outcome": "rejected"' in record


def test_files_a_published_batch_left_unhandled_are_listed_again(tmp_path: Path) -> None:
    checkpoint = wal.Checkpoint(tmp_path, FIX)
    listing = _files(3)
    planned = checkpoint.plan(listing, 100.0, "r", "p")
    checkpoint.commit(planned, "published", {"files_seen": 3, "unhandled": [listing[1].uri]}, 100.0)
    for reopened in (checkpoint, wal.Checkpoint(tmp_path, FIX)):
        assert reopened.new_files(listing, 150.0, 60) == []  # waits as a rejected batch's file does
        assert reopened.new_files(listing, 160.0, 60) == [listing[1]]
