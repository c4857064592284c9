"""The stage runner: one atomic publish, phase timings, rejection of a failed gate, the
append-a-run publish in its order, and the task metrics read from an event log."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from spark_jobs.core import manifest, runner
from spark_jobs.core.session import summarise_events
from spark_jobs.quality.gate import GateFailed, GateResult


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
            runner.replace_dir(_folder(tmp_path / f"new-{i}", str(i)), target)
    finally:
        done.set()
        reader.join()
    assert (target / "marker").read_text() == "199"
    assert missing == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # every old copy deleted


def test_replace_dir_without_an_atomic_exchange_still_replaces(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(runner, "_exchange", lambda a, b: False)
    target = _folder(tmp_path / "out", "old")
    runner.replace_dir(_folder(tmp_path / "new", "new"), target)
    assert (target / "marker").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_replace_dir_replaces_a_link_not_what_it_points_to(tmp_path: Path) -> None:
    shared = _folder(tmp_path / "shared", "shared")
    (tmp_path / "root").mkdir()
    link = tmp_path / "root" / "ingest"
    link.symlink_to(shared, target_is_directory=True)
    runner.replace_dir(_folder(tmp_path / "root" / "new", "mine"), link)
    assert not link.is_symlink()
    assert (link / "marker").read_text() == "mine"
    assert (shared / "marker").read_text() == "shared"


def test_phases_add_up_and_the_total_covers_them(tmp_path: Path) -> None:
    with runner.StageRun("sample", tmp_path, None, tmp_path / "out") as run:
        assert run.staging.is_dir()
        for _ in range(2):
            with run.phase("work"):
                time.sleep(0.05)
        with pytest.raises(ValueError, match="unknown phase"), run.phase("warmup"):
            pass
        timings = run.timings()
    assert timings["work_s"] >= 0.1
    assert timings["total_s"] >= timings["work_s"]
    assert timings["startup_s"] is None  # not started by jobs.run_stage
    assert not run.staging.exists()  # never published: the staging folder does not outlive the run


def test_a_launched_run_counts_from_the_process_start(tmp_path: Path) -> None:
    started = runner.process_started()
    assert started <= time.time()
    with runner.launched(started - 5.0, started - 2.0), runner.StageRun("x", tmp_path, None, tmp_path / "o") as run:
        timings = run.timings()
    assert timings["startup_s"] == pytest.approx(3.0)
    assert timings["total_s"] >= 5.0


def _result(success: bool) -> GateResult:
    checks = [{"batch": "b", "expectation": "e", "kwargs": {}, "success": success, "observed": {}}]
    return GateResult("x", success, checks, raw=[{"success": success}])


def test_finish_publishes_the_staging_folder_with_its_manifest(tmp_path: Path) -> None:
    target = _folder(tmp_path / "data" / "x", "old")
    with runner.StageRun("x", tmp_path / "data", None, target) as run:
        with run.phase("work"):
            (run.staging / "table").write_text("new")
        doc = run.manifest({"p": 1}, {"in": "put"}, {"rows": 1}, _result(True))
        assert run.finish(_result(True), doc) == target
    assert (target / "table").read_text() == "new"
    assert not (target / "marker").exists()
    written = manifest.read_json(target)
    assert written["run_id"] == run.run_id
    assert written["gate"]["success"] is True
    assert written["timings"]["publish_s"] >= 0
    assert json.loads((target / runner.VALIDATION).read_text()) == [{"success": True}]


def test_a_failed_gate_publishes_nothing_and_keeps_the_output(tmp_path: Path) -> None:
    target = _folder(tmp_path / "data" / "x", "old")
    with runner.StageRun("x", tmp_path / "data", None, target) as run:
        (run.staging / "table").write_text("bad")
        doc = run.manifest({}, {}, {}, _result(False))
        with pytest.raises(GateFailed) as failure:
            run.finish(_result(False), doc)
    assert (target / "marker").read_text() == "old"
    assert (run.rejected / "table").read_text() == "bad"
    assert manifest.read_json(run.rejected)["gate"]["success"] is False
    assert str(run.rejected.absolute()) in str(failure.value)


def test_finish_append_publishes_runs_in_order(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with runner.StageRun("score", root, None, root / "predictions", name="score") as run:
        assert run.staging.name.startswith("score-")
        (run.staging / "predictions").mkdir()
        (run.staging / "quarantine").mkdir()
        doc = run.manifest({}, {}, {}, _result(True))
        first, second, third = run.finish_append(
            _result(True),
            doc,
            [("predictions", root / "predictions"), ("quarantine", root / "q"), ("absent", root / "none")],
            "2026-12-02",
        )
    assert first == root / "predictions" / "run_date=2026-12-02" / f"run_id={run.run_id}"
    assert manifest.read_json(first)["run_id"] == run.run_id  # the first part carries the manifest
    assert second is not None
    assert second.parent.parent == root / "q"
    assert not (second / manifest.MANIFEST).exists()
    assert third is None


def test_finish_append_after_a_failed_gate_publishes_no_part(tmp_path: Path) -> None:
    root = tmp_path / "data"
    with runner.StageRun("score", root, None, root / "predictions") as run:
        (run.staging / "predictions").mkdir()
        doc = run.manifest({}, {}, {}, _result(False))
        with pytest.raises(GateFailed):
            run.finish_append(_result(False), doc, [("predictions", root / "predictions")], "d")
    assert not (root / "predictions").exists()
    assert (run.rejected / "predictions").is_dir()


def _event(kind: str, **fields: object) -> bytes:
    return json.dumps({"Event": kind, **fields}, separators=(",", ":")).encode() + b"\n"


def _task(stage: int, run_ms: int, peak: int, deserialize: int = 3) -> bytes:
    metrics = {
        "Executor Run Time": run_ms,
        "Executor CPU Time": run_ms * 500_000,  # ns
        "Executor Deserialize Time": deserialize,
        "JVM GC Time": 1,
        "Result Serialization Time": 0,
        "Peak Execution Memory": peak,
        "Shuffle Read Metrics": {"Remote Bytes Read": 5, "Local Bytes Read": 7},
        "Shuffle Write Metrics": {"Shuffle Bytes Written": 11},
    }
    return _event("SparkListenerTaskEnd", **{"Stage ID": stage, "Stage Attempt ID": 0, "Task Metrics": metrics})


def test_task_metrics_sum_the_run_s_stages_only() -> None:
    lines = [
        _event(
            "SparkListenerJobStart", **{"Job ID": 0, "Stage IDs": [0, 1], "Properties": {"spark.jobGroup.id": "me"}}
        ),
        _event(
            "SparkListenerJobStart", **{"Job ID": 1, "Stage IDs": [2], "Properties": {"spark.jobGroup.id": "other"}}
        ),
        _task(0, 100, 10),
        _task(0, 50, 30),
        _task(1, 20, 20),
        _task(2, 999, 999),  # another run's job
        _event(
            "SparkListenerStageCompleted",
            **{"Stage Info": {"Stage ID": 0, "Stage Attempt ID": 0, "Stage Name": "decode"}},
        ),
        b'{"Event":"SparkListenerEnvironmentUpdate","x":1}\n',
    ]
    metrics = summarise_events(lines, "me")
    total = metrics["total"]
    assert total["tasks"] == 3
    assert total["executor_run_time_ms"] == 170
    assert total["executor_cpu_time_ms"] == 85  # ns -> ms
    assert total["executor_deserialize_time_ms"] == 9
    assert (total["shuffle_read_bytes"], total["shuffle_local_read_bytes"], total["shuffle_write_bytes"]) == (
        15,
        21,
        33,
    )
    assert total["peak_execution_memory_bytes"] == 30  # a peak is the largest, not a sum
    assert [(s["stage_id"], s["name"], s["tasks"]) for s in metrics["stages"]] == [(0, "decode", 2), (1, "", 1)]
    assert summarise_events(lines, "nobody") == {"total": {k: 0 for k in total}, "stages": []}


def test_exit_process_runs_the_exit_handlers_joins_threads_and_keeps_the_code(tmp_path: Path) -> None:
    import subprocess
    import sys

    script = (
        "import atexit, threading, time\n"
        "from spark_jobs.core.jobs import exit_process\n"
        "atexit.register(lambda: print('handler ran', flush=True))\n"
        "threading.Thread(target=lambda: (time.sleep(0.3), print('thread done'))).start()\n"
        "print('buffered', end='')\n"
        "exit_process(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "bufferedthread done\nhandler ran\n"


def test_one_run_at_a_time_per_output_and_dead_staging_is_cleaned(tmp_path: Path) -> None:
    target = tmp_path / "data" / "ingest"
    dead = target.parent / runner.STAGING / "ingest-20260101T000000Z-deadbeef"
    dead.mkdir(parents=True)  # what a killed run leaves
    first = runner.StageRun("ingest", tmp_path / "data", None, target, lock_wait=5)
    with first:
        assert not dead.exists()
        assert first.staging.is_dir()
        second = runner.StageRun("ingest", tmp_path / "data", None, target, lock_wait=0.5)
        started = time.monotonic()
        with pytest.raises(runner.OutputBusy, match=rf"{target} is being written by another ingest run \(run "):
            second.__enter__()
        assert 0.5 <= time.monotonic() - started < 5
        assert first.staging.is_dir()  # the waiting run touched nothing
        other = runner.StageRun("features", tmp_path / "data", None, tmp_path / "data" / "features", lock_wait=0)
        with other:  # another output: not blocked
            pass
    with runner.StageRun("ingest", tmp_path / "data", None, target, lock_wait=0) as third:
        assert third.staging.is_dir()
