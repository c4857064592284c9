"""The cascade (``score.cascade``): a light MLlib model decides the images it is sure of, a heavy
cnn the rest. Its parameters, the check that two models can form one, and what it would score on
a test split (evaluate reports it beside the models)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from spark_jobs.core.config import ConfigError, LocalPath, Section
from spark_jobs.ml.cards import MODELS, ModelCard, read_card
from spark_jobs.ml.metrics import classifier_metrics


class CascadeConfig(Section):
    """``score.cascade``."""

    enabled: bool = False
    light: LocalPath = f"{MODELS}/mllib"
    confidence: float = Field(0.9, ge=0.0, le=1.0)
    # A tiles_attention model: the share of each image's tiles its light screen sends to the
    # backbone and the attention (1: every tile, no tile cascade).
    tile_fraction: float = Field(1.0, gt=0.0, le=1.0)


def cascade_parts(cfg: CascadeConfig, card: ModelCard) -> tuple[Path, ModelCard]:
    """The light model of the cascade, checked against the heavy one (``card``)."""
    light_folder = Path(cfg.light)
    light = read_card(light_folder)
    if light.kind != "mllib" or card.kind != "cnn":
        raise ConfigError(
            f"score.cascade needs an mllib light model and a cnn heavy one; got {light.kind} "
            f"({light_folder}) and {card.kind}"
        )
    if light.classes != card.classes:
        raise ConfigError(f"score.cascade: {light_folder} and the heavy model were trained on different classes")
    return light_folder, light


def cascade_metrics(light: pd.DataFrame, heavy: pd.DataFrame, classes: list[str], confidence: float) -> dict[str, Any]:
    """The cascade on a test split (``image_id``, ``label``, ``prediction``, ``probability`` of
    each model): the light prediction where its probability reaches ``confidence``, the heavy one's
    elsewhere; accuracy, macro-F1 and the share that reached the heavy model."""
    joined = light.merge(heavy[["image_id", "prediction"]], on="image_id", suffixes=("_light", "_heavy"))
    unsure = joined["probability"] < confidence
    decided = pd.DataFrame(
        {"label": joined["label"], "prediction": joined["prediction_heavy"].where(unsure, joined["prediction_light"])}
    )
    result, _ = classifier_metrics(decided, classes)
    return {
        "confidence": confidence,
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "heavy_fraction": round(float(unsure.mean()), 6) if len(unsure) else None,
        "test_rows": result["test_rows"],
    }
