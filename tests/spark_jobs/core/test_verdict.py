"""What a gate says: the result's summary and manifest record, and the error a failed gate raises."""

from __future__ import annotations

from pathlib import Path

from spark_jobs.core.verdict import EXIT_GATE_FAILED, GateFailed, GateResult


def _check(batch: str, ok: bool, observed: object) -> dict:
    kwargs = {"column": "rows", "min_value": 1}
    return {
        "batch": batch,
        "expectation": "expect_column_values_to_be_between",
        "kwargs": kwargs,
        "success": ok,
        "observed": observed,
    }


def test_a_result_names_each_failed_expectation() -> None:
    result = GateResult("ingest", False, [_check("images", True, 5), _check("classes", False, 0)])
    assert [c["batch"] for c in result.failures] == ["classes"]
    assert result.summary().splitlines() == [
        "gate ingest: FAILED (2 expectations, 1 failed)",
        "  FAILED classes: expect_column_values_to_be_between {'column': 'rows', 'min_value': 1} -> 0",
    ]
    assert result.for_manifest() == {
        "success": False,
        "expectations": 2,
        "failed": ["classes: expect_column_values_to_be_between {'column': 'rows', 'min_value': 1}"],
    }
    assert (
        GateResult("score", True, [_check("p", True, 1)]).summary() == "gate score: PASSED (1 expectations, 0 failed)"
    )


def test_a_failed_gate_says_where_the_report_and_the_output_are(tmp_path: Path) -> None:
    failed = GateFailed(
        "features", tmp_path / "gates" / "summary.txt", tmp_path / "rejected" / "x", "gate features: FAILED"
    )
    text = str(failed)
    assert text.startswith("gate 'features' failed: nothing published. Report: ")
    assert str((tmp_path / "gates" / "summary.txt").absolute()) in text
    assert str((tmp_path / "rejected" / "x").absolute()) in text
    assert text.endswith("\ngate features: FAILED")
    assert (failed.stage, failed.rejected) == ("features", tmp_path / "rejected" / "x")
    assert EXIT_GATE_FAILED == 3  # what dvc repro and Airflow stop on
