"""Great Expectations validating a stage's summary tables: the verdict, and the report only when asked."""

from __future__ import annotations

from pathlib import Path

import great_expectations.expectations as gxe
import pandas as pd

from spark_jobs.quality import gate


def _batches(rows: int) -> list[gate.Batch]:
    table = pd.DataFrame([{"rows": rows, "null_id": 0}])
    checks = [
        gxe.ExpectColumnValuesToBeBetween(column="rows", min_value=1),
        gxe.ExpectColumnValuesToBeBetween(column="null_id", min_value=0, max_value=0),
    ]
    return [gate.Batch("summary", table, checks)]


def test_a_passing_suite_writes_its_report_when_given_a_folder(tmp_path: Path) -> None:
    result = gate.validate("demo", _batches(5), tmp_path / "gates")
    assert result.success
    assert len(result.checks) == 2
    assert result.docs == tmp_path / "gates" / "docs" / "index.html"
    assert result.docs.exists()
    assert 'href="../report.html">This gate' in result.docs.read_text()  # the docs lead to the report page
    assert result.page == tmp_path / "gates" / "report.html"
    assert (tmp_path / "gates" / "summary.txt").read_text().startswith("gate demo: PASSED (2 expectations, 0 failed)")
    assert (tmp_path / "gates" / "validation.json").exists()


def test_a_failing_suite_names_the_check_and_its_observed_value(tmp_path: Path) -> None:
    batches = _batches(0)
    quiet = gate.validate("demo", batches, None)  # no report at all
    assert not quiet.success
    assert quiet.docs is None
    assert not list(tmp_path.iterdir())
    loud = gate.validate("demo", batches, tmp_path / "r")  # the same batches validated again
    assert [c["kwargs"]["column"] for c in loud.failures] == ["rows"]
    assert "FAILED summary: expect_column_values_to_be_between" in (tmp_path / "r" / "summary.txt").read_text()
