"""The whole of params.yaml, every section validated: for the tools that read all of it (Airflow's
Params hand-off and asset extras, the benchmarks, the tests). A stage never imports this module: it
reads only its own sections (:class:`spark_jobs.core.config.Params`), so a section's schema is a
DVC dependency of the stages that read it and of no other."""

from __future__ import annotations

from pathlib import Path

from spark_jobs.backbone import BackboneConfig
from spark_jobs.core import config
from spark_jobs.core.config import Params
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.evaluate import EvaluateConfig
from spark_jobs.features import FeaturesConfig
from spark_jobs.ml.drift import DriftConfig
from spark_jobs.quality.thresholds import GateConfig
from spark_jobs.sample import SampleConfig
from spark_jobs.scoring.config import ScoreConfig
from spark_jobs.train import TrainConfig


class Config(Params):
    """Every section of params.yaml."""

    sample: SampleConfig = SampleConfig()
    ingest: IngestConfig = IngestConfig()  # type: ignore[assignment]
    backbone: BackboneConfig = BackboneConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    score: ScoreConfig = ScoreConfig()  # type: ignore[assignment]
    gate: GateConfig = GateConfig()
    drift: DriftConfig = DriftConfig()


def load(path: str | Path = config.DEFAULT_PARAMS, overrides: list[str] | None = None) -> Config:
    """The whole params file, with ``--set`` style overrides applied."""
    return config.load_config(path, overrides, Config)
