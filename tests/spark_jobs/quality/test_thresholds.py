"""The gate section: each suite's thresholds, bounded."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from spark_jobs.quality.thresholds import GateConfig, PredictionsGateConfig, RawGateConfig


def test_defaults() -> None:
    gate = GateConfig()
    assert (gate.raw.min_per_class, gate.raw.max_quarantine_ratio) == (20, 0.05)
    assert gate.predictions.max_class_drift is None  # the drift alarm is off unless set
    assert (gate.model.min_accuracy, gate.model.min_auroc) == (0.9, 0.8)


@pytest.mark.parametrize(
    ("section", "values", "key"),
    [
        (RawGateConfig, {"max_quarantine_ratio": 1.5}, "max_quarantine_ratio"),
        (PredictionsGateConfig, {"probability_tolerance": 0.5}, "probability_tolerance"),
        (PredictionsGateConfig, {"min_rows_for_drift": 0}, "min_rows_for_drift"),
        (GateConfig, {"predictions": {"max_low_confidance": 0.1}}, "max_low_confidance"),
    ],
)
def test_out_of_range_or_unknown_values_are_refused(section: type, values: dict, key: str) -> None:
    with pytest.raises(ValidationError, match=key):
        section.model_validate(values)
