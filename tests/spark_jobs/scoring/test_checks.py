"""The predictions suite on what a scoring run made: a micro-batch's rows and its rolling window."""

from __future__ import annotations

import pyarrow as pa

from spark_jobs.core.config import load_config
from spark_jobs.quality.suites import Volume
from spark_jobs.scoring import checks, heads
from spark_jobs.scoring.config import ScoreParams
from spark_jobs.scoring.model import Scorer
from tests.factories import REPO, model_card


def _table(probabilities: list[float | None]) -> pa.Table:
    n = len(probabilities)
    return pa.table(
        {
            "image_id": [f"{i:064x}" for i in range(n)],
            "source_uri": [f"u{i}" for i in range(n)],
            "predicted_label": ["0"] * n,
            "probability": pa.array(probabilities, pa.float32()),
            "top_k": pa.array(
                [[{"label": "0", "probability": p}] for p in probabilities],
                heads.TOP_K,
            ),
            "anomaly_score": pa.nulls(n, pa.float64()),
            "video_id": pa.nulls(n, pa.string()),
            "frame_index": pa.nulls(n, pa.int32()),
            "model_version": ["v"] * n,
            "job_version": ["j"] * n,
            "scored_at": pa.array([0] * n, pa.timestamp("us")),
        }
    )


def test_low_confidence_flags() -> None:
    assert checks.low_confidence_flags(_table([0.9, 0.2, None]), 0.5) == [False, True, False]


def test_a_micro_batch_is_judged_by_its_rows_and_its_window() -> None:
    cfg = load_config(REPO / "params.yaml", ["score.stream.min_window_rows=10"], ScoreParams)
    scorer = Scorer(REPO, model_card(), "v", "cnn")
    table = _table([0.3, 0.3])
    small = checks.window_checks(table, scorer, cfg, Volume(2, 2, {"0": 2}))
    (rows,) = small
    assert "low_confidence_share" not in rows.frame.columns  # too few rows in the window to judge it
    assert int(rows.frame.loc[0, "rows"]) == 2
    big = checks.window_checks(table, scorer, cfg, Volume(40, 4, {"0": 40}))
    assert float(big[0].frame.loc[0, "low_confidence_share"]) == 0.1  # the window's share, not the batch's
