"""Running a trained torch model over the image table on the executors, in Arrow batches.

The model is described by a small picklable :class:`TorchModel` (weights URI, sha256,
architecture); each Python worker loads it once (:func:`spark_jobs.ml.models.cached_model`) and runs
it on batches of ``batch_size`` images with ``threads`` torch threads.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa

from spark_jobs.core.config import ConfigError
from spark_jobs.imaging import images, tiles
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
        """What workers need to load ``folder``'s model, its files checked here on the driver
        first (:func:`~spark_jobs.ml.cards.check_model`)."""
        from spark_jobs.ml.cards import check_model

        check_model(folder, card)
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

    @property
    def attends(self) -> bool:
        """Whether the model weighs each tile (``tiles_attention``): it can say which tiles decided."""
        return self.architecture == "tile_sequence" and json.loads(self.arch_json).get("aggregate") == "attention"

    def load(self) -> Any:
        return models.cached_model(self.weights, self.sha256, self.architecture, self.arch_json, self.calibration)


@dataclass(frozen=True)
class Passes:
    """What :meth:`Predictor.passes` computed for ``N`` inputs: the classifier's ``(N, C)``
    probabilities or the autoencoder's ``(N,)`` errors (``raw``), the ``(N, D)`` float32
    embeddings (:func:`spark_jobs.ml.models.embedded`) and an attention model's ``(N, T)`` tile
    weights (None for the others)."""

    raw: np.ndarray
    embeddings: np.ndarray
    weights: np.ndarray | None = None


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

    def _batches(self, inputs: np.ndarray, sequences: bool) -> Iterator[tuple[Any, Any]]:
        """``(model, input tensor)`` of each ``batch_size`` slice of ``inputs``, in inference mode
        with ``threads`` torch threads: pixels as :func:`models.to_tensor` makes them, or tile
        sequences as they are."""
        import torch

        torch.set_num_threads(self.threads)
        net = self.model.load()
        with torch.inference_mode():
            for start in range(0, len(inputs), self.batch_size):
                chunk = inputs[start : start + self.batch_size]
                yield net, torch.from_numpy(np.ascontiguousarray(chunk)) if sequences else models.to_tensor(chunk)

    def passes(self, inputs: np.ndarray, sequences: bool = False) -> Passes:
        """The model on ``(N, H, W, 3)`` uint8 pixels, or with ``sequences`` on ``(N, T, D + 1)``
        float32 tile sequences (:func:`spark_jobs.ml.models.tile_sequence`), one forward pass per
        batch: its outputs, the embedding layer a drift test reads and an attention model's tile
        weights (:class:`Passes`)."""
        import torch

        raw, embeddings, weights = [], [], []
        for net, x in self._batches(inputs, sequences):
            forward = models.embedded(net, self.model.architecture, x)
            if self.model.task == "anomaly":
                raw.append(models.squared_error(forward.output, x).numpy().astype(np.float64))
            else:
                raw.append(torch.softmax(forward.output, dim=1).numpy().astype(np.float32))
            embeddings.append(forward.embedding.numpy().astype(np.float32))
            if forward.weights is not None:
                weights.append(forward.weights.numpy().astype(np.float32))
        return Passes(np.concatenate(raw), np.concatenate(embeddings), np.concatenate(weights) if weights else None)

    def raw(self, pixels: np.ndarray, sequences: bool = False) -> np.ndarray:
        """The classifier's ``(N, C)`` softmax probabilities (float32), or the autoencoder's ``(N,)``
        reconstruction errors (float64) (:meth:`passes`)."""
        return self.passes(pixels, sequences).raw

    def attended(self, sequences: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """An attention tile model's ``(softmax probabilities (N, C) float32, tile weights (N, T)
        float32)`` of ``(N, T, D + 1)`` tile sequences: each image's weights sum to 1 over its tiles."""
        out = self.passes(sequences, sequences=True)
        if out.weights is None:
            raise models.BackboneError(f"a {self.model.architecture} model without attention has no tile weights")
        return out.raw, out.weights

    def __call__(self, pixels: np.ndarray, sequences: bool = False) -> dict[str, pa.Array]:
        out = self.raw(pixels, sequences)
        if self.model.task == "anomaly":
            return {"score": pa.array(out)}
        return classified(out)


def classified(probabilities: np.ndarray) -> dict[str, pa.Array]:
    """A classifier's :meth:`Predictor.outputs` columns from its ``(N, C)`` probabilities."""
    return {
        "prediction": pa.array(probabilities.argmax(1).astype(np.int32)),
        "probability": pa.array(probabilities.max(1)),
        "probabilities": images.vectors_array(probabilities),
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


def predict_tiles(batches: Iterator[pa.RecordBatch], predictor: Predictor, top_k: int = 1) -> Iterator[pa.RecordBatch]:
    """One row per image (``image_id``, ``label``, the classifier's columns and ``tile_count``;
    for a model that attends, ``top_tiles``: its ``top_k`` most-weighted tiles, which needs the
    tiles' ``box_*`` columns) from the tile rows of a features table sorted by ``image_id`` within
    the partition (an image's tiles may straddle Arrow batches: the last image of a batch waits
    for the next)."""
    pending: pa.Table | None = None
    for batch in itertools.chain(batches, [None]):
        table = pa.Table.from_batches([batch]) if batch is not None else None
        if pending is not None:
            table = pending if table is None else pa.concat_tables([pending, table])
        if table is None or table.num_rows == 0:
            continue
        ids = table.column("image_id").to_pylist()
        last = ids[-1]
        if batch is not None:  # keep the last image's rows for the next batch
            cut = ids.index(last)
            pending, table = table.slice(cut), table.slice(0, cut)
            ids = ids[:cut]
        else:
            pending = None
        if not ids:
            continue
        order = list(dict.fromkeys(ids))
        yield tile_outputs(table, order, predictor, top_k)


def tile_outputs(table: pa.Table, order: list[str], predictor: Predictor, top_k: int) -> pa.RecordBatch:
    """:func:`predict_tiles`'s rows for the images ``order`` of a table holding all their tiles."""
    x, labels = tiles.sequences(table, order)
    counts = np.asarray(x[:, :, -1].sum(1), dtype=np.int32)
    if not predictor.model.attends:
        outputs = predictor(x, sequences=True)
        return pa.RecordBatch.from_pydict({"image_id": order, "label": labels, **outputs, "tile_count": counts})
    probabilities, weights = predictor.attended(x)
    outputs = classified(probabilities)
    top = tiles.top_tiles(weights, tiles.boxes(table, order), top_k)
    return pa.RecordBatch.from_pydict(
        {"image_id": order, "label": labels, **outputs, "tile_count": counts, "top_tiles": top}
    )


def tiles_schema(predictor: Predictor) -> StructType:
    """The rows :func:`predict_tiles` yields: with ``top_tiles`` when the model attends."""
    from pyspark.sql.pandas.types import from_arrow_schema

    keys = [(k, pa.string()) for k in KEYS]
    top = [("top_tiles", tiles.TOP_TILES)] if predictor.model.attends else []
    return from_arrow_schema(pa.schema([*keys, *predictor.outputs(), ("tile_count", pa.int32()), *top]))


def predicted_schema(predictor: Predictor, keys: tuple[str, ...] = KEYS) -> StructType:
    """The rows :func:`predict_batches` yields."""
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(pa.schema([*((k, pa.string()) for k in keys), *predictor.outputs()]))
