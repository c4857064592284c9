"""The ingest section: its rules across keys, and the defaults every table records."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spark_jobs.core.config import DEFAULT_SOURCE
from spark_jobs.core.ingest_config import IngestConfig, PreprocessConfig, SplitConfig


def test_split_fractions_must_sum_to_one() -> None:
    assert SplitConfig().fractions() == {"train": 0.7, "val": 0.15, "test": 0.15}
    assert SplitConfig(train=0.5, val=0.25, test=0.25).fractions()["train"] == 0.5
    with pytest.raises(ValidationError, match=r"train \+ val \+ test must be 1\.0, got 1\.1"):
        SplitConfig(train=0.8)


def test_a_median_kernel_is_odd() -> None:
    assert PreprocessConfig(denoise="median", median_size=5).median_size == 5
    with pytest.raises(ValidationError, match="median_size must be odd"):
        PreprocessConfig(median_size=4)


def test_extensions_are_dotted_and_lower_case() -> None:
    assert IngestConfig(extensions=(".png",)).extensions == (".png",)
    for bad in ((".PNG",), ("png",)):
        with pytest.raises(ValidationError, match=r"lower-case and start with '\.'"):
            IngestConfig(extensions=bad)


def test_defaults_and_the_settings_a_table_records() -> None:
    cfg = IngestConfig()
    assert cfg.source == DEFAULT_SOURCE
    assert (cfg.image_size, cfg.resize.policy, cfg.alpha_background) == (32, "pad", (255, 255, 255))
    recorded = cfg.model_dump(mode="json")
    assert IngestConfig.model_validate(recorded) == cfg  # read back from a manifest or card as it was
    with pytest.raises(ValidationError, match="extra"):
        IngestConfig.model_validate(recorded | {"imagesize": 64})
