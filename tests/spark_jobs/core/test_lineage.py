"""OpenLineage events of the stage runner's runs: START, COMPLETE with inputs and outputs, FAIL
for a failed gate or an error, ABORT for a run that ends otherwise and for a killed run found by
the next one; every event valid for the installed client's spec; and lineage that cannot be sent
never fails a run."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from spark_jobs.core import lineage, manifest, runner
from spark_jobs.core.verdict import GateFailed, GateResult
from tests.openlineage_events import of_job, problems, read_events


@pytest.fixture(autouse=True)
def _own_transport(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No user configuration of OpenLineage: the events go to data.root/lineage/. The client
    copies ``OPENLINEAGE_URL`` into ``OPENLINEAGE__TRANSPORT__*`` variables of the process itself:
    every such variable a test leaves is removed, or later tests' stages would inherit it."""
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)  # no openlineage.yml here
    yield
    for key in [k for k in os.environ if k.startswith("OPENLINEAGE")]:
        del os.environ[key]


def _gate(success: bool) -> GateResult:
    checks = [{"batch": "rows", "expectation": "expect_column_values_to_be_between", "kwargs": {"column": "n"}}]
    checks[0] |= {"success": success, "observed": {}}
    return GateResult("x", success, checks, raw=[{"success": success}])


def _stage(root: Path, result: GateResult | None, **kwargs: object) -> runner.StageRun:
    with runner.StageRun("x", root, None, root / "x", params={"p": 1}, **kwargs) as run:
        run.lineage.reads(root / "source", "s3://bucket/images/")
        (root / "champion").mkdir(exist_ok=True)
        run.lineage.writes(root / "champion")  # published by the stage itself
        pq.write_table(pa.table({"n": [1, 2, 3], "uri": ["a", "b", "c"]}), run.staging / "part-0.parquet")
        run.finish(result, run.manifest({"p": 1}, {}, {"rows": 3}, result))
    return run


def test_parent_ids_parse_as_the_providers_macros_write_them() -> None:
    parent = manifest.Parent.parse("airflow/image_training.ingest/0192f2c6-6a2b-7e55-a3c1-2c9a0f3b7d10")
    assert parent is not None
    assert (parent.namespace, parent.job) == ("airflow", "image_training.ingest")
    assert parent.run_id == "0192f2c6-6a2b-7e55-a3c1-2c9a0f3b7d10"
    assert manifest.Parent.parse("a/b/c/d").job == "b/c"
    for bad in (None, "", "only/two", "a//c"):
        assert manifest.Parent.parse(bad) is None


def test_a_run_id_gives_one_uuid_ordered_by_its_time() -> None:
    first, again = lineage.run_uuid("20261207T070000Z-aaaa1111"), lineage.run_uuid("20261207T070000Z-aaaa1111")
    later = lineage.run_uuid("20261207T070001Z-aaaa1111")
    assert first == again
    assert uuid.UUID(first).version == 7
    assert later > first
    assert lineage.run_uuid("3-20261207T070000Z-bbbb2222") != first  # a micro-batch's id: its time is inside


def test_datasets_are_named_per_the_naming_spec(tmp_path: Path) -> None:
    assert lineage.dataset_name("s3://bucket/inbox/day=1/") == ("s3://bucket", "inbox/day=1")
    assert lineage.dataset_name(tmp_path / "data") == ("file", str(tmp_path / "data"))
    assert lineage.dataset_name((tmp_path / "d").as_uri()) == ("file", str(tmp_path / "d"))
    part = tmp_path / "stream" / "predictions" / "hour=2026-12-07T07" / "part-1.parquet"
    assert lineage.table_of(part) == tmp_path / "stream" / "predictions"


def test_a_published_run_sends_start_and_complete_with_its_datasets(tmp_path: Path) -> None:
    run = _stage(tmp_path, _gate(True))
    events = read_events(tmp_path / lineage.FOLDER)
    assert [e["eventType"] for e in events] == ["START", "COMPLETE"]
    assert all(problems(e) == [] for e in events), [problems(e) for e in events]
    start, complete = events
    record = manifest.read(tmp_path / "x").lineage
    assert record is not None
    assert start["run"]["runId"] == complete["run"]["runId"] == record.run_id == lineage.run_uuid(run.run_id)
    assert {(d["namespace"], d["name"]) for d in complete["inputs"]} == {
        ("file", str(tmp_path / "source")),
        ("s3://bucket", "images"),
    }
    out, champion = complete["outputs"]
    assert (out["namespace"], out["name"]) == ("file", str(tmp_path / "x"))
    assert champion["name"] == str(tmp_path / "champion")
    assert [f["name"] for f in out["facets"]["schema"]["fields"]] == ["n", "uri"]
    assert out["outputFacets"]["outputStatistics"]["rowCount"] == 3
    [check] = out["facets"]["dataQualityAssertions"]["assertions"]
    assert (check["success"], check["column"]) == (True, "n")
    facts = complete["run"]["facets"][lineage.FACET]
    assert (facts["stage"], facts["run_id"]) == ("x", run.run_id)
    assert facts["params_hash"] == manifest.read(tmp_path / "x").params_hash
    assert complete["run"]["facets"]["processing_engine"]["name"] == "python"


