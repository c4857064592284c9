"""Model cards: the ``card.json`` beside every trained model, and where a model of a kind lives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from spark_jobs.core.config import Config
from spark_jobs.core.store import SourceError

CARD = "card.json"
WEIGHTS = "model.pt"
CALIBRATION = "calibration.npy"
TASKS = {"mllib": "classifier", "cnn": "classifier", "autoencoder": "anomaly"}
ARCHITECTURES = {"cnn": "small_cnn_classifier", "autoencoder": "conv_autoencoder"}


def model_dir(cfg: Config, kind: str) -> Path:
    return Path(cfg.train.output) / kind


def read_card(folder: Path) -> dict[str, Any]:
    """A model folder's card; :class:`SourceError` when there is no trained model there."""
    path = folder / CARD
    if not path.exists():
        raise SourceError(f"no trained model at {folder} (no {CARD}): run `python -m spark_jobs.train` first")
    return json.loads(path.read_text())
