"""Great Expectations suites, one per stage, thresholds from params (DESIGN.md #4).

A gate computes its statistics in one Spark pass over what the stage wrote (one aggregation
job: how many rows break each row rule, plus the per-class counts) and GX validates that small
result: every rule is a stock GX expectation on a summary table, with its observed value in the
Data Docs. The batches of a suite:

- row rules (``images``, ``features``, ``predictions``): one row holding ``rows`` and, per rule,
  the rows that break it (``null_<column>``, ``repeated_<key>``, ``<column>_not_in_set``, ...),
  each expected to be 0 (or a share below its threshold);
- dataset rules (``classes``, ``summary``, ``class_drift``): per-class counts, split fractions,
  quarantine ratio and accounting, drift of the predicted classes;
- the model gate (``evaluate``, :func:`model_expectations`): each candidate's one-row metrics
  table against the accuracy, macro-F1 or AUROC floors and the regression allowed against the
  champion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa

from spark_jobs.core.tables import IMAGE_COLUMNS, SPLITS
from spark_jobs.quality import rules
from spark_jobs.quality.gate import Batch
from spark_jobs.quality.thresholds import FeaturesGateConfig, ModelGateConfig, PredictionsGateConfig, RawGateConfig

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame

ROWS = "rows"


@dataclass(frozen=True)
class Stats:
    """One Spark pass over a table: rule-breaking row counts over the whole table (``totals``,
    with ``rows``) and the row count of each group (``groups``: e.g. ``{("cat", "train"): 40}``)."""

    totals: dict[str, int]
    groups: dict[tuple[Any, ...], int]

    def by(self, position: int) -> dict[Any, int]:
        """Row counts per value of one grouping column (its position in the grouping)."""
        out: dict[Any, int] = {}
        for key, n in self.groups.items():
            out[key[position]] = out.get(key[position], 0) + n
        return out

    def nested(self, outer: int, inner: int) -> dict[Any, dict[Any, int]]:
        """Row counts per value of one grouping column, then of another (e.g. per split, per class)."""
        out: dict[Any, dict[Any, int]] = {}
        for key, n in self.groups.items():
            by = out.setdefault(key[outer], {})
            by[key[inner]] = by.get(key[inner], 0) + n
        return out

    def row(self, *names: str) -> pd.DataFrame:
        """The named totals as a one-row table (what the row rules validate)."""
        return pd.DataFrame([{n: self.totals[n] for n in names}])


def _broken(condition: Column) -> Column:
    """How many rows ``condition`` holds for (null counts as not broken: null rules catch it)."""
    from pyspark.sql import functions as F

    return F.sum(F.when(condition, 1).otherwise(0))


def table_stats(
    frame: DataFrame, groups: list[str], rules: dict[str, Column], keys: dict[str, list[str]] | None = None
) -> Stats:
    """One Spark job over ``frame``: per rule the rows it holds for, per key (a list of columns)
    the rows repeating an earlier row's key (``repeated_<name>``), and per group of ``groups``
    the row count. (The grand totals and the group counts are two aggregations of one query,
    cheaper here than grouping sets, which Spark expands row by row for the distinct counts.)"""
    from pyspark.sql import functions as F

    aggregates = [F.count(F.lit(1)).alias(ROWS)]
    aggregates += [_broken(condition).alias(name) for name, condition in rules.items()]
    for name, columns in (keys or {}).items():  # count_distinct skips keys with a null part
        keyed = F.count(F.when(_all_present(columns), 1))
        aggregates.append((keyed - F.count_distinct(*[F.col(c) for c in columns])).alias(f"repeated_{name}"))
    names = [ROWS, *rules, *(f"repeated_{k}" for k in keys or {})]
    nothing = [F.lit(None).cast(frame.schema[g].dataType).alias(g) for g in groups]
    totals = frame.agg(*aggregates).select(F.lit(True).alias("_total"), *nothing, *names)
    counts = frame.groupBy(*groups).agg(F.count(F.lit(1)).alias(ROWS))
    counts = counts.select(
        F.lit(False).alias("_total"), *groups, ROWS, *[F.lit(None).cast("long").alias(n) for n in names[1:]]
    )
    result = totals.unionByName(counts).collect()
    total = next(r for r in result if r["_total"])  # a global aggregation has its row even when empty
    return Stats(
        {n: int(total[n] or 0) for n in names},
        {tuple(r[g] for g in groups): int(r[ROWS]) for r in result if not r["_total"]},
    )


def _all_present(columns: list[str]) -> Column:
    from pyspark.sql import functions as F

    condition = F.lit(True)
    for c in columns:
        condition = condition & F.col(c).isNotNull()
    return condition


def _nulls(columns: list[str] | tuple[str, ...]) -> dict[str, Column]:
    """:func:`spark_jobs.quality.rules.nulls` as Spark columns (the image and feature rules are Spark's only)."""
    return {name: rules.to_spark(rule) for name, rule in rules.nulls(columns).items()}


def _zero(names: list[str]) -> list[Any]:
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(column=n, min_value=0, max_value=0) for n in names]


