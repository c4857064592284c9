"""What a scan runs on each batch of decoded images inside the scanning Python worker (a
:class:`Head`), and the prediction columns it yields: a torch classifier's classes or an
autoencoder's anomaly flag (:class:`TorchHead`), a tile model on the full-resolution file
(:class:`TileHead`), or an MLlib model's input descriptors (:class:`Descriptors`). Imported by
reference on the executors, so nothing here may live in a ``__main__``."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, tiles
from spark_jobs.imaging.tiles import TilesConfig
from spark_jobs.ml import inference
from spark_jobs.ml.screen import Screen

ANOMALY_LABELS = ("normal", "anomaly")
# Where a row of a video comes from (null for an image): the video's content hash, the frame's
# index among its decoded frames and its time in seconds.
FRAME_FIELDS = pa.schema([("video_id", pa.string()), ("frame_index", pa.int32()), ("frame_time", pa.float64())])
TOP_K = pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float32())]))
# What a model says about one image (classifier or anomaly columns, the others null).
PREDICTED_FIELDS = pa.schema(
    [
        ("predicted_label", pa.string()),
        ("probability", pa.float32()),
        ("top_k", TOP_K),
        ("anomaly_score", pa.float64()),
        ("is_anomaly", pa.bool_()),
        ("tile_count", pa.int32()),  # tiles_* models: the tiles the image was cut into
        ("top_tiles", tiles.TOP_TILES),  # tiles_attention: the most-weighted tiles, boxes in the file's pixels
    ]
)
# An image's (or frame's) keys and what a model said about it.
KEY_FIELDS = pa.schema([("image_id", pa.string()), ("source_uri", pa.string()), *FRAME_FIELDS])
PREDICTED_ROW = pa.schema([*KEY_FIELDS, *PREDICTED_FIELDS])
# A tiles_attention row's picture of where it looked (score.heatmaps): written beside the run's
# report, never into the predictions.
HEATMAP = pa.field("heatmap", pa.binary())
# A row's embedding (the layer the model's drift reference holds, computed in the same forward
# pass), when the run tests drift: read by the drift test on the driver, never a prediction column.
EMBEDDING = pa.field("embedding", pa.list_(pa.float32()))


class Head(Protocol):
    """What a scan runs on the decoded pixels of each batch, in the same Python worker: the model
    (:class:`inference.Predictor`) or the light model's input (:class:`Descriptors`)."""

    def outputs(self) -> pa.Schema: ...

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]: ...


def class_columns(probabilities: np.ndarray, classes: Sequence[str], k: int) -> list[pa.Array]:
    """:data:`PREDICTED_FIELDS` of a classifier from its ``(N, C)`` probabilities: the most probable
    class and its probability, and the ``k`` most probable ``(label, probability)``, most probable
    first (ties keep the class order, so ``top_k[0]`` is always the predicted label)."""
    n, c = probabilities.shape
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, : min(k, c)]
    names = np.asarray(classes, dtype=object)[order]
    best = np.take_along_axis(probabilities, order, axis=1).astype(np.float32)
    pairs = pa.StructArray.from_arrays(
        [pa.array(names.ravel(), pa.string()), pa.array(best.ravel())], fields=list(TOP_K.value_type)
    )
    offsets = pa.array(np.arange(0, (n + 1) * order.shape[1], order.shape[1], dtype=np.int32))
    return [
        pa.array(names[:, 0], pa.string()),
        pa.array(best[:, 0]),
        pa.ListArray.from_arrays(offsets, pairs, type=TOP_K),
        pa.nulls(n, pa.float64()),
        pa.nulls(n, pa.bool_()),
        pa.nulls(n, pa.int32()),
        pa.nulls(n, tiles.TOP_TILES),
    ]


