"""The ``gate`` section: the thresholds of each stage's suite (:mod:`spark_jobs.quality.suites`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from spark_jobs.core.config import Section


class FlagSharesConfig(Section):
    """The largest share of a class's images that may carry each quality flag (1.0: not gated)."""

    blurry: float = Field(0.5, ge=0.0, le=1.0)
    dark: float = Field(0.5, ge=0.0, le=1.0)
    light: float = Field(0.5, ge=0.0, le=1.0)
    low_contrast: float = Field(0.5, ge=0.0, le=1.0)
    low_information: float = Field(0.5, ge=0.0, le=1.0)
    grayscale: float = Field(1.0, ge=0.0, le=1.0)
    odd_aspect: float = Field(0.5, ge=0.0, le=1.0)


class RawGateConfig(Section):
    min_per_class: int = Field(20, ge=0)
    max_quarantine_ratio: float = Field(0.05, ge=0.0, le=1.0)
    split_tolerance: float = Field(0.05, ge=0.0, le=1.0)
    split_false_alarm: float = Field(0.001, gt=0.0, lt=1.0)
    # With ingest.split.by: image, how many near-duplicate pairs may have their two images in two
    # splits (with split.by: cluster no cluster may span two splits, whatever this says).
    max_cross_split_pairs: int = Field(0, ge=0)
    max_flagged_share: FlagSharesConfig = FlagSharesConfig()

    def split_allowance(self, fraction: float, rows: int) -> float:
        """How far a split's observed fraction of ``rows`` images may stray from ``fraction``:
        ``split_tolerance``, or the half-width of the binomial interval a correct split stays
        inside but ``split_false_alarm`` of the time (normal approximation), whichever is wider.
        A split is a pure function of an image's hash, so on 24 images a 0.15 split holds 3.6 on
        average and often 1 or 7: a fixed 0.05 would stop a correct pipeline about half the time."""
        from statistics import NormalDist

        if rows <= 0:
            return 1.0
        z = NormalDist().inv_cdf(1.0 - self.split_false_alarm / 2.0)
        return max(self.split_tolerance, z * (fraction * (1.0 - fraction) / rows) ** 0.5)


class FeaturesGateConfig(Section):
    max_zero_fraction: float = Field(0.01, ge=0.0, le=1.0)


class ModelGateConfig(Section):
    min_accuracy: float = Field(0.9, ge=0.0, le=1.0)
    min_macro_f1: float = Field(0.9, ge=0.0, le=1.0)
    max_regression: float = Field(0.01, ge=0.0, le=1.0)
    min_auroc: float = Field(0.8, ge=0.0, le=1.0)


class PredictionsGateConfig(Section):
    max_low_confidence: float = Field(0.2, ge=0.0, le=1.0)
    max_class_drift: float | None = Field(None, ge=0.0, le=1.0)
    min_rows_for_drift: int = Field(200, ge=1)
    probability_tolerance: float = Field(1e-4, ge=0.0, le=0.1)
    drift: Literal["off", "warn", "fail"] = "warn"  # what an embedding-drift verdict does (spark_jobs.ml.drift)


class GateConfig(Section):
    raw: RawGateConfig = RawGateConfig()
    features: FeaturesGateConfig = FeaturesGateConfig()
    model: ModelGateConfig = ModelGateConfig()
    predictions: PredictionsGateConfig = PredictionsGateConfig()