# ---- raw data (ingest) --------------------------------------------------------------------

_IMAGE_REQUIRED = [*(c for c in IMAGE_COLUMNS if c != "pixels"), "pixel_bytes"]


def image_rules(classes: list[str], image_size: int) -> dict[str, Column]:
    """Row rules of the image table (its ``pixel_bytes`` is the length of its ``pixels``)."""
    from pyspark.sql import functions as F

    pixel_bytes = image_size * image_size * 3
    return {
        **_nulls(_IMAGE_REQUIRED),
        "image_id_not_64_chars": F.length("image_id") != 64,
        "label_not_in_classes": ~F.col("label").isin(classes),
        "split_not_in_splits": ~F.col("split").isin(list(SPLITS)),
        "height_not_image_size": F.col("height") != image_size,
        "width_not_image_size": F.col("width") != image_size,
        "pixel_bytes_not_hxwx3": F.col("pixel_bytes") != pixel_bytes,
    }


def image_stats(images: DataFrame, classes: list[str], image_size: int) -> Stats:
    """The raw suite's one pass over the staged image table: row rules, per (label, split) counts."""
    from pyspark.sql import functions as F

    light = images.select(*(c for c in IMAGE_COLUMNS if c != "pixels"), F.length("pixels").alias("pixel_bytes"))
    return table_stats(light, ["label", "split"], image_rules(classes, image_size), {"image_id": ["image_id"]})


def raw_image_expectations(rules: list[str]) -> list[Any]:
    import great_expectations.expectations as gxe

    return [gxe.ExpectColumnValuesToBeBetween(column=ROWS, min_value=1), *_zero([*rules, "repeated_image_id"])]


def raw_class_expectations(classes: list[str], min_per_class: int) -> list[Any]:
    import great_expectations.expectations as gxe

    return [
        gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
        gxe.ExpectColumnValuesToBeBetween(column="images", min_value=min_per_class),
    ]


def raw_summary_expectations(fractions: dict[str, float], gate: RawGateConfig, rows: int) -> list[Any]:
    """The summary's checks: every file accounted for, the quarantine ratio, and each split's
    fraction of the ``rows`` images within its allowance (:meth:`RawGateConfig.split_allowance`)."""
    import great_expectations.expectations as gxe

    allow = {s: gate.split_allowance(fractions[s], rows) for s in SPLITS}
    return [
        gxe.ExpectTableRowCountToEqual(value=1),
        gxe.ExpectColumnValuesToBeBetween(column="unaccounted_files", min_value=0, max_value=0),
        gxe.ExpectColumnValuesToBeBetween(
            column="quarantine_ratio", min_value=0.0, max_value=gate.max_quarantine_ratio
        ),
        *(
            gxe.ExpectColumnValuesToBeBetween(
                column=f"{s}_fraction",
                min_value=round(max(0.0, fractions[s] - allow[s]), 6),
                max_value=round(min(1.0, fractions[s] + allow[s]), 6),
            )
            for s in SPLITS
        ),
    ]


def value_counts(frame: DataFrame, column: str) -> dict[str | None, int]:
    """How many rows hold each value of ``column``."""
    from pyspark.sql import functions as F

    return {r[column]: r["n"] for r in frame.groupBy(column).agg(F.count("*").alias("n")).collect()}


def _label_order(labels: set[Any]) -> list[Any]:
    return sorted(labels, key=lambda v: (v is None, v or ""))


