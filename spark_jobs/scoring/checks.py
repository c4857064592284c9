"""The predictions gate's suite (:mod:`spark_jobs.quality.suites`) on what a scoring run made:
a batch run's staged table in one Spark job, a micro-batch's rows on the driver with pyarrow,
its volume checks over the stream's rolling window. Both evaluate the same rules."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pyarrow as pa

from spark_jobs.quality import suites
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.model import Scorer

if TYPE_CHECKING:
    from pyspark.sql import DataFrame

    from spark_jobs.quality.gate import Batch


def batch_checks(predictions: DataFrame, scorer: Scorer, cfg: ScoreParams) -> tuple[list[Batch], dict[str, int]]:
    """``(the suite's batches, rows per predicted label)`` of a batch run's staged predictions."""
    low, task, labels = cfg.score.low_confidence, scorer.card.task, scorer.labels()
    stats = suites.prediction_stats(predictions, labels, task, low, cfg.gate.predictions.probability_tolerance)
    batches = suites.prediction_batches(stats, labels, scorer.card.class_counts, task, low, cfg.gate.predictions)
    return batches, stats.by(0)


def low_confidence_flags(table: pa.Table, low: float) -> list[bool]:
    """Each row's low-confidence flag (an anomaly model's rows have no probability: never low)."""
    return [p is not None and p < low for p in table.column("probability").to_pylist()]


def window_checks(table: pa.Table, scorer: Scorer, cfg: ScoreParams, window: suites.Volume) -> list[Batch]:
    """The suite on a micro-batch: its row rules on its rows; the low-confidence share and class
    drift over ``window`` (the stream's rolling window with these rows in it), once it holds
    ``score.stream.min_window_rows`` rows."""
    low, task, labels = cfg.score.low_confidence, scorer.card.task, scorer.labels()
    stats = suites.prediction_stats_arrow(table, labels, task, low, cfg.gate.predictions.probability_tolerance)
    return suites.prediction_batches(
        stats,
        labels,
        scorer.card.class_counts,
        task,
        low,
        cfg.gate.predictions,
        window,
        cfg.score.stream.min_window_rows,
    )
