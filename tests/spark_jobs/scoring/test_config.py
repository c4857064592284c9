"""What the score stage reads of params.yaml: its section, the predictions gate, the champions."""

from __future__ import annotations

import pytest

from spark_jobs.core.config import ConfigError, load_config
from spark_jobs.scoring.config import ScoreParams, StreamConfig
from tests.factories import REPO


def test_the_score_stage_reads_its_sections_only() -> None:
    cfg = load_config(REPO / "params.yaml", ["score.stream.trigger_s=0.5", "train.cnn.epochs=oops"], ScoreParams)
    assert cfg.score.stream.trigger_s == 0.5
    assert cfg.evaluate.champion == "models/champion"
    assert cfg.gate.predictions.max_low_confidence == 0.2
    assert not hasattr(cfg, "train")  # the train section is train's to validate
    assert set(cfg.section("score", "gate.predictions", "data")) == {"score", "gate.predictions", "data"}


def test_a_bad_stream_setting_is_one_line() -> None:
    with pytest.raises(ConfigError, match=r"^parameter score.stream.max_files_per_trigger: Input should be greater"):
        load_config(REPO / "params.yaml", ["score.stream.max_files_per_trigger=0"], ScoreParams)
    with pytest.raises(ConfigError, match=r"^unknown parameter score.stream.trigger"):
        load_config(REPO / "params.yaml", ["score.stream.trigger=1"], ScoreParams)
    assert StreamConfig().available_now is False  # a stream runs until it is stopped
