"""Which model a scoring run uses and the version its rows are recorded under."""

from __future__ import annotations

from pathlib import Path

import pytest

from spark_jobs.core.config import ConfigError, load_config
from spark_jobs.scoring import heads, model
from spark_jobs.scoring.config import ScoreParams
from tests.factories import REPO, model_folder


def _cfg(*overrides: str) -> ScoreParams:
    return load_config(REPO / "params.yaml", list(overrides), ScoreParams)


def test_the_champion_of_the_task_unless_a_model_is_named(tmp_path: Path) -> None:
    assert model.model_folder(_cfg()) == Path("models/champion/classifier")
    assert model.model_folder(_cfg("score.task=anomaly", f"evaluate.champion={tmp_path}")) == tmp_path / "anomaly"
    assert model.model_folder(_cfg(f"score.model={tmp_path / 'm'}")) == tmp_path / "m"


def test_an_int8_copy_and_a_cascade_are_versions_of_their_own(tmp_path: Path) -> None:
    cnn = model_folder(tmp_path / "cnn", version="cnn-v")
    light = model_folder(tmp_path / "mllib", kind="mllib", version="mllib-v")
    plain = model.scorer(_cfg(f"score.model={cnn}"))
    assert (plain.version, plain.kind, plain.decider) == ("cnn-v", "cnn", "cnn")
    assert plain.labels() == ["0", "1"]
    assert plain.describe() == {"folder": str(cnn), "version": "cnn-v", "kind": "cnn"}
    int8 = model.scorer(_cfg(f"score.model={cnn}", "score.quantize=int8"))
    assert (int8.version, int8.decider) == ("cnn-v-int8", "cnn-int8")
    cascade = model.scorer(
        _cfg(
            f"score.model={cnn}",
            "score.cascade.enabled=true",
            f"score.cascade.light={light}",
            "score.cascade.confidence=0.8",
        )
    )
    assert (cascade.version, cascade.kind) == ("cascade-mllib-v+cnn-v@0.8", "cascade")
    with pytest.raises(ConfigError, match="int8 applies to cnn models"):
        model.scorer(_cfg(f"score.model={light}", "score.quantize=int8"))


def test_an_anomaly_model_labels_its_rows_normal_or_anomaly(tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "ae", kind="autoencoder", task="anomaly", version="ae-v")
    assert model.scorer(_cfg(f"score.model={folder}")).labels() == list(heads.ANOMALY_LABELS)


def test_an_mllib_model_needs_classical_features(tmp_path: Path) -> None:
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "extractor.json").write_text('{"kind": "cnn"}')
    with pytest.raises(ConfigError, match="trained on cnn features is not supported"):
        model.classical_extractor(folder)
