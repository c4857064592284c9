"""The tables scoring writes and how they are read: the batch runs' prediction and quarantine
tables (a run folder each), the stream's (hour partitions, a part file and a manifest per
micro-batch), their schemas, and the pure bookkeeping of a run's rows (copies of one content, the
run's counts).

Layout under ``data.root``::

    predictions/run_date=<UTC date>/run_id=<run>/        a batch run's predictions + _manifest.json
    score_quarantine/run_date=<...>/run_id=<run>/        the files it could not use
    shadow/run_date=<...>/run_id=<run>/                  its shadow model's rows (score.shadow)
    stream/predictions/hour=<UTC yyyy-mm-ddThh>/part-<run>.parquet   a micro-batch's rows
    stream/predictions/hour=<...>/_manifest-<run>.json               and its manifest
    stream/quarantine/hour=<...>/part-<run>.parquet                   the files it could not use
    stream/shadow/hour=<...>/part-<run>.parquet                       its shadow model's rows

(a micro-batch's run id is ``<batch>-<UTC time>-<random>``).

Readers skip names that start with ``_`` or ``.`` (Spark and pyarrow alike): the manifests and the
staging folders never show up as rows.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from spark_jobs.core.store import spark_path
from spark_jobs.core.tables import QUARANTINE_COLUMNS
from spark_jobs.imaging import images

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

PREDICTIONS = "predictions"
QUARANTINE = "score_quarantine"
STREAM = "stream"
STREAM_QUARANTINE = "quarantine"
SHADOW = "shadow"  # a shadow model's rows (score.shadow): the prediction schema, its own version
# One row per image scored by one model version (classifier or anomaly columns, the others null).
PREDICTION_SCHEMA = (
    "image_id string, source_uri string, predicted_label string, probability float, "
    "top_k array<struct<label:string,probability:float>>, anomaly_score double, is_anomaly boolean, "
    "tile_count int, top_tiles array<struct<box_x0:int,box_y0:int,box_x1:int,box_y1:int,weight:float>>, "
    "video_id string, frame_index int, frame_time double, model_version string, "
    "model_kind string, decided_by string, job_version string, scored_at timestamp"
)
PREDICTION_COLUMNS = tuple(f.split()[0] for f in PREDICTION_SCHEMA.split(", "))
QUARANTINE_SCHEMA = pa.schema([(c, pa.int64() if c == "size_bytes" else pa.string()) for c in QUARANTINE_COLUMNS])


def predictions_dir(root: str | Path) -> Path:
    return Path(root) / PREDICTIONS


def quarantine_dir(root: str | Path) -> Path:
    return Path(root) / QUARANTINE


def shadow_dir(root: str | Path) -> Path:
    return Path(root) / SHADOW


def stream_dir(root: str | Path) -> Path:
    return Path(root) / STREAM


def hour_of(epoch: float) -> str:
    """The hour partition of a time: ``hour=2026-12-04T18`` (UTC)."""
    return "hour=" + datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H")


def recent_hours(now: float, hours: int) -> set[str]:
    """The partitions of the last ``hours`` hours, this one included."""
    return {hour_of(now - 3600 * h) for h in range(hours + 1)}


def part_name(run_id: str) -> str:
    """A micro-batch's part file, named by its run (``<batch>-<time>-<random>``: in the stream's
    order, and unique, so a stream started over with a new checkpoint never meets an earlier
    batch's file of the same number)."""
    return f"part-{run_id}.parquet"


def stream_paths(root: str | Path, hour: str, run_id: str) -> tuple[Path, Path, Path]:
    """``(predictions part, quarantine part, manifest)`` of one micro-batch."""
    folder, name = stream_dir(root), part_name(run_id)
    predictions = folder / PREDICTIONS / hour / name
    return predictions, folder / STREAM_QUARANTINE / hour / name, predictions.with_name(f"_manifest-{run_id}.json")


def stream_shadow_part(root: str | Path, hour: str, run_id: str) -> Path:
    """A micro-batch's shadow part (``score.shadow``)."""
    return stream_dir(root) / SHADOW / hour / part_name(run_id)


def committed_runs(folder: Path) -> list[Path]:
    """The published run folders (``run_date=*/run_id=*``) of a predictions or quarantine table."""
    return sorted(p for p in folder.glob("run_date=*/run_id=*") if p.is_dir()) if folder.exists() else []


