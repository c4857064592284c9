"""Great Expectations suites, one per stage, thresholds from params (DESIGN.md #4).

Row-level rules run on the stage's table itself; rules about the whole dataset (per-class
counts, split fractions, quarantine ratio, accounting) run on small summary tables derived from
it, so every rule is a stock GX expectation with its observed value in the Data Docs.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from spark_jobs.config import FeaturesGateConfig, PredictionsGateConfig, RawGateConfig
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


def feature_profile(features: DataFrame) -> DataFrame:
    """The feature table reduced to what the features suite checks: per row the vector's length
    (``dim``), how many of its values are NaN or infinite (``non_finite``) and ``all_zero``."""
    from pyspark.sql import functions as F

    vector = F.col("features")
    bad = F.filter(vector, lambda x: F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    return features.select(
        "image_id",
        "label",
        "split",
        "tile_x",
        "tile_y",
        "feature_kind",
        F.size(vector).alias("dim"),
        F.size(bad).alias("non_finite"),
        F.forall(vector, lambda x: x == 0).alias("all_zero"),
    )


def feature_row_expectations(
    classes: list[str], dim: int, kind: str, expected_rows: int, gate: FeaturesGateConfig
) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectTableRowCountToEqual(value=expected_rows),
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("image_id", "label", "split", "tile_x", "tile_y", "feature_kind", "dim", "non_finite")
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["image_id", "tile_x", "tile_y"]),
        gxe.ExpectColumnValuesToBeInSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
        gxe.ExpectColumnValuesToBeInSet(column="feature_kind", value_set=[kind]),
        gxe.ExpectColumnValuesToBeBetween(column="dim", min_value=dim, max_value=dim),
        gxe.ExpectColumnValuesToBeBetween(column="non_finite", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeInSet(
            column="all_zero", value_set=[False], mostly=round(1.0 - gate.max_zero_fraction, 6)
        ),
    ]


def feature_class_counts(
    spark: SparkSession, rows_by_class: dict[str | None, int], expected_by_class: dict[str, int]
) -> DataFrame:
    """One row per class: feature rows found and expected (ingested images, times tiles)."""
    labels = sorted(set(rows_by_class) | set(expected_by_class), key=lambda v: (v is None, v or ""))
    return spark.createDataFrame(
        [(c, rows_by_class.get(c, 0), expected_by_class.get(c, 0)) for c in labels],
        "label string, rows long, expected_rows long",
    )


def feature_batches(
    spark: SparkSession,
    profile: DataFrame,
    rows_by_class: dict[str | None, int],
    expected_by_class: dict[str, int],
    dim: int,
    kind: str,
    gate: FeaturesGateConfig,
) -> list[Batch]:
    """The features suite: row rules over :func:`feature_profile`, and per-class counts found vs
    expected (the ingested count per class, times the tiles of each image when tiling)."""
    import great_expectations.expectations as gxe

    classes = sorted(expected_by_class)
    return [
        Batch("features", profile, feature_row_expectations(classes, dim, kind, sum(expected_by_class.values()), gate)),
        Batch(
            "classes",
            feature_class_counts(spark, rows_by_class, expected_by_class),
            [
                gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected_rows"),
            ],
        ),
    ]


def prediction_profile(predictions: DataFrame, low_confidence: float) -> DataFrame:
    """The staged predictions plus what the row rules read: the sum of the top-k probabilities
    and whether the prediction is low-confidence (1/0; null for anomaly models)."""
    from pyspark.sql import functions as F

    top_sum = F.aggregate(F.col("top_k"), F.lit(0.0).cast("double"), lambda acc, x: acc + x["probability"])
    return predictions.withColumns(
        {
            "top_k_sum": top_sum,
            "top_k_size": F.size("top_k"),
            "low_confidence": (F.col("probability") < F.lit(low_confidence)).cast("int"),
        }
    ).drop("top_k")


def prediction_expectations(labels: list[str], task: str, gate: PredictionsGateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    checks: list[Any] = [
        *(
            gxe.ExpectColumnValuesToNotBeNull(column=c)
            for c in ("image_id", "source_uri", "predicted_label", "model_version", "job_version", "scored_at")
        ),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=["image_id", "model_version"]),
        gxe.ExpectColumnValuesToBeInSet(column="predicted_label", value_set=labels),
    ]
    if task == "anomaly":
        return [*checks, gxe.ExpectColumnValuesToNotBeNull(column="anomaly_score")]
    return [
        *checks,
        gxe.ExpectColumnValuesToNotBeNull(column="probability"),
        gxe.ExpectColumnValuesToBeBetween(column="probability", min_value=0.0, max_value=1.0),
        gxe.ExpectColumnValuesToBeBetween(
            column="top_k_sum", min_value=0.0, max_value=1.0 + gate.probability_tolerance
        ),
        gxe.ExpectColumnValuesToBeBetween(column="top_k_size", min_value=1),
        gxe.ExpectColumnMeanToBeBetween(column="low_confidence", min_value=0.0, max_value=gate.max_low_confidence),
    ]


def class_drift(
    spark: SparkSession, per_label: dict[str | None, int], trained: dict[str, int], labels: list[str]
) -> DataFrame:
    """One row per class: its share of the batch's predictions, of the training data, and the gap."""
    rows, total = sum(per_label.values()), sum(trained.values())
    records = [
        (
            c,
            per_label.get(c, 0) / rows,
            trained.get(c, 0) / total,
            abs(per_label.get(c, 0) / rows - trained.get(c, 0) / total),
        )
        for c in labels
    ]
    return spark.createDataFrame(records, "label string, batch_share double, train_share double, gap double")


def prediction_batches(
    spark: SparkSession,
    profile: DataFrame,
    labels: list[str],
    per_label: dict[str | None, int],
    trained: dict[str, int] | None,
    task: str,
    gate: PredictionsGateConfig,
) -> list[Batch]:
    """The predictions suite: row rules over :func:`prediction_profile`, and the drift alarm over
    the per-class shares when ``gate.max_class_drift`` is set and the batch is big enough."""
    import great_expectations.expectations as gxe

    batches = [Batch("predictions", profile, prediction_expectations(labels, task, gate))]
    rows = sum(per_label.values())
    if gate.max_class_drift is not None and task == "classifier" and trained and rows >= gate.min_rows_for_drift:
        drift = [gxe.ExpectColumnValuesToBeBetween(column="gap", min_value=0.0, max_value=gate.max_class_drift)]
        batches.append(Batch("class_drift", class_drift(spark, per_label, trained, labels), drift))
    return batches