def anomaly_columns(scores: np.ndarray, threshold: float) -> list[pa.Array]:
    """:data:`PREDICTED_FIELDS` of an autoencoder: ``anomaly`` above ``threshold``, else ``normal``."""
    flagged = scores > threshold
    n = len(scores)
    labels = np.where(flagged, ANOMALY_LABELS[1], ANOMALY_LABELS[0])
    return [
        pa.array(labels, pa.string()),
        pa.nulls(n, pa.float32()),
        pa.nulls(n, TOP_K),
        pa.array(scores),
        pa.array(flagged),
        pa.nulls(n, pa.int32()),
        pa.nulls(n, tiles.TOP_TILES),
    ]


def top_k_batches(batches: Iterator[pa.RecordBatch], classes: Sequence[str], k: int) -> Iterator[pa.RecordBatch]:
    """:data:`PREDICTED_ROW` rows from rows with ``probabilities`` (an MLlib classifier's,
    computed in the JVM)."""
    for batch in batches:
        if batch.num_rows == 0:
            continue
        probabilities = batch.column("probabilities").flatten().to_numpy().reshape(batch.num_rows, len(classes))
        columns = [*(batch.column(f.name) for f in KEY_FIELDS), *class_columns(probabilities, classes, k)]
        yield pa.RecordBatch.from_arrays(columns, schema=PREDICTED_ROW)


@dataclass(frozen=True)
class TorchHead:
    """A cnn's classes or an autoencoder's anomaly flag, as :data:`PREDICTED_FIELDS`, computed in
    the scanning worker."""

    predictor: inference.Predictor
    classes: tuple[str, ...]
    top_k: int
    threshold: float | None = None
    embeds: bool = False  # each row's embedding too (:data:`EMBEDDING`), for the drift test

    def outputs(self) -> pa.Schema:
        return pa.schema([*PREDICTED_FIELDS, EMBEDDING]) if self.embeds else PREDICTED_FIELDS

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        passes = self.predictor.passes(pixels)
        if self.predictor.model.task == "anomaly":
            columns = anomaly_columns(passes.raw, float(self.threshold))
        else:
            columns = class_columns(passes.raw, self.classes, self.top_k)
        said = dict(zip(PREDICTED_FIELDS.names, columns, strict=True))
        return said | (embedding_column(passes) if self.embeds else {})


def embedding_column(passes: inference.Passes) -> dict[str, pa.Array]:
    """The :data:`EMBEDDING` column of one forward pass's rows."""
    return {EMBEDDING.name: images.vectors_array(passes.embeddings)}