def class_counts(per_class: dict[str | None, int], classes: list[str]) -> pd.DataFrame:
    """One row per class, discovered or found, with its image count (0 for a class that lost every image)."""
    labels = _label_order(set(classes) | set(per_class))
    return pd.DataFrame({"label": labels, "images": [per_class.get(c, 0) for c in labels]})


def raw_summary(per_split: dict[str | None, int], files_seen: int, quarantined: int) -> pd.DataFrame:
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
    return pd.DataFrame([record])


@dataclass(frozen=True)
class Audit:
    """What the raw suite checks of the dataset audit: :func:`near_duplicate_summary` and
    :func:`flag_shares` of the staged tables, and how splits were assigned (``cluster``/``image``)."""

    near_duplicates: pd.DataFrame
    flags: pd.DataFrame
    split_by: str


def raw_batches(
    stats: Stats,
    classes: list[str],
    files_seen: int,
    quarantined: int,
    image_size: int,
    fractions: dict[str, float],
    gate: RawGateConfig,
    audit: Audit | None = None,
) -> list[Batch]:
    """The raw-data suite as batches for :func:`spark_jobs.quality.gate.validate`, from the
    :func:`image_stats` of the staged image table (and its ``audit``, when there is one)."""
    rules = list(image_rules(classes, image_size))
    per_split = stats.by(1)
    extra = [] if audit is None else audit_batches(audit, gate)
    return [
        *extra,
        Batch("images", stats.row(ROWS, *rules, "repeated_image_id"), raw_image_expectations(rules)),
        Batch(
            "classes", class_counts(stats.by(0), classes), raw_class_expectations(classes, gate.min_per_class), "label"
        ),
        Batch(
            "summary",
            raw_summary(per_split, files_seen, quarantined),
            raw_summary_expectations(fractions, gate, sum(per_split.values())),
        ),
    ]


def near_duplicate_summary(images: DataFrame, pairs: DataFrame) -> pd.DataFrame:
    """One row: the verified near-duplicate ``pairs``, the clusters of two or more images and the
    images in them, the clusters whose images sit in more than one split, and the pairs whose two
    images do. ``images``: ``image_id, split, cluster_id``; ``pairs``: ``image_id_a, image_id_b``."""
    from pyspark.sql import functions as F

    per_cluster = images.groupBy("cluster_id").agg(F.count("*").alias("n"), F.countDistinct("split").alias("splits"))
    clusters = per_cluster.where(F.col("n") > 1).agg(
        F.count("*").alias("clusters"),
        F.coalesce(F.sum("n"), F.lit(0)).alias("images_in_clusters"),
        F.count(F.when(F.col("splits") > 1, 1)).alias("clusters_spanning_splits"),
    )
    split = images.select("image_id", "split")
    sides = pairs.join(split.withColumnsRenamed({"image_id": "image_id_a", "split": "a"}), "image_id_a").join(
        split.withColumnsRenamed({"image_id": "image_id_b", "split": "b"}), "image_id_b"
    )
    crossing = sides.agg(F.count("*").alias("pairs"), F.count(F.when(F.col("a") != F.col("b"), 1)).alias("cross"))
    row, cross = clusters.first(), crossing.first()
    return pd.DataFrame(
        [
            {
                "pairs": int(cross["pairs"]),
                "clusters": int(row["clusters"]),
                "images_in_clusters": int(row["images_in_clusters"]),
                "clusters_spanning_splits": int(row["clusters_spanning_splits"]),
                "cross_split_pairs": int(cross["cross"]),
            }
        ]
    )


def flag_shares(images: DataFrame, classes: list[str], flags: list[str]) -> pd.DataFrame:
    """One row per class: its images and, per quality flag, the share of them that carry it.
    ``images``: ``label, flags``."""
    from pyspark.sql import functions as F

    counts = images.groupBy("label").agg(
        F.count("*").alias("images"),
        *[F.count(F.when(F.array_contains("flags", f), 1)).alias(f) for f in flags],
    )
    found = {r["label"]: r for r in counts.collect()}
    rows = []
    for label in _label_order(set(classes) | set(found)):
        r = found.get(label)
        n = int(r["images"]) if r else 0
        rows.append({"label": label, "images": n, **{f"{f}_share": (r[f] / n if r and n else 0.0) for f in flags}})
    return pd.DataFrame(rows)


