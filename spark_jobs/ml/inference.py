"""Running a trained torch model over the image table on the executors, in Arrow batches.

The model is described by a small picklable :class:`TorchModel` (weights URI, sha256,
architecture); each Python worker loads it once (:func:`spark_jobs.ml.models.cached_model`) and runs
it on batches of ``batch_size`` images with ``threads`` torch threads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spark_jobs.core.config import ConfigError
from spark_jobs.imaging import images
from spark_jobs.ml import models

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

    from spark_jobs.ml.cards import ModelCard

KEYS = ("image_id", "label")


@dataclass(frozen=True)
class TorchModel:
    """What a worker needs to load a trained torch model: its weights file and how to build it."""

    weights: str
    sha256: str
    architecture: str
    arch_json: str
    task: str = "classifier"  # or "anomaly" (an autoencoder)
    calibration: str | None = None  # set: the static INT8 copy, calibrated on these images

    @classmethod
    def from_card(cls, folder: Path, card: ModelCard, quantize: str = "none") -> TorchModel:
        calibration = None
        if quantize == "int8":
            name = card.files.calibration
            if card.kind != "cnn" or name is None:
                raise ConfigError(
                    f"INT8 scoring needs a cnn model trained with calibration images; {folder} holds a "
                    f"{card.kind} model{'' if name else ' without them (retrain it)'}"
                )
            calibration = str((folder / name).absolute())
        return cls(
            weights=str((folder / str(card.files.weights)).absolute()),
            sha256=str(card.weights_sha256),
            architecture=str(card.architecture),
            arch_json=json.dumps(card.arch, sort_keys=True),
            task=card.task,
            calibration=calibration,
        )

    def load(self) -> Any:
        return models.cached_model(self.weights, self.sha256, self.architecture, self.arch_json, self.calibration)


@dataclass(frozen=True)
class Predictor:
    """A torch model applied to ``(N, H, W, 3)`` uint8 pixels in forward passes of ``batch_size``
    images with ``threads`` torch threads: the classifier's predicted index, its probability and all
    of them, or the autoencoder's anomaly score (:meth:`outputs`), for at least one image.
    Picklable; the weights are loaded once per Python worker."""

    model: TorchModel
    batch_size: int
    threads: int

    def outputs(self) -> pa.Schema:
        if self.model.task == "anomaly":
            return pa.schema([("score", pa.float64())])
        return pa.schema(
            [("prediction", pa.int32()), ("probability", pa.float32()), ("probabilities", pa.list_(pa.float32()))]
        )

    def raw(self, pixels: np.ndarray) -> np.ndarray:
        """The classifier's ``(N, C)`` softmax probabilities (float32), or the autoencoder's ``(N,)``
        reconstruction errors (float64)."""
        import torch

        torch.set_num_threads(self.threads)
        net = self.model.load()
        parts = []
        with torch.inference_mode():
            for start in range(0, len(pixels), self.batch_size):
                x = models.to_tensor(pixels[start : start + self.batch_size])
                if self.model.task == "anomaly":
                    parts.append(models.reconstruction_error(net, x).numpy().astype(np.float64))
                else:
                    parts.append(torch.softmax(net(x), dim=1).numpy().astype(np.float32))
        return np.concatenate(parts)

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        out = self.raw(pixels)
        if self.model.task == "anomaly":
            return {"score": pa.array(out)}
        return {
            "prediction": pa.array(out.argmax(1).astype(np.int32)),
            "probability": pa.array(out.max(1)),
            "probabilities": images.vectors_array(out),
        }


def predict_batches(
    batches: Iterator[pa.RecordBatch], predictor: Predictor, keys: tuple[str, ...] = KEYS
) -> Iterator[pa.RecordBatch]:
    """For each Arrow batch of an image table (``height``, ``width``, ``pixels``): ``keys`` passed
    through, then the predictor's columns (``predicted_schema(predictor, keys)``)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        h, w = batch.column("height")[0].as_py(), batch.column("width")[0].as_py()
        outputs = predictor(images.stack_pixels(batch.column("pixels"), h, w))
        yield pa.RecordBatch.from_pydict({**{k: batch.column(k) for k in keys}, **outputs})


def predicted_schema(predictor: Predictor, keys: tuple[str, ...] = KEYS) -> StructType:
    """The rows :func:`predict_batches` yields."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema([*((k, pa.string()) for k in keys), *predictor.outputs()]))
