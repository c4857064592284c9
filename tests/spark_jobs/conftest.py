"""Fixtures of the stage tests: one set of trained models for every scoring test of the session."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs import features, train
from spark_jobs.params import Config
from tests.factories import SMALL_MODELS, link_ingest, with_overrides

# Torch ranks on the driver: quick for these small models.
LOCAL_TORCH = ("train.num_processes=1", "train.local_mode=true")


@pytest.fixture(scope="session")
def trained(spark, ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """Features, and an mllib, a cnn and an autoencoder model of the ingested fixture."""
    tmp = tmp_path_factory.mktemp("trained")
    cfg = link_ingest(ingested, tmp, *SMALL_MODELS, *LOCAL_TORCH, f"train.output={tmp / 'models'}")
    features.run(cfg, spark)
    for kind in ("mllib", "cnn", "autoencoder"):
        train.run(with_overrides(cfg, f"train.model={kind}"), spark)
    return cfg
