"""The stage runner: one atomic publish, phase timings, rejection of a failed gate, the
append-a-run publish in its order, and the task metrics read from an event log."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from spark_jobs.core import locks, manifest, runner
from spark_jobs.core.verdict import GateFailed, GateResult


def _folder(path: Path, text: str) -> Path:
    path.mkdir(parents=True)
    (path / "marker").write_text(text)
    return path


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
        with pytest.raises(locks.OutputBusy, match=rf"{target} is being written by another ingest run \(run "):
            second.__enter__()
        assert 0.5 <= time.monotonic() - started < 5
        assert first.staging.is_dir()  # the waiting run touched nothing
        other = runner.StageRun("features", tmp_path / "data", None, tmp_path / "data" / "features", lock_wait=0)
        with other:  # another output: not blocked
            pass
    with runner.StageRun("ingest", tmp_path / "data", None, target, lock_wait=0) as third:
        assert third.staging.is_dir()


def _gate(calls: list) -> object:
    """A gate that passes a suite of ``["ok"]`` and fails any other, writing a report when asked."""

    def validate(stage: str, batches: list, report_dir: Path | None, exhibits: object = None) -> GateResult:
        calls.append((stage, list(batches), report_dir))
        result = _result(list(batches) == ["ok"])
        if report_dir is not None:
            report_dir.mkdir(parents=True, exist_ok=True)
            (report_dir / "summary.txt").write_text(result.summary())
            result.docs = report_dir / "summary.txt"
        return result

    return validate


def test_the_gate_comes_in_as_an_argument(tmp_path: Path) -> None:
    calls: list = []
    with runner.StageRun("x", tmp_path, None, tmp_path / "out", gate=_gate(calls)) as run:
        assert run.validate(["ok"]).success
        assert calls == [("x", ["ok"], tmp_path / "gates" / "x")]
        calls.clear()
        assert run.validate(["ok"], docs="on_failure").success
        assert calls == [("x", ["ok"], None)]  # passed: no report written
        calls.clear()
        assert not run.validate(["bad"], docs="on_failure").success
        assert [c[2] for c in calls] == [None, tmp_path / "gates" / "x"]  # failed: validated again with the report
    with runner.StageRun("y", tmp_path, None, tmp_path / "other") as run, pytest.raises(TypeError, match="no gate"):
        run.validate(["ok"])


def test_finish_files_puts_staged_files_in_their_tables_with_the_manifest(tmp_path: Path) -> None:
    root = tmp_path / "data"
    table = root / "stream" / "predictions"
    with runner.StageRun("s", root, None, table, name="batch", run_id="4-r", gate=_gate([])) as run:
        assert run.staging == root / "stream" / ".staging" / "batch-4-r"
        for name in ("q/part.parquet", "p/part.parquet"):
            (run.staging / name).parent.mkdir()
            (run.staging / name).write_text(name)
        doc = run.manifest({}, {"files": ["a"]}, {"rows": 1}, _result(True))
        targets = [root / "stream" / "quarantine" / "h" / "part.parquet", table / "h" / "part.parquet"]
        manifest_at = table / "h" / "_manifest-4-r.json"
        out = run.finish_files(
            _result(True),
            doc,
            [("q/part.parquet", targets[0]), ("p/part.parquet", targets[1]), ("x", tmp_path / "x")],
            manifest_at,
        )
    assert out == [*targets, None]
    assert [t.read_text() for t in targets] == ["q/part.parquet", "p/part.parquet"]
    written = manifest.read_record(manifest_at, manifest.Manifest, "manifest", "")
    assert (written.run_id, written.inputs) == ("4-r", {"files": ["a"]})
    assert written.timings is not None
    assert not run.staging.exists()


def test_a_rejected_run_carries_its_own_report(tmp_path: Path) -> None:
    root = tmp_path / "data"
    table = root / "stream" / "predictions"
    run = runner.StageRun("s", root, None, table, name="batch", run_id="5-r", gate=_gate([]), report_with_output=True)
    with run:
        (run.staging / "p").mkdir()
        (run.staging / "p" / "part.parquet").write_text("rows")
        result = run.validate(["bad"], docs="on_failure")
        doc = run.manifest({}, {}, {}, result)
        with pytest.raises(GateFailed) as failure:
            run.finish_files(result, doc, [("p/part.parquet", table / "part.parquet")], table / "_m.json")
    assert not table.exists()  # nothing published, not even the manifest
    assert run.rejected == root / "rejected" / "s-5-r"
    assert failure.value.report == run.rejected / "gate" / "summary.txt"  # where the report went with it
    assert failure.value.report.read_text().startswith("gate x: FAILED")
    assert (run.rejected / "p" / "part.parquet").read_text() == "rows"
    assert manifest.read_json(run.rejected)["gate"]["success"] is False


def test_the_published_folder_keeps_the_ignore_file_dvc_keeps_in_it(tmp_path: Path) -> None:
    """DVC lists a folder's cached outputs in its ``.gitignore`` (``reports/.gitignore``: ``/figures``):
    publishing a new folder in its place keeps that file."""
    target = _folder(tmp_path / "reports", "old")
    (target / ".gitignore").write_text("/figures\n")
    with runner.StageRun("x", tmp_path / "data", None, target) as run:
        (run.staging / "metrics.json").write_text("{}")
        run.finish(None, run.manifest({}, {}, {}, None))
    assert (target / ".gitignore").read_text() == "/figures\n"
    assert (target / "metrics.json").exists()
    assert not (target / "marker").exists()
