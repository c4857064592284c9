"""Running a trained torch model over the image table on the executors, in Arrow batches.

The model is described by a small picklable :class:`TorchModel` (weights URI, sha256,
architecture); each Python worker loads it once (:func:`spark_jobs.models.cached_model`) and runs
it on batches of ``batch_size`` images with ``threads`` torch threads.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from spark_jobs import images, models
from spark_jobs.config import ConfigError

KEYS = ("image_id", "label")


def classified_schema(keys: tuple[str, ...] = KEYS) -> str:
    """The rows :func:`classify_batches` yields: ``keys`` passed through, then the predicted class
    index, its softmax probability and all of them."""
    return ", ".join(f"{k} string" for k in keys) + ", prediction int, probability float, probabilities array<float>"


def scored_schema(keys: tuple[str, ...] = KEYS) -> str:
    """The rows :func:`score_batches` yields: ``keys`` passed through, then the anomaly score."""
    return ", ".join(f"{k} string" for k in keys) + ", score double"


CLASSIFIED_SCHEMA = classified_schema()
SCORED_SCHEMA = scored_schema()


@dataclass(frozen=True)
class TorchModel:
    """What a worker needs to load a trained torch model: its weights file and how to build it."""

    weights: str
    sha256: str
    architecture: str
    arch_json: str
    calibration: str | None = None  # set: the static INT8 copy, calibrated on these images

    @classmethod
    def from_card(cls, folder: Path, card: dict[str, Any], quantize: str = "none") -> TorchModel:
        calibration = None
        if quantize == "int8":
            name = card["files"].get("calibration")
            if card["kind"] != "cnn" or name is None:
                raise ConfigError(
                    f"INT8 scoring needs a cnn model trained with calibration images; {folder} holds a "
                    f"{card['kind']} model{'' if name else ' without them (retrain it)'}"
                )
            calibration = str((folder / name).absolute())
        return cls(
            weights=str((folder / card["files"]["weights"]).absolute()),
            sha256=card["weights_sha256"],
            architecture=card["architecture"],
            arch_json=json.dumps(card["arch"], sort_keys=True),
            calibration=calibration,
        )

    def load(self) -> Any:
        return models.cached_model(self.weights, self.sha256, self.architecture, self.arch_json, self.calibration)


def _batches(batches: Iterator[pa.RecordBatch], size: int) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
    """``(rows, pixels as float NCHW in [0, 1])`` in chunks of at most ``size`` images."""
    for batch in batches:
        for start in range(0, batch.num_rows, size):
            part = batch.slice(start, size)
            if part.num_rows == 0:
                continue
            h, w = part.column("height")[0].as_py(), part.column("width")[0].as_py()
            pixels = images.stack_pixels(part.column("pixels"), h, w)
            yield part, pixels


def classify_batches(
    batches: Iterator[pa.RecordBatch], model: TorchModel, batch_size: int, threads: int, keys: tuple[str, ...] = KEYS
) -> Iterator[pa.RecordBatch]:
    """:func:`classified_schema` rows of the images in ``batches``."""
    import torch

    torch.set_num_threads(threads)
    net = model.load()
    for part, pixels in _batches(batches, batch_size):
        with torch.inference_mode():
            probs = torch.softmax(net(models.to_tensor(pixels)), dim=1).numpy().astype(np.float32)
        k = probs.shape[1]
        offsets = pa.array(np.arange(0, (len(probs) + 1) * k, k, dtype=np.int32))
        yield pa.RecordBatch.from_pydict(
            {
                **{k: part.column(k) for k in keys},
                "prediction": pa.array(probs.argmax(1).astype(np.int32)),
                "probability": pa.array(probs.max(1)),
                "probabilities": pa.ListArray.from_arrays(offsets, pa.array(probs.ravel())),
            }
        )


def score_batches(
    batches: Iterator[pa.RecordBatch], model: TorchModel, batch_size: int, threads: int, keys: tuple[str, ...] = KEYS
) -> Iterator[pa.RecordBatch]:
    """:func:`scored_schema` rows: the autoencoder's reconstruction error of each image."""
    import torch

    torch.set_num_threads(threads)
    net = model.load()
    for part, pixels in _batches(batches, batch_size):
        with torch.inference_mode():
            scores = models.reconstruction_error(net, models.to_tensor(pixels)).numpy().astype(np.float64)
        yield pa.RecordBatch.from_pydict({**{k: part.column(k) for k in keys}, "score": pa.array(scores)})
