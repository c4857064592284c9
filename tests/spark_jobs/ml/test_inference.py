"""A trained torch model run over Arrow batches, as the executors run it, on inline batches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from spark_jobs.core.config import ConfigError
from spark_jobs.ml import inference, models
from tests.factories import model_card


def _model(tmp_path: Path, task: str = "classifier") -> inference.TorchModel:
    torch.manual_seed(0)
    if task == "anomaly":
        net, architecture, arch = (
            models.autoencoder(4, 4, 8),
            "conv_autoencoder",
            {"width": 4, "latent": 4, "image_size": 8},
        )
    else:
        net, architecture, arch = models.classifier(4, 3), "small_cnn_classifier", {"width": 4, "classes": 3}
    path = tmp_path / f"{task}.pt"
    torch.save(net.state_dict(), path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return inference.TorchModel(str(path), sha, architecture, json.dumps(arch), task)


def _batch(n: int) -> pa.RecordBatch:
    pixels = np.random.default_rng(1).integers(0, 255, (n, 8, 8, 3), dtype=np.uint8)
    return pa.RecordBatch.from_pydict(
        {
            "image_id": [f"i{k}" for k in range(n)],
            "label": ["0"] * n,
            "height": pa.array([8] * n, pa.int32()),
            "width": pa.array([8] * n, pa.int32()),
            "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
        }
    )


def test_a_classifier_s_outputs_in_forward_passes_of_any_size(tmp_path: Path) -> None:
    predictor = inference.Predictor(_model(tmp_path), batch_size=2, threads=1)
    (out,) = list(inference.predict_batches(iter([_batch(5), _batch(0)]), predictor))
    assert out.schema.names == ["image_id", "label", "prediction", "probability", "probabilities"]
    probabilities = np.array(out.column("probabilities").to_pylist())
    assert probabilities.shape == (5, 3)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
    assert out.column("prediction").to_pylist() == probabilities.argmax(axis=1).tolist()
    whole = inference.Predictor(predictor.model, batch_size=64, threads=1)
    np.testing.assert_allclose(
        whole.raw(np.stack([np.zeros((8, 8, 3), np.uint8)] * 5)),
        predictor.raw(np.stack([np.zeros((8, 8, 3), np.uint8)] * 5)),
        rtol=1e-5,
    )


def test_an_autoencoder_gives_a_score(tmp_path: Path) -> None:
    predictor = inference.Predictor(_model(tmp_path, "anomaly"), batch_size=4, threads=1)
    assert predictor.outputs().names == ["score"]
    (out,) = list(inference.predict_batches(iter([_batch(3)]), predictor))
    assert all(s > 0 for s in out.column("score").to_pylist())


def test_changed_weights_are_refused(tmp_path: Path) -> None:
    model = _model(tmp_path)
    Path(model.weights).write_bytes(Path(model.weights).read_bytes() + b"x")
    with pytest.raises(models.BackboneError, match="changed"):
        inference.Predictor(model, 2, 1).raw(np.zeros((1, 8, 8, 3), np.uint8))


def test_int8_needs_a_cnn_with_calibration_images(tmp_path: Path) -> None:
    (tmp_path / "model.pt").write_bytes(b"weights")
    sha = hashlib.sha256(b"weights").hexdigest()
    with pytest.raises(ConfigError, match="without them"):
        inference.TorchModel.from_card(tmp_path, model_card(weights_sha256=sha), "int8")
    card = model_card(files={"weights": "model.pt", "calibration": "calibration.npy"}, weights_sha256=sha)
    assert inference.TorchModel.from_card(tmp_path, card, "int8").calibration == str(
        (tmp_path / "calibration.npy").absolute()
    )
