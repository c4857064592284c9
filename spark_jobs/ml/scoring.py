"""What the score stage runs inside its Spark tasks (imported by reference on the executors, so
nothing here may live in the ``__main__`` of ``python -m spark_jobs.score``).

:func:`scan_batch` is one slice of the listing: fetch, skip the already-scored, decode with the
model's ingest settings, run the :class:`Head` on the usable images, return one Arrow batch with a
row per file (:data:`SCAN_FIELDS`, then the head's outputs, null for unusable files).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pyarrow as pa

from spark_jobs.core import store
from spark_jobs.core.config import IngestConfig, TilesConfig, VideoConfig
from spark_jobs.core.tables import DECODED_FIELDS
from spark_jobs.imaging import images, tiles, video
from spark_jobs.ml import inference

ANOMALY_LABELS = ("normal", "anomaly")
TOO_MANY_TILES = "too_many_tiles"  # a quarantine reason: a tiles_* model cannot cut this image
# Where a row of a video comes from (null for an image): the video's content hash, the frame's
# index among its decoded frames and its time in seconds.
FRAME_FIELDS = pa.schema([("video_id", pa.string()), ("frame_index", pa.int32()), ("frame_time", pa.float64())])
# What a scan yields for every file (every sampled frame of a video) it did not skip, before the
# model's outputs.
SCAN_FIELDS = pa.schema(
    [
        ("image_id", pa.string()),
        ("source_uri", pa.string()),
        ("label", pa.string()),
        ("size_bytes", pa.int64()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        *FRAME_FIELDS,
    ]
)
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
    ]
)
# An image's (or frame's) keys and what a model said about it.
KEY_FIELDS = pa.schema([SCAN_FIELDS.field("image_id"), SCAN_FIELDS.field("source_uri"), *FRAME_FIELDS])
PREDICTED_ROW = pa.schema([*KEY_FIELDS, *PREDICTED_FIELDS])


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

    def outputs(self) -> pa.Schema:
        return PREDICTED_FIELDS

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        raw = self.predictor.raw(pixels)
        if self.predictor.model.task == "anomaly":
            columns = anomaly_columns(raw, float(self.threshold))
        else:
            columns = class_columns(raw, self.classes, self.top_k)
        return dict(zip(PREDICTED_FIELDS.names, columns, strict=True))


@dataclass(frozen=True)
class TileHead:
    """A ``tiles_*`` model on new images, in the scanning worker: each file decoded at full
    resolution and cut exactly as the features stage cut the training images (the card's
    ``tiles`` and ingest settings), every tile resized and embedded by the extractor the model's
    features were made with, the tiles in raster order through the sequence model. It reads the
    files' bytes (:attr:`from_source`), not the resized pixels."""

    predictor: inference.Predictor
    extractor: Any  # spark_jobs.ml.extractors.Cnn
    tiles_cfg: TilesConfig
    ingest_cfg: IngestConfig
    classes: tuple[str, ...]
    top_k: int

    from_source = True

    def outputs(self) -> pa.Schema:
        return PREDICTED_FIELDS

    def problem(self, record: dict[str, Any]) -> str | None:
        """Why a decodable image cannot be cut (too many tiles), or None: the features stage's check."""
        return tiles.too_many(record["orig_width"], record["orig_height"], self.tiles_cfg)

    def __call__(self, sources: list[bytes]) -> dict[str, pa.Array]:  # type: ignore[override]
        blocks, counts = [], []
        for data in sources:
            cut = [block for _tile, block in tiles.image_tiles(data, self.ingest_cfg, self.tiles_cfg)]
            blocks.extend(cut)
            counts.append(len(cut))
        vectors = self.extractor(np.stack(blocks))
        ends = np.cumsum(counts)
        per_image = [vectors[end - n : end] for n, end in zip(counts, ends, strict=True)]
        raw = self.predictor.raw(tiles.padded(per_image, vectors.shape[1]), sequences=True)
        columns = class_columns(raw, self.classes, self.top_k)
        columns[-1] = pa.array(np.asarray(counts, dtype=np.int32))
        return dict(zip(PREDICTED_FIELDS.names, columns, strict=True))


@dataclass(frozen=True)
class Descriptors:
    """The classical descriptors of ``(N, H, W, 3)`` pixels, as at features time (an mllib model's
    input before its saved scaler + PCA)."""

    extractor: Any

    def outputs(self) -> pa.Schema:
        return pa.schema([("raw", pa.list_(pa.float32()))])

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        return {"raw": images.vectors_array(self.extractor(pixels))}


