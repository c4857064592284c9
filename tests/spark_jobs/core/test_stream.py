"""The stream's checkpoint, rolling window and status, without Spark."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core import stream
from spark_jobs.core.manifest import RecordError
from spark_jobs.core.store import SourceFile


def _files(n: int, start: int = 0) -> list[SourceFile]:
    return [SourceFile(f"file:///inbox/{i}.png", None, 100 + i, 1000.0 + i) for i in range(start, start + n)]


def test_a_planned_batch_without_its_commit_is_run_again_after_a_restart(tmp_path: Path) -> None:
    folder = tmp_path / "_checkpoint"
    checkpoint = stream.Checkpoint(folder)
    listing = _files(5)
    assert checkpoint.new_files(listing, 2000.0, 60) == listing
    first = checkpoint.plan(listing[:2], 2000.0, "v1")
    checkpoint.commit(first, "published", {"scored": 2}, 2001.0)
    second = checkpoint.plan(listing[2:4], 2002.0, "v1")  # ... and the process dies here

    again = stream.Checkpoint(folder)
    assert again.pending == second
    assert again.pending.source_files() == listing[2:4]
    assert again.next_batch == 2
    assert again.new_files(listing, 2003.0, 60) == listing[2:]  # the pending batch's files too
    again.commit(second, "published", {}, 2004.0)
    assert stream.Checkpoint(folder).pending is None
    assert stream.Checkpoint(folder).new_files(listing, 2005.0, 60) == listing[4:]


def test_a_rejected_batch_is_retried_after_its_wait(tmp_path: Path) -> None:
    checkpoint = stream.Checkpoint(tmp_path)
    listing = _files(3)
    checkpoint.commit(checkpoint.plan(listing[:2], 100.0, "v1"), "rejected", {}, 100.0)
    assert checkpoint.new_files(listing, 150.0, 60) == listing[2:]
    assert checkpoint.new_files(listing, 160.0, 60) == listing
    assert stream.Checkpoint(tmp_path).new_files(listing, 160.0, 60) == listing  # after a restart too


def test_a_rewritten_file_is_a_new_arrival(tmp_path: Path) -> None:
    checkpoint = stream.Checkpoint(tmp_path)
    [f] = _files(1)
    checkpoint.commit(checkpoint.plan([f], 1.0, "v1"), "published", {}, 2.0)
    rewritten = SourceFile(f.uri, f.label, f.size, f.arrived + 5)
    assert checkpoint.new_files([f, rewritten], 3.0, 0) == [rewritten]


def test_compaction_keeps_the_checkpoint_the_size_of_the_inbox(tmp_path: Path) -> None:
    checkpoint = stream.Checkpoint(tmp_path)
    for b in range(30):  # 30 batches of 10 files; only the last 20 files are still in the inbox
        checkpoint.commit(checkpoint.plan(_files(10, 10 * b), 1.0, "v1"), "published", {}, 2.0)
    pending = checkpoint.plan(_files(1, 300), 3.0, "v1")
    listing = _files(21, 280)
    checkpoint.compact(listing, 60, 4.0)
    assert sorted(int(p.stem) for p in (tmp_path / "offsets").glob("*.json")) == [30]
    assert not list((tmp_path / "commits").glob("*.json"))
    reopened = stream.Checkpoint(tmp_path)
    assert len(reopened.handled) == 20
    assert reopened.pending == pending
    assert reopened.new_files(listing, 5.0, 60) == listing[-1:]


def test_an_edited_checkpoint_is_refused_in_one_line(tmp_path: Path) -> None:
    checkpoint = stream.Checkpoint(tmp_path)
    checkpoint.plan(_files(1), 1.0, "v1")
    (tmp_path / "offsets" / "0.json").write_text('{"batch": 0}')
    with pytest.raises(RecordError, match="offsets"):
        stream.Checkpoint(tmp_path)


def test_the_rolling_window_holds_the_last_rows() -> None:
    window = stream.RollingWindow(4)
    assert window.with_batch(["a", "b"], [True, False]) == (2, 1, {"a": 1, "b": 1})
    window.add(["a", "b", "a"], [True, False, True])
    assert window.with_batch(["c", "c"], [False, False]) == (4, 1, {"b": 1, "a": 1, "c": 2})
    assert window.with_batch(list("ccccc"), [True] * 5) == (4, 4, {"c": 4})
    window.add(list("dddd"), [False] * 4)
    assert window.with_batch([], []) == (4, 0, {"d": 4})


def test_status_reports_latency_percentiles_of_the_last_batches(tmp_path: Path) -> None:
    progress = stream.Progress("file:///inbox", batches=2)
    progress.batch({"batch": 0}, [10.0, 10.0], {"score": 1.0})
    progress.batch({"batch": 1}, [1.0, 2.0], {"score": 0.5})
    progress.batch({"batch": 2}, [3.0, 4.0], {"score": 0.7})  # batch 0 has left the window
    progress.counts["batches"] = 3
    status = progress.write(tmp_path, "v1", "running")
    assert stream.read_status(tmp_path) == status
    assert status.latency_s == {"p50": 2.5, "p95": 3.85, "max": 4.0}
    assert status.batch_seconds == {"score": 0.6}
    assert status.last_batch == {"batch": 2, "seconds": {"score": 0.7}}


def test_hour_partitions_of_the_lookup() -> None:
    assert stream.hour_of(0) == "hour=1970-01-01T00"
    assert stream.recent_hours(7200.0, 2) == {"hour=1970-01-01T00", "hour=1970-01-01T01", "hour=1970-01-01T02"}
