"""A stream's rolling window, its progress and status file, without Spark."""

from __future__ import annotations

from pathlib import Path

from spark_jobs.quality.suites import Volume
from spark_jobs.scoring.status import Progress, RollingWindow, percentiles, read_status


def test_the_rolling_window_holds_the_last_rows() -> None:
    window = RollingWindow(4)
    assert window.with_batch(["a", "b"], [True, False]) == Volume(2, 1, {"a": 1, "b": 1})
    window.add(["a", "b", "a"], [True, False, True])
    assert window.with_batch(["c", "c"], [False, False]) == Volume(4, 1, {"b": 1, "a": 1, "c": 2})
    assert window.with_batch(list("ccccc"), [True] * 5) == Volume(4, 4, {"c": 4})
    window.add(list("dddd"), [False] * 4)
    assert window.with_batch([], []) == Volume(4, 0, {"d": 4})


def test_status_reports_latency_percentiles_of_the_last_batches(tmp_path: Path) -> None:
    progress = Progress("file:///inbox", batches=2)
    progress.batch({"batch": 0}, [10.0, 10.0], {"score": 1.0})
    progress.batch({"batch": 1}, [1.0, 2.0], {"score": 0.5})
    progress.batch({"batch": 2}, [3.0, 4.0], {"score": 0.7})  # batch 0 has left the window
    progress.counts["batches"] = 3
    status = progress.write(tmp_path, "v1", "running")
    assert read_status(tmp_path) == status
    assert status.latency_s == {"p50": 2.5, "p95": 3.85, "max": 4.0}
    assert status.batch_seconds == {"score": 0.6}
    assert status.last_batch == {"batch": 2, "seconds": {"score": 0.7}}


def test_a_rejected_batch_counts_as_a_failure_without_latency(tmp_path: Path) -> None:
    progress = Progress("file:///inbox", batches=5)
    progress.count(0, "published", {"files_seen": 3, "scored": 3, "quarantined": 0}, [1.0, 2.0, 3.0], {"work": 1.0})
    progress.count(1, "rejected", {"files_seen": 2, "scored": 2, "quarantined": 1}, [9.0, 9.0], {"work": 2.0})
    status = progress.write(tmp_path, "v1", "running")
    assert (status.batches, status.files_seen, status.scored, status.quarantined) == (2, 5, 3, 0)
    assert (status.rejected_batches, status.rejected_files, status.failures) == (1, 2, 1)
    assert status.latency_s == percentiles([1.0, 2.0, 3.0])  # a rejected batch's files are not visible
    assert status.last_batch["batch"] == 1
    assert status.last_batch["outcome"] == "rejected"


def test_percentiles_of_nothing_are_none() -> None:
    assert percentiles([]) == {"p50": None, "p95": None, "max": None}
    assert percentiles([2.0]) == {"p50": 2.0, "p95": 2.0, "max": 2.0}