def read_predictions(spark: SparkSession, folder: Path) -> DataFrame | None:
    """Every published prediction (with ``run_date`` and ``run_id``), or None before the first run."""
    if not committed_runs(folder):
        return None
    # mergeSchema: runs written before a column was added (tile_count) read it as null.
    return (
        spark.read.option("basePath", spark_path(folder))
        .option("mergeSchema", "true")
        .parquet(*[spark_path(p) for p in committed_runs(folder)])
    )


def read_stream_predictions(spark: SparkSession, root: str | Path) -> DataFrame | None:
    """Every prediction a stream published (with its ``hour`` and ``batch_id``), or None before
    its first; schemas merged, as :func:`read_predictions`."""
    table = stream_dir(root) / PREDICTIONS
    if not any(table.glob("hour=*/part-*.parquet")):
        return None
    return spark.read.option("mergeSchema", "true").parquet(spark_path(table))


def write_table(table: pa.Table, path: Path) -> Path:
    """One Parquet file (zstd)."""
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path, compression="zstd")
    return path


def quarantine_table(rows: list[dict[str, Any]]) -> pa.Table:
    """Quarantine rows (:data:`QUARANTINE_COLUMNS`) as a table."""
    return pa.Table.from_pylist(rows, schema=QUARANTINE_SCHEMA)


def first_copies(ids: pa.Table) -> dict[str, str]:
    """``{image_id: smallest source_uri}`` of the ids more than one row of ``ids`` (``image_id``,
    ``source_uri``) has: the one copy of each content that stays scored."""
    import pyarrow.compute as pc

    per_id = ids.group_by("image_id").aggregate([("source_uri", "count"), ("source_uri", "min")])
    repeated = per_id.filter(pc.greater(per_id["source_uri_count"], 1))
    return dict(zip(repeated["image_id"].to_pylist(), repeated["source_uri_min"].to_pylist(), strict=True))


def copy_records(rows: list[dict[str, Any]], first: dict[str, str]) -> list[dict[str, Any]]:
    """Quarantine rows (:data:`QUARANTINE_COLUMNS`) of the ``rows`` whose content's kept copy
    (``first``: :func:`first_copies`) is another file."""
    return [
        dict.fromkeys(QUARANTINE_COLUMNS)
        | {c: r[c] for c in QUARANTINE_COLUMNS if c in r}
        | {"reason": images.DUPLICATE, "detail": f"same content as {first[r['image_id']]}"}
        for r in rows
        if r["image_id"] in first and r["source_uri"] != first[r["image_id"]]
    ]


def without_copies(table: pa.Table) -> tuple[pa.Table, list[dict[str, Any]]]:
    """``table`` (prediction rows) without the files whose content another file of it also has
    (the smallest URI stays), and the quarantine rows of those left out."""
    import pyarrow.compute as pc

    keys = table.select(["image_id", "source_uri"])
    copied = copy_records(keys.to_pylist(), first_copies(keys))
    if not copied:
        return table, []
    dropped = pa.array(sorted({r["source_uri"] for r in copied}))
    return table.filter(pc.invert(pc.is_in(table["source_uri"], dropped))), copied


def by_reason(rows: list[dict[str, Any]]) -> dict[str, int]:
    """How many quarantine rows there are of each reason."""
    return dict(Counter(r["reason"] for r in rows))


def tally(
    files: int,
    per_label: dict[str, int],
    scored: int,
    already: int,
    bad: list[dict[str, Any]],
    new_bad: list[dict[str, Any]],
) -> dict[str, Any]:
    """A run's counts, each counted from rows: of the ``files`` seen, ``scored`` files have
    prediction rows (``per_label``: an image or a video frame each), ``already`` have rows of the
    already-scored, and the unusable have quarantine rows (``bad``; ``new_bad``: those no run
    reported before). ``unaccounted``, the files with none of these, is 0 unless a file was lost
    between the listing and the tables (a cascade's file that changed between its two passes is
    left for the next run)."""
    reasons = by_reason(new_bad)
    unusable = len({r["source_uri"] for r in bad})
    return {
        "files_seen": files,
        "scored": sum(per_label.values()),
        "files_scored": scored,
        "already_scored": already,
        "unusable": unusable,
        "unaccounted": files - scored - already - unusable,
        "quarantined": sum(reasons.values()),
        "quarantine_by_reason": reasons,
        "predicted_by_label": per_label,
    }


def scored_files(folder: Path) -> int:
    """How many files the staged predictions ``folder`` holds rows of (a video has one per frame)."""
    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    if not folder.exists():
        return 0
    uris = ds.dataset(str(folder), format="parquet").to_table(columns=["source_uri"]).column("source_uri")
    return int(pc.count_distinct(uris).as_py())