def audit_batches(audit: Audit, gate: RawGateConfig) -> list[Batch]:
    """The audit's checks: no near-duplicate cluster across two splits when splits follow clusters
    (else at most ``max_cross_split_pairs`` pairs across), and each flag's share of every class at
    most its ``max_flagged_share`` (a flag allowed 1.0 is not gated)."""
    import great_expectations.expectations as gxe

    if audit.split_by == "cluster":
        leak = gxe.ExpectColumnValuesToBeBetween(column="clusters_spanning_splits", min_value=0, max_value=0)
    else:
        leak = gxe.ExpectColumnValuesToBeBetween(
            column="cross_split_pairs", min_value=0, max_value=gate.max_cross_split_pairs
        )
    limits = gate.max_flagged_share.model_dump()
    shares = [
        gxe.ExpectColumnValuesToBeBetween(column=f"{flag}_share", min_value=0.0, max_value=limit)
        for flag, limit in limits.items()
        if limit < 1.0
    ]
    batches = [Batch("near_duplicates", audit.near_duplicates, [gxe.ExpectTableRowCountToEqual(value=1), leak])]
    return [*batches, Batch("quality_flags", audit.flags, shares, "label")] if shares else batches


# ---- features -------------------------------------------------------------------------------

_FEATURE_REQUIRED = ["image_id", "label", "split", "tile_x", "tile_y", "feature_kind", "features"]


def feature_rules(classes: list[str], dim: int, kind: str) -> dict[str, Column]:
    """Row rules of the feature table."""
    from pyspark.sql import functions as F

    vector = F.col("features")
    bad = F.filter(vector, lambda x: F.isnan(x) | (F.abs(x) == F.lit(float("inf"))))
    return {
        **_nulls(_FEATURE_REQUIRED),
        "label_not_in_classes": ~F.col("label").isin(classes),
        "split_not_in_splits": ~F.col("split").isin(list(SPLITS)),
        "feature_kind_not_expected": F.col("feature_kind") != kind,
        "dim_not_expected": F.size(vector) != dim,
        "non_finite_vectors": F.size(bad) > 0,
        "all_zero_vectors": F.forall(vector, lambda x: x == 0),
    }


def feature_stats(features: DataFrame, classes: list[str], dim: int, kind: str) -> Stats:
    """The features suite's one pass: row rules, per (label, split) counts."""
    keys = {"image_tile": ["image_id", "tile_x", "tile_y"]}
    return table_stats(features, ["label", "split"], feature_rules(classes, dim, kind), keys)