class IdSet:
    """``image_id`` values (sha256 hex) as a sorted array of 32-byte digests: what executors check
    each fetched file against before decoding it (32 bytes per id; a million ids broadcast as 32 MB)."""

    def __init__(self, ids: Iterable[str]) -> None:
        self.digests = np.unique(np.array([bytes.fromhex(i) for i in ids], dtype="S32"))

    def __len__(self) -> int:
        return len(self.digests)

    def __contains__(self, image_id: str) -> bool:
        # Compared as S32, never as bytes: numpy drops an S32 value's trailing NUL bytes when it
        # hands it out, so a digest ending in 0x00 (1 in 256) would never equal its own bytes.
        digest = np.array(bytes.fromhex(image_id), dtype="S32")
        i = int(np.searchsorted(self.digests, digest))
        return i < len(self.digests) and bool(self.digests[i] == digest)


class IdUnion:
    """Several id sets checked as one (a stream's: the ids read at start, those scored since)."""

    def __init__(self, sets: Sequence[IdSet]) -> None:
        self.sets = tuple(sets)

    def __contains__(self, image_id: str) -> bool:
        return any(image_id in s for s in self.sets)


Known = IdSet | IdUnion


def video_records(
    uri: str, label: str | None, data: bytes, cfg: IngestConfig, video_cfg: VideoConfig, done: Known
) -> list[dict[str, Any]]:
    """Decoded rows of a video's sampled frames that ``done`` does not hold (one row per frame,
    :data:`FRAME_FIELDS` set), or the video's one quarantine row. A video is scored whole or not
    at all, so its first frame's id in ``done`` means every frame is: it is not decoded again."""
    video_id = images.image_id(data)
    row = dict.fromkeys(DECODED_FIELDS) | {"source_uri": uri, "label": label, "size_bytes": len(data)}
    if video.frame_id(video_id, 0) in done:
        return []
    try:
        frames = video.sampled_frames(data, video_cfg, cfg.max_image_pixels)
        rows = []
        for frame in frames:
            decoded = images.decode_frame(frame.image, cfg)
            rows.append(
                row
                | {
                    "image_id": video.frame_id(video_id, frame.index),
                    "video_id": video_id,
                    "frame_index": frame.index,
                    "frame_time": frame.time,
                    "height": decoded.height,
                    "width": decoded.width,
                    "pixels": decoded.pixels,
                }
            )
    except images.Rejected as exc:
        return [row | {"image_id": video_id, "video_id": video_id, "reason": exc.reason, "detail": exc.detail[:500]}]
    return [r for r in rows if r["image_id"] not in done]


def scan_batch(
    entries: list[tuple[str, str | None]],
    cfg: IngestConfig,
    done: Known,
    head: Head,
    video_cfg: VideoConfig | None = None,
) -> pa.RecordBatch:
    """Fetch, skip, decode and run ``head`` on one slice of ``(source_uri, label)``, all in this
    Python worker: a row per file whose content is not in ``done`` (per sampled frame of a video,
    when ``video_cfg`` is given), with :data:`SCAN_FIELDS` and the head's outputs (null for
    unusable files, which carry ``reason`` and ``detail``)."""
    contents = store.fetch_many([uri for uri, _ in entries], cfg.fetch_threads, cfg.max_file_bytes)
    from_source = getattr(head, "from_source", False)
    good, bad, sources = [], [], []
    for (uri, label), data in zip(entries, contents, strict=True):
        if video_cfg is not None and isinstance(data, bytes) and video.is_video(uri, video_cfg):
            if from_source:
                bad.append(
                    images.decode_record(uri, label, data, cfg, labelled=False)
                    | {"reason": images.UNSUPPORTED_EXTENSION, "detail": "a tiles model scores images, not video"}
                )
                continue
            for record in video_records(uri, label, data, cfg, video_cfg, done):
                (bad if record["reason"] else good).append(record)
            continue
        if isinstance(data, bytes) and images.image_id(data) in done:
            continue
        record = images.decode_record(uri, label, data, cfg, labelled=False)
        if from_source and not record["reason"]:
            problem = head.problem(record)  # type: ignore[attr-defined]
            if problem:
                record |= {"reason": TOO_MANY_TILES, "detail": problem}
        if record["reason"]:
            bad.append(record)
        else:
            good.append(record)
            if from_source:
                sources.append(data)
    schema = pa.schema([*SCAN_FIELDS, *head.outputs()])
    rows = good + bad
    columns = [pa.array([r.get(f.name) for r in rows], f.type) for f in SCAN_FIELDS]
    if good:
        if from_source:
            outputs = head(sources)
        else:
            h, w = good[0]["height"], good[0]["width"]
            outputs = head(images.stack_pixels(pa.array([r["pixels"] for r in good], pa.binary()), h, w))
        columns += [pa.concat_arrays([outputs[f.name], pa.nulls(len(bad), f.type)]) for f in head.outputs()]
    else:
        columns += [pa.nulls(len(bad), f.type) for f in head.outputs()]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
