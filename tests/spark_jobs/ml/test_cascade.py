"""The cascade: which pairs of models make one, and what it scores on a test split."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from spark_jobs.core.config import ConfigError
from spark_jobs.ml.cascade import CascadeConfig, cascade_metrics, cascade_parts
from tests.factories import model_card, model_folder


def test_the_light_model_decides_what_it_is_sure_of() -> None:
    light = pd.DataFrame(
        {
            "image_id": ["a", "b", "c", "d"],
            "label": ["x", "x", "y", "y"],
            "prediction": [0, 1, 1, 0],
            "probability": [0.95, 0.5, 0.99, 0.6],
        }
    )
    heavy = pd.DataFrame({"image_id": ["a", "b", "c", "d"], "prediction": [1, 0, 1, 1]})
    got = cascade_metrics(light, heavy, ["x", "y"], 0.9)
    # a: light (sure, right); b: heavy (right); c: light (right); d: heavy (right)
    assert got == {"confidence": 0.9, "accuracy": 1.0, "macro_f1": 1.0, "heavy_fraction": 0.5, "test_rows": 4}
    assert cascade_metrics(light, heavy, ["x", "y"], 0.0)["accuracy"] == 0.5  # the light model alone


def test_a_cascade_is_an_mllib_light_model_and_a_cnn_of_the_same_classes(tmp_path: Path) -> None:
    light = model_folder(tmp_path / "mllib", kind="mllib", version="mllib-v")
    cfg = CascadeConfig(enabled=True, light=str(light))
    folder, card = cascade_parts(cfg, model_card())
    assert (folder, card.version) == (light, "mllib-v")
    with pytest.raises(ConfigError, match="an mllib light model and a cnn heavy one; got mllib"):
        cascade_parts(cfg, model_card(kind="autoencoder", task="anomaly"))
    other = model_folder(tmp_path / "other", kind="mllib", classes=["0", "1", "2"])
    with pytest.raises(ConfigError, match="trained on different classes"):
        cascade_parts(CascadeConfig(light=str(other)), model_card())