def test_a_failed_gate_sends_fail_with_the_verdict(tmp_path: Path) -> None:
    with pytest.raises(GateFailed):
        _stage(tmp_path, _gate(False))
    _, fail = read_events(tmp_path / lineage.FOLDER)
    assert fail["eventType"] == "FAIL"
    assert problems(fail) == []
    assert "FAILED" in fail["run"]["facets"]["errorMessage"]["message"]
    assert fail["outputs"][0]["facets"]["dataQualityAssertions"]["assertions"][0]["success"] is False


def test_an_error_sends_fail_and_an_end_without_publishing_sends_abort(tmp_path: Path) -> None:
    with pytest.raises(KeyError), runner.StageRun("x", tmp_path, None, tmp_path / "x"):
        raise KeyError("no such column")
    with runner.StageRun("y", tmp_path, None, tmp_path / "y"):
        pass  # nothing new to do: nothing published
    events = read_events(tmp_path / lineage.FOLDER)
    [fail] = of_job(events, "x", "FAIL")
    assert fail["run"]["facets"]["errorMessage"]["message"] == "KeyError: 'no such column'"
    assert "Traceback" in fail["run"]["facets"]["errorMessage"]["stackTrace"]
    assert [e["eventType"] for e in of_job(events, "y")] == ["START", "ABORT"]
    assert "without publishing" in of_job(events, "y", "ABORT")[0]["run"]["facets"][lineage.FACET]["note"]
    assert all(problems(e) == [] for e in events)


def test_a_killed_run_is_closed_by_the_next_run_of_its_output(tmp_path: Path) -> None:
    killed = runner.StageRun("x", tmp_path, None, tmp_path / "x")
    killed.__enter__()  # START sent, then the process dies: its lock goes with it, its staging folder stays
    killed._unlock()
    run = _stage(tmp_path, None)
    events = read_events(tmp_path / lineage.FOLDER)
    ended = {e["run"]["runId"]: e["eventType"] for e in events if e["eventType"] != "START"}
    assert ended == {lineage.run_uuid(killed.run_id): "ABORT", lineage.run_uuid(run.run_id): "COMPLETE"}
    [abort] = of_job(events, "x", "ABORT")
    assert abort["run"]["facets"][lineage.FACET]["run_id"] == killed.run_id
    assert run.run_id in abort["run"]["facets"][lineage.FACET]["note"]
    assert problems(abort) == []


def test_the_parent_run_comes_from_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task, dag = str(uuid.uuid4()), str(uuid.uuid4())
    monkeypatch.setenv(lineage.PARENT_ENV, f"airflow/training.ingest/{task}")
    monkeypatch.setenv(lineage.ROOT_PARENT_ENV, f"airflow/training/{dag}")
    _stage(tmp_path, None)
    for event in read_events(tmp_path / lineage.FOLDER):
        parent = event["run"]["facets"]["parent"]
        assert (parent["job"]["name"], parent["run"]["runId"]) == ("training.ingest", task)
        assert (parent["root"]["job"]["name"], parent["root"]["run"]["runId"]) == ("training", dag)
        assert problems(event) == []
    assert manifest.read(tmp_path / "x").lineage.parent.run_id == task


def test_an_unreachable_lineage_server_costs_one_line_and_never_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("OPENLINEAGE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OPENLINEAGE__TRANSPORT__RETRY__TOTAL", "0")
    with caplog.at_level(logging.WARNING, logger="spark_jobs.core.lineage"):
        _stage(tmp_path, _gate(True))
    assert (tmp_path / "x" / "part-0.parquet").exists()
    lines = [r.getMessage() for r in caplog.records if r.name == "spark_jobs.core.lineage"]
    assert len(lines) == 1, lines
    assert "START" in lines[0]
    assert "\n" not in lines[0]
    assert not (tmp_path / lineage.FOLDER).exists()  # the user's transport, not ours


def test_the_checker_refuses_what_the_spec_does_not_allow(tmp_path: Path) -> None:
    _stage(tmp_path, None)
    good = read_events(tmp_path / lineage.FOLDER)[-1]
    assert problems(good) == []
    broken = {**good, "run": {**good["run"], "runId": "20261207T070000Z-aaaa1111"}}
    assert any("runId" in p or "UUID" in p for p in problems(broken))
    assert problems({k: v for k, v in good.items() if k != "job"}) == ["event: required 'job' missing"]
    facets = {**good["run"]["facets"], "processing_engine": {"_schemaURL": "https://example.com/x.json"}}
    assert problems({**good, "run": {**good["run"], "facets": facets}})
    assert problems({**good, "eventType": "DONE"})
    assert problems({**good, "extra": 1}) == ["event: keys the spec does not have: ['extra']"]
