"""Great Expectations suites, one per stage, thresholds from params (DESIGN.md #4).

Row-level rules run on the stage's table itself; rules about the whole dataset (per-class
counts, split fractions, quarantine ratio, accounting) run on small summary tables derived from
it, so every rule is a stock GX expectation with its observed value in the Data Docs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spark_jobs.config import RawGateConfig
from spark_jobs.gate import Batch
from spark_jobs.images import SPLITS
from spark_jobs.tables import IMAGE_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession


def image_profile(images: DataFrame) -> DataFrame:
    """The image table without its pixels plus ``pixel_bytes``: all the row rules need, small
    enough to cache while GX runs its queries."""
    from pyspark.sql import functions as F

    light = [c for c in IMAGE_COLUMNS if c != "pixels"]
    return images.select(*light, F.length("pixels").alias("pixel_bytes"))


def raw_image_expectations(classes: list[str], image_size: int) -> list[Any]:
    import great_expectations.expectations as gxe

    pixel_bytes = image_size * image_size * 3
    required = [c for c in IMAGE_COLUMNS if c != "pixels"] + ["pixel_bytes"]
    return [
        gxe.ExpectTableRowCountToBeBetween(min_value=1),
        *(gxe.ExpectColumnValuesToNotBeNull(column=c) for c in required),
        gxe.ExpectColumnValuesToBeUnique(column="image_id"),
        gxe.ExpectColumnValueLengthsToEqual(column="image_id", value=64),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeBetween(column="height", min_value=image_size, max_value=image_size),
        gxe.ExpectColumnValuesToBeBetween(column="width", min_value=image_size, max_value=image_size),
        gxe.ExpectColumnValuesToBeBetween(column="pixel_bytes", min_value=pixel_bytes, max_value=pixel_bytes),
    ]


def raw_class_expectations(classes: list[str], min_per_class: int) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeBetween(column="images", min_value=min_per_class),
    ]


def raw_summary_expectations(fractions: dict[str, float], gate: RawGateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    tol = gate.split_tolerance
    return [
        gxe.ExpectTableRowCountToEqual(value=1),
        gxe.ExpectColumnValuesToBeBetween(column="unaccounted_files", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(
            column="quarantine_ratio", min_value=0.0, max_value=gate.max_quarantine_ratio
        ),
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column=f"{s}_fraction",
                min_value=round(max(0.0, fractions[s] - tol), 6),
                max_value=round(min(1.0, fractions[s] + tol), 6),
            )
            for s in SPLITS
        ),
    ]


def value_counts(frame: DataFrame, column: str) -> dict[str | None, int]:
    """How many rows hold each value of ``column``."""
    from pyspark.sql import functions as F

    return {r[column]: r["n"] for r in frame.groupBy(column).agg(F.count("*").alias("n")).collect()}


def class_counts(spark: SparkSession, per_class: dict[str | None, int], classes: list[str]) -> DataFrame:
    """One row per class, discovered or found, with its image count (0 for a class that lost every image)."""
    labels = sorted(set(classes) | set(per_class), key=lambda v: (v is None, v or ""))
    return spark.createDataFrame([(c, per_class.get(c, 0)) for c in labels], "label string, images long")


def raw_summary(spark: SparkSession, per_split: dict[str | None, int], files_seen: int, quarantined: int) -> DataFrame:
    """One row: accounting of files seen vs rows + quarantine, quarantine ratio, split fractions."""
    rows = sum(per_split.values())
    record = {
        "files_seen": files_seen,
        "images": rows,
        "quarantined": quarantined,
        "unaccounted_files": files_seen - rows - quarantined,
        "quarantine_ratio": quarantined / files_seen if files_seen else 1.0,
        **{f"{s}_fraction": per_split.get(s, 0) / rows if rows else 0.0 for s in SPLITS},
    }
    return spark.createDataFrame([record])


def raw_batches(
    spark: SparkSession,
    profile: DataFrame,
    classes: list[str],
    per_class: dict[str | None, int],
    per_split: dict[str | None, int],
    files_seen: int,
    quarantined: int,
    image_size: int,
    fractions: dict[str, float],
    gate: RawGateConfig,
) -> list[Batch]:
    """The raw-data suite as batches for :func:`spark_jobs.gate.validate`: row rules over the
    :func:`image_profile` of the staged image table, dataset rules over its counts
    (:func:`value_counts` of ``label`` and ``split``)."""
    return [
        Batch("images", profile, raw_image_expectations(classes, image_size)),
        Batch("classes", class_counts(spark, per_class, classes), raw_class_expectations(classes, gate.min_per_class)),
        Batch(
            "summary", raw_summary(spark, per_split, files_seen, quarantined), raw_summary_expectations(fractions, gate)
        ),
    ]
