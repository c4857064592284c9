"""A scoring pass in Spark, on small frames: the prediction columns, the stamp, the unusable files
and the copies of one content left out."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from spark_jobs.core import manifest
from spark_jobs.core.tables import QUARANTINE_COLUMNS
from spark_jobs.scoring import heads, predict, scan, tables
from spark_jobs.scoring.model import Scorer
from tests.factories import REPO, model_card

pytestmark = pytest.mark.spark


def _scanned(spark, rows: list[dict]):
    from pyspark.sql.pandas.types import from_arrow_schema

    schema = from_arrow_schema(scan.SCAN_FIELDS.append(heads.PREDICTED_FIELDS.field("predicted_label")))
    full = [dict.fromkeys(schema.names) | r for r in rows]
    return spark.createDataFrame(full, schema)


def test_rows_are_stamped_with_the_model_and_the_code(spark) -> None:
    from pyspark.sql.pandas.types import from_arrow_schema

    decided = spark.createDataFrame(
        [dict.fromkeys(heads.PREDICTED_ROW.names) | {"image_id": "i", "source_uri": "u", "predicted_label": "1"}],
        from_arrow_schema(heads.PREDICTED_ROW),
    )
    scorer = Scorer(REPO, model_card(), "cnn-v-int8", "cnn", "int8")
    rows = predict.stamped(predict.predicted(decided, scorer.decider), scorer, datetime(2026, 12, 6, tzinfo=UTC), 7)
    assert tuple(rows.columns) == (*tables.PREDICTION_COLUMNS, "batch_id")
    (row,) = rows.collect()
    assert (row["model_version"], row["model_kind"], row["decided_by"], row["batch_id"]) == (
        "cnn-v-int8",
        "cnn",
        "cnn-int8",
        7,
    )
    assert row["job_version"] == manifest.job_version_label()


def test_unusable_files_and_copies_become_quarantine_rows(spark, tmp_path: Path) -> None:
    scanned = _scanned(
        spark,
        [
            {"image_id": "a", "source_uri": "s/2.png", "predicted_label": "0"},
            {"image_id": "a", "source_uri": "s/1.png", "predicted_label": "0"},
            {"image_id": "b", "source_uri": "s/3.png", "predicted_label": "1"},
            {"image_id": None, "source_uri": "s/bad.png", "reason": "truncated", "detail": "cut"},
            {"image_id": "c", "source_uri": "s/old.png", "reason": scan.ALREADY_SCORED},
        ],
    )
    bad, already = predict.unscored_rows(scanned)
    assert [(r["source_uri"], r["reason"]) for r in bad] == [("s/bad.png", "truncated")]
    assert already == ["s/old.png"]  # counted, not quarantined
    assert set(bad[0]) == set(QUARANTINE_COLUMNS)
    usable = scanned.where("reason is null")
    written = tmp_path / "written"
    usable.select("image_id", "source_uri").write.parquet(str(written))
    rows, copied = predict.copies(written, usable)
    assert rows == 3
    assert [(r["source_uri"], r["detail"]) for r in copied] == [("s/2.png", "same content as s/1.png")]
