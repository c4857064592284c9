"""The ``score`` section (with ``score.stream``), and what the score stage reads of params.yaml:
:class:`ScoreParams`. Only the score stage imports this module, so editing the stream's or the
batch run's settings re-runs no training stage (``dvc status``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spark_jobs.core.config import DEFAULT_INBOX, LocalPath, Params, Section, SourcePath
from spark_jobs.imaging.video import VideoConfig
from spark_jobs.ml.cards import Champions
from spark_jobs.ml.cascade import CascadeConfig
from spark_jobs.ml.drift import DriftConfig
from spark_jobs.quality.thresholds import GateConfig


class StreamConfig(Section):
    """``score.stream``: micro-batches over the inbox (:mod:`spark_jobs.scoring.stream`)."""

    trigger_s: float = Field(1.0, gt=0.0)  # a micro-batch starts at most this often
    max_files_per_trigger: int = Field(1000, ge=1)
    window_rows: int = Field(2000, ge=1)  # the volume checks' rolling window: the last N rows
    min_window_rows: int = Field(200, ge=1)  # volume checks wait until the window holds this many
    stop_on_reject: bool = False  # exit with code 3 after a rejected micro-batch
    retry_rejected_s: float = Field(600.0, ge=0.0)  # a rejected batch's files are retried after this
    dedupe_hours: int = Field(168, ge=1)  # hours of the stream table the already-scored lookup reads
    latency_batches: int = Field(100, ge=1)  # the status's latency percentiles: the last N batches
    available_now: bool = False  # score what is in the inbox, then stop (a backfill; the tests)


class ScoreConfig(Section):
    """``score``."""

    mode: Literal["batch", "stream"] = "batch"
    inbox: SourcePath = DEFAULT_INBOX
    model: LocalPath | None = None
    task: Literal["classifier", "anomaly"] = "classifier"
    top_k: int = Field(3, ge=1)
    top_tiles: int = Field(3, ge=1, le=64)  # a tiles_attention model's most-weighted tiles a row keeps
    heatmaps: bool = False  # a tiles_attention model: each scored image's attention as a PNG beside the report
    quantize: Literal["none", "int8"] = "none"
    batch_size: int = Field(64, ge=1)
    threads: int = Field(1, ge=1, le=256)
    low_confidence: float = Field(0.5, ge=0.0, le=1.0)
    # A second model run on the same decoded pixels, its rows in the shadow table, never in the
    # predictions: a model folder, or "candidate" (the newest model evaluate passed and did not promote).
    shadow: str | None = None
    cascade: CascadeConfig = CascadeConfig()
    video: VideoConfig = VideoConfig()
    stream: StreamConfig = StreamConfig()


class ScoreParams(Params):
    """What the score stage reads: ``score``, the predictions gate, the drift test, ``ingest.source``
    and the champions' folder."""

    score: ScoreConfig = ScoreConfig()  # type: ignore[assignment]
    gate: GateConfig = GateConfig()
    evaluate: Champions = Champions()
    drift: DriftConfig = DriftConfig()
