"""The tables stages hand each other: their columns, and the counts read from their manifests."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core import manifest, tables
from spark_jobs.core.store import SourceError


def test_schemas_and_column_lists_agree() -> None:
    assert tables.SPLITS == ("train", "val", "test")
    assert set(tables.IMAGE_COLUMNS) <= set(tables.DECODED_FIELDS)
    assert set(tables.QUARANTINE_COLUMNS) <= set(tables.DECODED_FIELDS)
    assert tables.FEATURE_COLUMNS[-2:] == ("feature_kind", "features")


def test_class_totals_add_up_the_splits() -> None:
    by_split = {"train": {"cat": 7, "dog": 3}, "val": {"cat": 1}, "test": {"dog": 2, "cow": 1}}
    assert tables.class_totals(by_split) == {"cat": 8, "dog": 5, "cow": 1}
    assert tables.class_totals({}) == {}


def test_counts_come_from_the_published_manifest(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match=r"no published ingest output at .*run `python -m spark_jobs.ingest` first"):
        tables.published(tmp_path, "ingest")
    folder = tmp_path / "ingest"
    folder.mkdir()
    counts = {"rows_by_split_class": {"train": {"a": 2}}}
    manifest.write(
        folder,
        manifest.build("ingest", {"ingest": {"image_size": 64}}, {}, counts, {"success": True, "expectations": 1}),
    )
    assert tables.published(tmp_path, "ingest") == folder
    assert tables.split_class_counts(folder) == {"train": {"a": 2}}
    assert tables.ingested_with(folder).image_size == 64
    manifest.write(folder, manifest.build("ingest", {"ingest": {}}, {}, {}, {"success": True, "expectations": 1}))
    with pytest.raises(SourceError, match="published by an older version"):
        tables.split_class_counts(folder)