@dataclass(frozen=True)
class TileHead:
    """A ``tiles_*`` model on new images, in the scanning worker: each file decoded at full
    resolution and cut exactly as the features stage cut the training images (the card's
    ``tiles`` and ingest settings), every tile resized and embedded by the extractor the model's
    features were made with, the tiles in raster order through the sequence model. It reads the
    files' bytes (:attr:`from_source`), not the resized pixels. A model that attends also says
    where: each row's ``top_tiles``, its ``top_tiles`` most-weighted tiles; with a ``screen`` and a
    ``tile_fraction`` below 1 (the tile cascade) only that share of each image's tiles, the ones
    the light screen rates highest, are embedded and weighed; and with ``heatmaps``
    a ``heatmap`` column (:data:`HEATMAP`, not a prediction column: the run writes it beside its
    report), drawn from the pixels this decode already holds."""

    predictor: inference.Predictor
    extractor: Any  # spark_jobs.ml.extractors.Cnn
    tiles_cfg: TilesConfig
    ingest_cfg: IngestConfig
    classes: tuple[str, ...]
    top_k: int
    top_tiles: int = 3
    heatmaps: bool = False
    screen: Screen | None = None  # the tile cascade's light screen, with tile_fraction < 1
    tile_fraction: float = 1.0
    embeds: bool = False  # each row's pooled vector too (:data:`EMBEDDING`), for the drift test

    from_source = True

    def outputs(self) -> pa.Schema:
        hidden = [*([HEATMAP] if self.draws else []), *([EMBEDDING] if self.embeds else [])]
        return pa.schema([*PREDICTED_FIELDS, *hidden])

    @property
    def draws(self) -> bool:
        """Whether each row gets a heatmap: asked for, and the model has weights to draw."""
        return self.heatmaps and self.predictor.model.attends

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why a decodable image cannot be cut (too many tiles), or None: the features stage's check."""
        return tiles.too_many(record["orig_width"], record["orig_height"], self.tiles_cfg)

    def __call__(self, sources: list[bytes]) -> dict[str, pa.Array]:  # type: ignore[override]
        blocks, counts, kept, boxes, shrunk = [], [], [], [], []
        for data in sources:
            full = images.decode_full(data, self.ingest_cfg)
            cut = list(tiles.full_tiles(full, self.ingest_cfg, self.tiles_cfg))
            chosen = [cut[i] for i in self._chosen(cut)]
            blocks.extend(block for _tile, block in chosen)
            counts.append(len(cut))
            kept.append(len(chosen))
            boxes.append(np.asarray([(t.x0, t.y0, t.x1, t.y1) for t, _block in chosen], dtype=np.int64))
            shrunk.append(tiles.shrunk(full) if self.draws else None)  # all a heatmap needs of the image
            del full, cut
        vectors = self.extractor(np.stack(blocks))
        ends = np.cumsum(kept)
        per_image = [vectors[end - n : end] for n, end in zip(kept, ends, strict=True)]
        sequences = tiles.padded(per_image, vectors.shape[1])
        columns, weights = self._classes(sequences, boxes)
        columns["tile_count"] = pa.array(np.asarray(counts, dtype=np.int32))
        if self.draws:
            pictures = [_heatmap(*drawn, w) for drawn, w in zip(zip(shrunk, boxes, strict=True), weights, strict=True)]
            columns[HEATMAP.name] = pa.array(pictures, pa.binary())
        return columns

    def _chosen(self, cut: list[tuple[tiles.Tile, np.ndarray]]) -> np.ndarray:
        """The indexes of an image's ``(tile, block)`` that go to the backbone: the light screen's
        top ``tile_fraction`` (every tile without a tile cascade, its blocks not stacked for it)."""
        if self.screen is None or self.tile_fraction >= 1.0:
            return np.arange(len(cut))
        return self.screen.choose(np.stack([block for _tile, block in cut]), self.tile_fraction)

    def _classes(self, sequences: np.ndarray, boxes: list[np.ndarray]) -> tuple[dict[str, pa.Array], Any]:
        """``(PREDICTED_FIELDS of the model's probabilities, with top_tiles when it attends, and the
        embeddings when the run tests drift; its (N, T) tile weights or None)``, from one forward pass."""
        passes = self.predictor.passes(sequences, sequences=True)
        columns = class_columns(passes.raw, self.classes, self.top_k)
        if passes.weights is not None:
            columns[-1] = tiles.top_tiles(passes.weights, boxes, self.top_tiles)
        said = dict(zip(PREDICTED_FIELDS.names, columns, strict=True))
        return said | (embedding_column(passes) if self.embeds else {}), passes.weights


def _heatmap(shrunk: tuple[np.ndarray, float], corners: np.ndarray, weights: np.ndarray) -> bytes:
    picture, scale = shrunk
    return tiles.heatmap_png(picture, corners * scale, weights[: len(corners)])


SHADOW = "shadow_"  # the prefix of a shadow model's outputs beside the champion's (:class:`Paired`)


@dataclass(frozen=True)
class Paired:
    """The champion's head and a shadow model's, both on the same decoded pixels in the same
    task: the champion's outputs, then the shadow's, each named with :data:`SHADOW` in front."""

    main: Head
    shadow: Head

    def outputs(self) -> pa.Schema:
        return pa.schema([*self.main.outputs(), *(f.with_name(SHADOW + f.name) for f in self.shadow.outputs())])

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        return self.main(pixels) | {SHADOW + name: column for name, column in self.shadow(pixels).items()}


@dataclass(frozen=True)
class Descriptors:
    """The classical or SIFT descriptors of ``(N, H, W, 3)`` pixels, as at features time (an mllib
    model's input before its saved scaler + PCA)."""

    extractor: Any

    def outputs(self) -> pa.Schema:
        return pa.schema([("raw", pa.list_(pa.float32()))])

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        return {"raw": images.vectors_array(self.extractor(pixels))}
