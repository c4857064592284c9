"""The scan every scoring run does inside its Spark tasks (imported by reference on the
executors, so nothing here may live in the ``__main__`` of ``python -m spark_jobs.score``).

:func:`scan_batch` is one slice of the listing: fetch, skip the already-scored (:class:`IdSet`),
decode with the model's ingest settings, run the :class:`~spark_jobs.scoring.heads.Head` on the
usable images, return one Arrow batch with a row per file (:data:`SCAN_FIELDS`, then the head's
outputs, null for unusable files).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pyarrow as pa

from spark_jobs.core import store
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.core.tables import DECODED_FIELDS
from spark_jobs.imaging import images, video
from spark_jobs.imaging.video import VideoConfig
from spark_jobs.scoring.heads import FRAME_FIELDS, Head

TOO_MANY_TILES = "too_many_tiles"  # a quarantine reason: a tiles_* model cannot cut this image
# Not a quarantine reason: the row of a file the model already scored, not decoded again. Every
# file a scan reads leaves a row, so a run counts each outcome from rows, never as a remainder.
ALREADY_SCORED = "already_scored"
# What a scan yields for every file (every sampled frame of a video), before the model's outputs.
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
    whole = row | {"image_id": video_id, "video_id": video_id}  # the video's one row when no frame is scored
    if video.frame_id(video_id, 0) in done:
        return [whole | {"reason": ALREADY_SCORED}]
    try:
        # Each frame through the image path as it is decoded: only its resized pixels are kept.
        frames = video.sampled_frames(data, video_cfg, cfg.max_image_pixels, lambda im: images.decode_frame(im, cfg))
        rows = []
        for frame in frames:
            decoded = frame.image
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
        return [whole | {"reason": exc.reason, "detail": exc.detail[:500]}]
    rows = [r for r in rows if r["image_id"] not in done]
    return rows or [whole | {"reason": ALREADY_SCORED}]


def _already_scored(uri: str, label: str | None, data: bytes, image_id: str) -> dict[str, Any]:
    return dict.fromkeys(DECODED_FIELDS) | {
        "image_id": image_id,
        "source_uri": uri,
        "label": label,
        "size_bytes": len(data),
        "reason": ALREADY_SCORED,
    }


HEAD_ROWS = 256  # decoded images the head is given at once: a long video's frames go in chunks


def head_outputs(head: Head, good: list[dict[str, Any]], chunk: int = HEAD_ROWS) -> dict[str, pa.Array]:
    """``head``'s outputs for the decoded rows ``good``, run ``chunk`` rows at a time: the float
    tensors of a video's thousand frames are never made at once."""
    parts = []
    for start in range(0, len(good), chunk):
        rows = good[start : start + chunk]
        pixels = pa.array([r["pixels"] for r in rows], pa.binary())
        parts.append(head(images.stack_pixels(pixels, rows[0]["height"], rows[0]["width"])))
    return {f.name: pa.concat_arrays([p[f.name] for p in parts]) for f in head.outputs()}


def scan_batch(
    entries: list[tuple[str, str | None]],
    cfg: IngestConfig,
    done: Known,
    head: Head,
    video_cfg: VideoConfig | None = None,
) -> pa.RecordBatch:
    """Fetch, skip, decode and run ``head`` on one slice of ``(source_uri, label)``, all in this
    Python worker: a row per file (per sampled frame of a video, when ``video_cfg`` is given),
    with :data:`SCAN_FIELDS` and the head's outputs, which are null for unusable files (their
    ``reason`` and ``detail`` set) and for files whose content is in ``done`` (reason
    :data:`ALREADY_SCORED`, not decoded)."""
    # Fetched as decoded: only the decoded pixels of the slice are kept (a tiles head keeps the bytes).
    contents = store.fetch_each([uri for uri, _ in entries], cfg.fetch_threads, cfg.max_file_bytes)
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
        known = images.image_id(data) if isinstance(data, bytes) else None
        if known is not None and known in done:
            bad.append(_already_scored(uri, label, data, known))
            continue
        record = images.decode_record(uri, label, data, cfg, labelled=False, content_id=known)
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
        outputs = head(sources) if from_source else head_outputs(head, good)
        columns += [pa.concat_arrays([outputs[f.name], pa.nulls(len(bad), f.type)]) for f in head.outputs()]
    else:
        columns += [pa.nulls(len(bad), f.type) for f in head.outputs()]
    return pa.RecordBatch.from_arrays(columns, schema=schema)
