"""The gates' suites: statistics of a table in one Spark pass, validated by GX; a good table
passes, and each broken expectation stops it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.imaging.images import assign_split
from spark_jobs.quality import gate, suites
from spark_jobs.quality.thresholds import FeaturesGateConfig, PredictionsGateConfig, RawGateConfig

pytestmark = pytest.mark.spark

CLASSES = ["cat", "dog"]
FRACTIONS = {"train": 0.7, "val": 0.15, "test": 0.15}
SIZE = 4


def _rows(per_class: int = 40) -> list[dict]:
    rows = []
    for label in CLASSES:
        for i in range(per_class):
            image_id = f"{label}{i:04d}".ljust(64, "0")
            rows.append(
                {
                    "image_id": image_id,
                    "source_uri": f"file:///x/{label}/{i}.png",
                    "label": label,
                    "split": assign_split(image_id, FRACTIONS),
                    "size_bytes": 100,
                    "orig_width": 10,
                    "orig_height": 10,
                    "orig_format": "PNG",
                    "orig_mode": "RGB",
                    "height": SIZE,
                    "width": SIZE,
                    "pixels": bytes(SIZE * SIZE * 3),
                    "cluster_id": image_id,
                    "sharpness": 100.0,
                    "brightness": 0.5,
                    "contrast": 0.2,
                    "entropy": 5.0,
                    "grayscale": False,
                    "aspect_ratio": 1.0,
                    "flags": [],
                }
            )
    return rows


SCHEMA = (
    "image_id string, source_uri string, label string, split string, size_bytes long, orig_width int, "
    "orig_height int, orig_format string, orig_mode string, height int, width int, pixels binary, "
    "cluster_id string, sharpness double, brightness double, contrast double, entropy double, "
    "grayscale boolean, aspect_ratio double, flags array<string>"
)


def _validate(spark, tmp_path: Path, rows: list[dict], files_seen: int | None = None, quarantined: int = 0):
    stats = suites.image_stats(spark.createDataFrame(rows, SCHEMA), CLASSES, SIZE)
    seen = len(rows) + quarantined if files_seen is None else files_seen
    config = RawGateConfig(min_per_class=20, max_quarantine_ratio=0.1, split_tolerance=0.15)
    batches = suites.raw_batches(stats, CLASSES, seen, quarantined, SIZE, FRACTIONS, config)
    return gate.validate("ingest", batches, tmp_path / "report")


def _failed(result: gate.GateResult) -> set[tuple[str, str, str]]:
    return {(c["batch"], c["expectation"], c["kwargs"].get("column", "")) for c in result.failures}


def test_good_table_passes(spark, tmp_path: Path) -> None:
    result = _validate(spark, tmp_path, _rows())
    assert result.success, result.summary()
    assert len(result.checks) == 36  # 28, and a null check of each audit column
    assert (tmp_path / "report" / "docs" / "index.html").exists()
    assert (tmp_path / "report" / "summary.txt").read_text().startswith("gate ingest: PASSED")


def _null_label(rows: list[dict]) -> list[dict]:
    rows[0]["label"] = None
    return rows


def _duplicate_id(rows: list[dict]) -> list[dict]:
    rows[1]["image_id"] = rows[0]["image_id"]
    return rows


def _unknown_label(rows: list[dict]) -> list[dict]:
    rows[0]["label"] = "cow"
    return rows


def _bad_split(rows: list[dict]) -> list[dict]:
    rows[0]["split"] = "holdout"
    return rows


def _wrong_size(rows: list[dict]) -> list[dict]:
    rows[0]["height"] = SIZE + 1
    return rows


def _short_id(rows: list[dict]) -> list[dict]:
    rows[0]["image_id"] = "abc"
    return rows


def _short_pixels(rows: list[dict]) -> list[dict]:
    rows[0]["pixels"] = rows[0]["pixels"][:-3]
    return rows


def _no_pixels(rows: list[dict]) -> list[dict]:
    rows[0]["pixels"] = None
    return rows


def _small_class(rows: list[dict]) -> list[dict]:
    return [r for r in rows if r["label"] == "cat"] + [r for r in rows if r["label"] == "dog"][:5]


def _skewed_split(rows: list[dict]) -> list[dict]:
    for r in rows:
        r["split"] = "train"
    return rows


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_null_label, ("images", "expect_column_values_to_be_between", "null_label")),
        (_duplicate_id, ("images", "expect_column_values_to_be_between", "repeated_image_id")),
        (_unknown_label, ("images", "expect_column_values_to_be_between", "label_not_in_classes")),
        (_bad_split, ("images", "expect_column_values_to_be_between", "split_not_in_splits")),
        (_wrong_size, ("images", "expect_column_values_to_be_between", "height_not_image_size")),
        (_short_id, ("images", "expect_column_values_to_be_between", "image_id_not_64_chars")),
        (_short_pixels, ("images", "expect_column_values_to_be_between", "pixel_bytes_not_hxwx3")),
        (_no_pixels, ("images", "expect_column_values_to_be_between", "null_pixel_bytes")),
        (_small_class, ("classes", "expect_column_values_to_be_between", "images")),
        (_skewed_split, ("summary", "expect_column_values_to_be_between", "train_fraction")),
    ],
)
def test_each_broken_row_rule_stops_the_gate(spark, tmp_path: Path, breaker, expected) -> None:
    result = _validate(spark, tmp_path, breaker(_rows()))
    assert not result.success
    assert expected in _failed(result), result.summary()


def test_too_many_quarantined_stops_the_gate(spark, tmp_path: Path) -> None:
    result = _validate(spark, tmp_path, _rows(), quarantined=20)  # 20 / 100 > 0.1
    assert _failed(result) == {("summary", "expect_column_values_to_be_between", "quarantine_ratio")}


def test_unaccounted_files_stop_the_gate(spark, tmp_path: Path) -> None:
    result = _validate(spark, tmp_path, _rows(), files_seen=81)  # one file neither row nor quarantine
    assert _failed(result) == {("summary", "expect_column_values_to_be_between", "unaccounted_files")}


def test_a_class_that_lost_every_image_stops_the_gate(spark, tmp_path: Path) -> None:
    rows = [r for r in _rows() if r["label"] == "cat"]
    result = _validate(spark, tmp_path, rows)
    assert ("classes", "expect_column_values_to_be_between", "images") in _failed(result)
    assert "FAILED classes" in result.summary()
    # the short classes by name, not only their counts
    assert "{'images': 0, 'label': 'dog'}" in result.summary()


def test_the_split_allowance_follows_the_sample_size() -> None:
    gate_cfg = RawGateConfig(split_tolerance=0.05, split_false_alarm=0.001)
    assert gate_cfg.split_allowance(0.15, 100_000) == 0.05  # a large source: the configured tolerance
    small = gate_cfg.split_allowance(0.15, 24)
    assert 0.23 < small < 0.25  # 3.29 standard deviations of a binomial fraction of 24
    # A correct split of 24 images passes far more often than the fixed tolerance let it.
    rng = np.random.default_rng(0)
    observed = rng.binomial(24, 0.15, 20_000) / 24
    assert np.mean(abs(observed - 0.15) > 0.05) > 0.4  # the fixed 0.05: about half the runs
    assert np.mean(abs(observed - 0.15) > small) < 0.005


# ---- features suite ----

DIM = 4
FEATURE_SCHEMA_SMALL = (
    "image_id string, label string, split string, tile_x int, tile_y int, feature_kind string, features array<float>"
)


def _feature_rows(per_class: int = 50) -> list[dict]:
    rng = np.random.default_rng(1)
    return [
        {
            "image_id": f"{label}{i}",
            "label": label,
            "split": "train",
            "tile_x": 0,
            "tile_y": 0,
            "feature_kind": "classical",
            "features": [float(v) for v in rng.normal(size=DIM)],
        }
        for label in CLASSES
        for i in range(per_class)
    ]


def _validate_features(spark, tmp_path: Path, rows: list[dict], expected: dict[str, int] | None = None):
    expected = expected or dict.fromkeys(CLASSES, 50)
    stats = suites.feature_stats(spark.createDataFrame(rows, FEATURE_SCHEMA_SMALL), CLASSES, DIM, "classical")
    batches = suites.feature_batches(stats, expected, DIM, "classical", FeaturesGateConfig())
    return gate.validate("features", batches, tmp_path / "report")


def test_good_features_pass(spark, tmp_path: Path) -> None:
    result = _validate_features(spark, tmp_path, _feature_rows())
    assert result.success, result.summary()


def _nan(rows: list[dict]) -> list[dict]:
    rows[3]["features"][1] = float("nan")
    return rows


def _inf(rows: list[dict]) -> list[dict]:
    rows[3]["features"][0] = float("-inf")
    return rows


def _short_vector(rows: list[dict]) -> list[dict]:
    rows[0]["features"] = rows[0]["features"][:-1]
    return rows


def _zeros(rows: list[dict]) -> list[dict]:
    for r in rows[:2]:  # 2 of 100 > 1%
        r["features"] = [0.0] * DIM
    return rows


def _lost_row(rows: list[dict]) -> list[dict]:
    return rows[1:]


def _duplicate_tile(rows: list[dict]) -> list[dict]:
    return [*rows[:-1], dict(rows[0])]


def _other_kind(rows: list[dict]) -> list[dict]:
    rows[0]["feature_kind"] = "cnn"
    return rows


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [
        (_nan, ("features", "expect_column_values_to_be_between", "non_finite_vectors")),
        (_inf, ("features", "expect_column_values_to_be_between", "non_finite_vectors")),
        (_short_vector, ("features", "expect_column_values_to_be_between", "dim_not_expected")),
        (_zeros, ("features", "expect_column_values_to_be_between", "all_zero_share")),
        (_lost_row, ("features", "expect_column_values_to_be_between", "rows")),
        (_lost_row, ("classes", "expect_column_pair_values_to_be_equal", "")),
        (_duplicate_tile, ("features", "expect_column_values_to_be_between", "repeated_image_tile")),
        (_duplicate_tile, ("classes", "expect_column_pair_values_to_be_equal", "")),
        (_other_kind, ("features", "expect_column_values_to_be_between", "feature_kind_not_expected")),
    ],
)
def test_each_broken_feature_rule_stops_the_gate(spark, tmp_path: Path, breaker, expected) -> None:
    result = _validate_features(spark, tmp_path, breaker(_feature_rows()))
    assert not result.success
    assert expected in _failed(result), result.summary()


def test_one_zero_vector_in_a_hundred_is_tolerated(spark, tmp_path: Path) -> None:
    rows = _feature_rows()
    rows[0]["features"] = [0.0] * DIM
    assert _validate_features(spark, tmp_path, rows).success


# ---- predictions suite ----

PREDICTION_SCHEMA = (
    "image_id string, source_uri string, predicted_label string, probability float, "
    "top_k array<struct<label:string,probability:float>>, anomaly_score double, video_id string, "
    "frame_index int, model_version string, job_version string, scored_at timestamp"
)


def _prediction_rows(n: int = 20) -> list[dict]:
    from datetime import UTC, datetime

    return [
        {
            "image_id": f"{i:064d}",
            "source_uri": f"file:///inbox/{i}.png",
            "predicted_label": CLASSES[i % 2],
            "probability": 0.9,
            "top_k": [{"label": CLASSES[i % 2], "probability": 0.9}, {"label": CLASSES[1 - i % 2], "probability": 0.1}],
            "anomaly_score": None,
            "video_id": None,
            "frame_index": None,
            "model_version": "cnn-1",
            "job_version": "0.1.0+abc",
            "scored_at": datetime(2026, 12, 2, tzinfo=UTC),
        }
        for i in range(n)
    ]


def _validate_predictions(spark, tmp_path: Path, rows: list[dict]):
    gate_cfg = PredictionsGateConfig(max_low_confidence=0.2)
    frame = spark.createDataFrame(rows, PREDICTION_SCHEMA)
    stats = suites.prediction_stats(frame, CLASSES, "classifier", 0.5, gate_cfg.probability_tolerance)
    batches = suites.prediction_batches(stats, CLASSES, None, "classifier", 0.5, gate_cfg)
    return gate.validate("score", batches, tmp_path / "report")


def test_good_predictions_pass(spark, tmp_path: Path) -> None:
    result = _validate_predictions(spark, tmp_path, _prediction_rows())
    assert result.success, result.summary()


def _no_version(rows: list[dict]) -> list[dict]:
    rows[0]["model_version"] = None
    return rows


def _scored_twice(rows: list[dict]) -> list[dict]:
    return [*rows, dict(rows[0])]


def _unknown_class(rows: list[dict]) -> list[dict]:
    rows[0]["predicted_label"] = "cow"
    return rows


def _probability_above_one(rows: list[dict]) -> list[dict]:
    rows[0]["probability"] = 1.5
    return rows


def _top_k_over_one(rows: list[dict]) -> list[dict]:
    rows[0]["top_k"] = [{"label": "cat", "probability": 0.9}, {"label": "dog", "probability": 0.5}]
    return rows


def _no_top_k(rows: list[dict]) -> list[dict]:
    rows[0]["top_k"] = []
    return rows


def _frames(rows: list[dict]) -> list[dict]:
    for i, r in enumerate(rows[:4]):  # frames 0-3 of one video, each its own image_id
        r["video_id"], r["frame_index"] = "f" * 64, i
    return rows


def _frame_twice(rows: list[dict]) -> list[dict]:
    rows = _frames(rows)
    rows[1]["frame_index"] = 0  # another image_id for frame 0: a video's frame scored twice
    return rows


def _frame_without_index(rows: list[dict]) -> list[dict]:
    rows = _frames(rows)
    rows[2]["frame_index"] = None
    return rows


def _unsure(rows: list[dict]) -> list[dict]:
    for r in rows[:5]:  # 5 of 20 below 0.5 > 20 %
        r["probability"] = 0.3
    return rows


@pytest.mark.parametrize(
    ("breaker", "column"),
    [
        (_no_version, "null_model_version"),
        (_scored_twice, "repeated_prediction"),
        (_frame_twice, "repeated_frame"),
        (_frame_without_index, "frame_without_index"),
        (_unknown_class, "predicted_label_not_in_set"),
        (_probability_above_one, "probability_out_of_range"),
        (_top_k_over_one, "top_k_sum_out_of_range"),
        (_no_top_k, "top_k_empty"),
        (_unsure, "low_confidence_share"),
    ],
)
def test_each_broken_prediction_rule_stops_the_gate(spark, tmp_path: Path, breaker, column) -> None:
    result = _validate_predictions(spark, tmp_path, breaker(_prediction_rows()))
    assert not result.success
    assert ("predictions", "expect_column_values_to_be_between", column) in _failed(result), result.summary()


BREAKERS = [_no_version, _scored_twice, _frames, _frame_twice, _frame_without_index, _unknown_class]
BREAKERS += [_probability_above_one, _top_k_over_one, _no_top_k, _unsure]


def test_a_stream_batch_is_counted_with_pyarrow_as_with_spark(spark) -> None:
    """The stream's driver-side statistics of a micro-batch equal the Spark pass's, rule by rule,
    on rows breaking each rule (and on good rows): one suite, two engines."""
    from pyspark.sql.pandas.types import to_arrow_schema

    frame_schema = spark.createDataFrame([], PREDICTION_SCHEMA).schema
    arrow_schema = to_arrow_schema(frame_schema, timezone="UTC")
    anomaly = (_no_version, _frame_twice, _frame_without_index)  # its own rules: null_anomaly_score
    for breaker in [lambda rows: rows, *BREAKERS]:
        rows = breaker(_prediction_rows())
        for task in ("classifier", "anomaly") if breaker in anomaly else ("classifier",):
            expected = suites.prediction_stats(spark.createDataFrame(rows, PREDICTION_SCHEMA), CLASSES, task, 0.5, 1e-4)
            got = suites.prediction_stats_arrow(pa.Table.from_pylist(rows, arrow_schema), CLASSES, task, 0.5, 1e-4)
            assert got == expected, (breaker, task)
            assert list(suites.prediction_rules(CLASSES, task, 0.5, 1e-4)) == suites.prediction_rule_names(task)


def test_a_stream_judges_confidence_over_its_window_not_its_micro_batch(tmp_path: Path) -> None:
    """The share check reads the rolling window it is given, and waits until it holds enough rows."""
    gate_cfg = PredictionsGateConfig(max_low_confidence=0.2)
    rows = _prediction_rows(2)
    for r in rows:
        r["probability"] = r["top_k"][0]["probability"] = 0.3
        r["top_k"][1]["probability"] = 0.1
    stats = suites.prediction_stats_arrow(pa.Table.from_pylist(rows), CLASSES, "classifier", 0.5, 1e-4)
    assert (stats.totals["rows"], stats.totals["low_confidence"]) == (2, 2)

    def verdict(volume: suites.Volume, min_rows: int) -> bool:
        batches = suites.prediction_batches(stats, CLASSES, None, "classifier", 0.5, gate_cfg, volume, min_rows)
        return gate.validate("score-stream", batches, None).success

    assert not verdict(suites.Volume(2, 2, {"cat": 2}), 0)  # the micro-batch alone: 100 % unsure
    assert verdict(suites.Volume(100, 12, {"cat": 60, "dog": 40}), 50)  # 12 % over the window
    assert verdict(suites.Volume(2, 2, {"cat": 2}), 50)  # too few rows to judge yet
    assert not (tmp_path / "report").exists()  # no report, no Data Docs written for a passing batch


def test_class_drift_stops_a_big_enough_batch(spark, tmp_path: Path) -> None:
    gate_cfg = PredictionsGateConfig(max_class_drift=0.2, min_rows_for_drift=10)
    trained = {"cat": 50, "dog": 50}
    rows = _prediction_rows()
    for r in rows:  # every image predicted "cat": its share 1.0 against 0.5 in training
        r["predicted_label"] = r["top_k"][0]["label"] = "cat"
    frame = spark.createDataFrame(rows, PREDICTION_SCHEMA)

    def verdict(frame, min_rows: int) -> gate.GateResult:
        stats = suites.prediction_stats(frame, CLASSES, "classifier", 0.5, gate_cfg.probability_tolerance)
        config = gate_cfg.model_copy(update={"min_rows_for_drift": min_rows})
        return gate.validate(
            "score", suites.prediction_batches(stats, CLASSES, trained, "classifier", 0.5, config), tmp_path
        )

    assert ("class_drift", "expect_column_values_to_be_between", "gap") in _failed(verdict(frame, 10))
    assert verdict(frame, 21).success  # a batch too small to judge its drift
    balanced = spark.createDataFrame(_prediction_rows(), PREDICTION_SCHEMA)
    assert verdict(balanced, 10).success


# ---- the dataset audit ----------------------------------------------------------------------

FLAGS = ["blurry", "dark", "light", "low_contrast", "low_information", "grayscale", "odd_aspect"]


def _audit(spark, rows: list[dict], pairs: list[tuple[str, str]], split_by: str) -> suites.Audit:
    images = spark.createDataFrame(rows, SCHEMA)
    pair_frame = spark.createDataFrame(pairs, "image_id_a string, image_id_b string")
    summary = suites.near_duplicate_summary(images.select("image_id", "split", "cluster_id"), pair_frame)
    return suites.Audit(summary, suites.flag_shares(images.select("label", "flags"), CLASSES, FLAGS), split_by)


def _clustered(rows: list[dict], spread: bool) -> tuple[list[dict], list[tuple[str, str]]]:
    """Three near-duplicates of the first image: in its split, or (``spread``) in another one too."""
    rows = [dict(r) for r in rows]
    first = rows[0]
    pairs = []
    for r in rows[1:4]:
        r["cluster_id"] = first["image_id"]
        r["split"] = first["split"]
        pairs.append((first["image_id"], r["image_id"]))
    if spread:
        rows[3]["split"] = next(s for s in ("train", "val", "test") if s != first["split"])
    return rows, pairs


def _validate_audit(spark, tmp_path: Path, audit: suites.Audit, gate_config: RawGateConfig):
    checks = suites.audit_batches(audit, gate_config)
    return gate.validate("ingest", checks, tmp_path / "report")


def test_a_cluster_kept_in_one_split_passes_and_its_figures_are_counted(spark, tmp_path: Path) -> None:
    rows, pairs = _clustered(_rows(), spread=False)
    audit = _audit(spark, rows, pairs, "cluster")
    figures = audit.near_duplicates.iloc[0].to_dict()
    assert figures == {
        "pairs": 3,
        "clusters": 1,
        "images_in_clusters": 4,
        "clusters_spanning_splits": 0,
        "cross_split_pairs": 0,
    }
    assert _validate_audit(spark, tmp_path, audit, RawGateConfig()).success


def test_a_cluster_spanning_two_splits_stops_the_gate(spark, tmp_path: Path) -> None:
    """Broken on purpose: one copy of a cluster moved to another split."""
    rows, pairs = _clustered(_rows(), spread=True)
    result = _validate_audit(spark, tmp_path, _audit(spark, rows, pairs, "cluster"), RawGateConfig())
    assert not result.success
    assert ("near_duplicates", "expect_column_values_to_be_between", "clusters_spanning_splits") in _failed(result)


def test_with_splits_by_image_the_pairs_across_splits_are_held_to_their_allowance(spark, tmp_path: Path) -> None:
    rows, pairs = _clustered(_rows(), spread=True)
    audit = _audit(spark, rows, pairs, "image")
    assert audit.near_duplicates.iloc[0]["cross_split_pairs"] == 1
    assert not _validate_audit(spark, tmp_path / "strict", audit, RawGateConfig()).success
    assert _validate_audit(spark, tmp_path / "allowed", audit, RawGateConfig(max_cross_split_pairs=1)).success


def test_a_class_with_too_many_flagged_images_stops_the_gate(spark, tmp_path: Path) -> None:
    rows = [dict(r) for r in _rows()]
    dogs = [r for r in rows if r["label"] == "dog"]
    for r in dogs[: int(0.6 * len(dogs))]:
        r["flags"] = ["blurry", "grayscale"]
    audit = _audit(spark, rows, [], "cluster")
    shares = audit.flags.set_index("label")
    assert shares.loc["dog", "blurry_share"] == pytest.approx(0.6, abs=0.03)
    assert shares.loc["cat", "blurry_share"] == 0.0
    result = _validate_audit(spark, tmp_path, audit, RawGateConfig())
    assert _failed(result) == {("quality_flags", "expect_column_values_to_be_between", "blurry_share")}
    assert not any(c["kwargs"].get("column") == "grayscale_share" for c in result.checks)  # 1.0: not gated