def feature_row_expectations(rules: list[str], expected_rows: int, gate: FeaturesGateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    strict = [r for r in rules if r != "all_zero_vectors"]
    return [
        gxe.ExpectColumnValuesToBeBetween(column=ROWS, min_value=expected_rows, max_value=expected_rows),
        *_zero([*strict, "repeated_image_tile"]),
        gxe.ExpectColumnValuesToBeBetween(column="all_zero_share", min_value=0.0, max_value=gate.max_zero_fraction),
    ]


def feature_class_counts(rows_by_class: dict[str | None, int], expected_by_class: dict[str, int]) -> pd.DataFrame:
    """One row per class: feature rows found and expected (ingested images, times tiles)."""
    labels = _label_order(set(rows_by_class) | set(expected_by_class))
    return pd.DataFrame(
        {
            "label": labels,
            "rows": [rows_by_class.get(c, 0) for c in labels],
            "expected_rows": [expected_by_class.get(c, 0) for c in labels],
        }
    )


def feature_batches(
    stats: Stats, expected_by_class: dict[str, int], dim: int, kind: str, gate: FeaturesGateConfig
) -> list[Batch]:
    """The features suite: row rules from :func:`feature_stats`, and per-class counts found vs
    expected (the ingested count per class, times the tiles of each image when tiling)."""
    import great_expectations.expectations as gxe

    classes = sorted(expected_by_class)
    rules = list(feature_rules(classes, dim, kind))
    row = stats.row(ROWS, *rules, "repeated_image_tile")
    row["all_zero_share"] = row["all_zero_vectors"] / row[ROWS] if stats.totals[ROWS] else 0.0
    return [
        Batch("features", row, feature_row_expectations(rules, sum(expected_by_class.values()), gate)),
        Batch(
            "classes",
            feature_class_counts(stats.by(0), expected_by_class),
            [
                gxe.ExpectColumnDistinctValuesToEqualSet(column="label", value_set=classes),
                gxe.ExpectColumnPairValuesToBeEqual(column_A="rows", column_B="expected_rows"),
            ],
        ),
    ]


# ---- predictions (score) --------------------------------------------------------------------

_PREDICTION_REQUIRED = ["image_id", "source_uri", "predicted_label", "model_version", "job_version", "scored_at"]
REPEATED_PREDICTIONS = ("repeated_prediction", "repeated_frame")
# The rows repeating a prediction: an image's by the same model version, and a video frame's
# (null for images, which this key then skips).
PREDICTION_KEYS = {"prediction": ["image_id", "model_version"], "frame": ["video_id", "frame_index", "model_version"]}


def prediction_rules(labels: list[str], task: str, low_confidence: float, tolerance: float) -> dict[str, rules.Expr]:
    """Row rules of a batch of predictions (classifier or anomaly columns), written once: the
    Spark job of a batch run and the pyarrow pass over a micro-batch both evaluate these."""
    col = rules.col
    common = {
        **rules.nulls(_PREDICTION_REQUIRED),
        "predicted_label_not_in_set": ~col("predicted_label").isin(labels),
        "frame_without_index": col("video_id").is_not_null() & col("frame_index").is_null(),
    }
    if task == "anomaly":
        return {**common, **rules.nulls(["anomaly_score"])}
    probability, top_k = col("probability"), col("top_k")
    top_sum = top_k.list_sum("probability")
    return {
        **common,
        **rules.nulls(["probability"]),
        "probability_out_of_range": (probability < 0.0) | (probability > 1.0),
        "top_k_sum_out_of_range": (top_sum < 0.0) | (top_sum > 1.0 + tolerance),
        "top_k_empty": top_k.list_size() < 1,
        "low_confidence": probability < low_confidence,
    }


def prediction_rule_names(task: str) -> list[str]:
    """The names of :func:`prediction_rules`, in order."""
    return list(prediction_rules([], task, 0.0, 0.0))


def prediction_stats(
    predictions: DataFrame, labels: list[str], task: str, low_confidence: float, tolerance: float
) -> Stats:
    """The predictions suite's one Spark pass: row rules, per predicted label counts, and the rows
    repeating a prediction (:data:`PREDICTION_KEYS`)."""
    compiled = {n: rules.to_spark(e) for n, e in prediction_rules(labels, task, low_confidence, tolerance).items()}
    return table_stats(predictions, ["predicted_label"], compiled, PREDICTION_KEYS)


def prediction_stats_arrow(
    table: pa.Table, labels: list[str], task: str, low_confidence: float, tolerance: float
) -> Stats:
    """:func:`prediction_stats` of a few rows held on the driver (a stream's micro-batch), computed
    with pyarrow in milliseconds instead of a Spark job, from the same rules."""
    checks = prediction_rules(labels, task, low_confidence, tolerance)
    totals = {ROWS: table.num_rows, **{n: rules.broken_count(rules.to_arrow(e, table)) for n, e in checks.items()}}
    for name, columns in PREDICTION_KEYS.items():
        keyed = table.select(columns).drop_null()
        totals[f"repeated_{name}"] = keyed.num_rows - keyed.group_by(columns).aggregate([]).num_rows
    per_label = table.group_by("predicted_label").aggregate([([], "count_all")])
    groups = {
        (label,): int(n)
        for label, n in zip(per_label["predicted_label"].to_pylist(), per_label["count_all"].to_pylist(), strict=True)
    }
    return Stats(totals, groups)


def prediction_expectations(names: list[str], gate: PredictionsGateConfig) -> list[Any]:
    import great_expectations.expectations as gxe

    checks = _zero([*(r for r in names if r != "low_confidence"), *REPEATED_PREDICTIONS])
    if "low_confidence" in names:
        share = gxe.ExpectColumnValuesToBeBetween(
            column="low_confidence_share", min_value=0.0, max_value=gate.max_low_confidence
        )
        checks.append(share)
    return checks


def class_drift(per_label: dict[str | None, int], trained: dict[str, int], labels: list[str]) -> pd.DataFrame:
    """One row per class: its share of the batch's predictions, of the training data, and the gap."""
    rows, total = sum(per_label.values()), sum(trained.values())
    batch = [per_label.get(c, 0) / rows for c in labels]
    train = [trained.get(c, 0) / total for c in labels]
    return pd.DataFrame(
        {
            "label": labels,
            "batch_share": batch,
            "train_share": train,
            "gap": [abs(b - t) for b, t in zip(batch, train, strict=True)],
        }
    )


@dataclass(frozen=True)
class Volume:
    """What the checks that need volume read: rows, low-confidence rows and rows per predicted
    label, of a batch or of a stream's rolling window of its last rows."""

    rows: int
    low_confidence: int
    per_label: dict[Any, int]

    @classmethod
    def of(cls, stats: Stats) -> Volume:
        return cls(stats.totals[ROWS], stats.totals.get("low_confidence", 0), stats.by(0))


def prediction_batches(
    stats: Stats,
    labels: list[str],
    trained: dict[str, int] | None,
    task: str,
    low_confidence: float,
    gate: PredictionsGateConfig,
    volume: Volume | None = None,
    min_volume_rows: int = 0,
) -> list[Batch]:
    """The predictions suite: row rules from :func:`prediction_stats`; the low-confidence share
    and, when ``gate.max_class_drift`` is set, the drift alarm over the per-class shares, both of
    ``volume`` (the batch itself when None) once it holds ``min_volume_rows`` rows (the drift
    alarm: ``gate.min_rows_for_drift``)."""
    import great_expectations.expectations as gxe

    volume = volume or Volume.of(stats)
    names = prediction_rule_names(task)
    row = stats.row(ROWS, *names, *REPEATED_PREDICTIONS)
    if "low_confidence" in names and volume.rows >= min_volume_rows:
        row["low_confidence_share"] = volume.low_confidence / volume.rows if volume.rows else 0.0
    else:
        names = [r for r in names if r != "low_confidence"]
    batches = [Batch("predictions", row, prediction_expectations(names, gate))]
    per_label, rows = volume.per_label, volume.rows
    if gate.max_class_drift is not None and task == "classifier" and trained and rows >= gate.min_rows_for_drift:
        drift = [gxe.ExpectColumnValuesToBeBetween(column="gap", min_value=0.0, max_value=gate.max_class_drift)]
        batches.append(Batch("class_drift", class_drift(per_label, trained, labels), drift))
    return batches


def drift_batch(statistic: float, threshold: float) -> Batch:
    """The predictions suite's drift check (``gate.predictions.drift: fail``): a tested batch's
    domain-classifier AUC (:mod:`spark_jobs.ml.drift`) at most ``threshold``."""
    import great_expectations.expectations as gxe

    frame = pd.DataFrame({"domain_auc": [statistic]})
    check = gxe.ExpectColumnValuesToBeBetween(column="domain_auc", min_value=0.0, max_value=threshold)
    return Batch("embedding_drift", frame, [check])


def model_expectations(task: str, limits: ModelGateConfig, has_holdout: bool) -> list[Any]:
    """The model gate's suite for one candidate's one-row metrics table (``evaluate``)."""
    import great_expectations.expectations as gxe

    if task == "anomaly":
        checks: list[Any] = [gxe.ExpectColumnValuesToNotBeNull(column="threshold")]
        if has_holdout:
            checks += [
                gxe.ExpectColumnValuesToNotBeNull(column="auroc"),
                gxe.ExpectColumnValuesToBeBetween(column="auroc", min_value=limits.min_auroc, max_value=1.0),
            ]
    else:
        checks = [
            gxe.ExpectColumnValuesToNotBeNull(column="accuracy"),
            gxe.ExpectColumnValuesToBeBetween(column="accuracy", min_value=limits.min_accuracy, max_value=1.0),
            gxe.ExpectColumnValuesToBeBetween(column="macro_f1", min_value=limits.min_macro_f1, max_value=1.0),
        ]
    # Null when there is no champion yet: GX skips nulls in column-value expectations.
    checks.append(gxe.ExpectColumnValuesToBeBetween(column="regression", max_value=limits.max_regression))
    return checks
