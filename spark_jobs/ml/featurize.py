"""What the features stage runs inside its Spark tasks (imported by reference on the executors):
an extractor over every image of the ingested table, in Arrow batches, or over every tile of its
full-resolution source, re-read and cut as :mod:`spark_jobs.imaging.tiles` says, with a problem row
for an image whose source can no longer be tiled."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import pyarrow as pa

from spark_jobs.core import store
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, tiles
from spark_jobs.imaging.tiles import TilesConfig
from spark_jobs.ml import extractors

if TYPE_CHECKING:
    from pyspark import Accumulator
    from pyspark.sql import DataFrame

# What the extractor pass writes: feature rows with the un-reduced vector in ``raw``, plus one row
# with a ``problem`` (and no vector) for each image whose source could not be tiled.
RAW_SCHEMA = (
    "image_id string, source_uri string, label string, split string, tile_x int, tile_y int, "
    "box_x0 int, box_y0 int, box_x1 int, box_y1 int, raw array<float>, problem string"
)
RAW_FIELDS = tuple(f.split()[0] for f in RAW_SCHEMA.split(", "))
KEYS = ("image_id", "source_uri", "label", "split")
DESCRIPTOR_SCHEMA = "descriptor array<float>"  # one row per SIFT keypoint (the codebook's input)


def whole_image_batches(
    batches: Iterator[pa.RecordBatch], extractor: extractors.Extractor, handled: Accumulator | None = None
) -> Iterator[pa.RecordBatch]:
    """One raw row per image: its vector, as tile (0, 0) covering the whole original (the images
    added to ``handled``, the stage's progress count)."""
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        height, width = batch.column("height")[0].as_py(), batch.column("width")[0].as_py()
        vectors = extractor(images.stack_pixels(batch.column("pixels"), height, width))
        zeros = pa.array(np.zeros(n, dtype=np.int32))
        columns = {
            **{k: batch.column(k) for k in KEYS},
            "tile_x": zeros,
            "tile_y": zeros,
            "box_x0": zeros,
            "box_y0": zeros,
            "box_x1": batch.column("orig_width").cast(pa.int32()),
            "box_y1": batch.column("orig_height").cast(pa.int32()),
            "raw": images.vectors_array(vectors),
            "problem": pa.nulls(n, pa.string()),
        }
        yield pa.RecordBatch.from_pydict(columns)
        if handled is not None:
            handled.add(n)


def descriptor_batches(
    batches: Iterator[pa.RecordBatch], cfg: extractors.SiftConfig, handled: Accumulator | None = None
) -> Iterator[pa.RecordBatch]:
    """One ``DESCRIPTOR_SCHEMA`` row per SIFT keypoint of every image (the images added to ``handled``)."""
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        height, width = batch.column("height")[0].as_py(), batch.column("width")[0].as_py()
        pixels = images.stack_pixels(batch.column("pixels"), height, width)
        found = np.concatenate([extractors.sift_keypoints(image, cfg)[0] for image in pixels])
        if len(found):
            yield pa.RecordBatch.from_pydict({"descriptor": images.vectors_array(found)})
        if handled is not None:
            handled.add(n)


def descriptors(image_table: DataFrame, cfg: extractors.SiftConfig, handled: Accumulator | None = None) -> DataFrame:
    """The SIFT descriptors of every image of ``image_table``, one row each (``DESCRIPTOR_SCHEMA``)."""
    pixels = image_table.select("height", "width", "pixels")
    return pixels.mapInArrow(lambda it: descriptor_batches(it, cfg, handled), DESCRIPTOR_SCHEMA)


def _fetched(frame: pd.DataFrame, threads: int, max_bytes: int) -> Iterator[tuple[Any, bytes | Exception]]:
    """``(row, bytes or error)`` for each row, fetching ``threads`` sources at a time: full-size
    originals are large, so never a whole Arrow batch of them in memory at once."""
    rows = list(frame.itertuples(index=False))
    for start in range(0, len(rows), threads):
        group = rows[start : start + threads]
        yield from zip(group, store.fetch_many([r.source_uri for r in group], threads, max_bytes), strict=True)


def tile_frames(
    frames: Iterator[pd.DataFrame],
    extractor: extractors.Extractor,
    cfg: IngestConfig,
    tiles_cfg: TilesConfig,
    batch_rows: int,
    handled: Accumulator | None = None,
) -> Iterator[pd.DataFrame]:
    """Raw rows for every tile of every image, re-read from its source at full resolution; an
    image whose source is gone, changed since ingest or no longer decodes yields one problem row
    (the images added to ``handled`` as their frame is done)."""
    records: list[dict[str, Any]] = []
    blocks: list[np.ndarray] = []

    def flush() -> pd.DataFrame:
        vectors = extractor(np.stack(blocks)) if blocks else []
        it = iter(vectors)
        for r in records:
            if r["problem"] is None:
                r["raw"] = next(it)
        out = pd.DataFrame.from_records(records, columns=RAW_FIELDS)
        records.clear()
        blocks.clear()
        return out

    for frame in frames:
        for row, data in _fetched(frame, cfg.fetch_threads, cfg.max_file_bytes):
            keys = {k: getattr(row, k) for k in KEYS}
            problem = None
            if isinstance(data, Exception):
                problem = f"cannot re-read the source: {data}"
            elif images.image_id(data) != row.image_id:
                problem = "the source file changed since ingest (its sha256 is no longer the image_id)"
            else:
                try:
                    for tile, block in tiles.image_tiles(data, cfg, tiles_cfg):
                        box = {"box_x0": tile.x0, "box_y0": tile.y0, "box_x1": tile.x1, "box_y1": tile.y1}
                        records.append(
                            {**keys, "tile_x": tile.tile_x, "tile_y": tile.tile_y, **box, "raw": None, "problem": None}
                        )
                        blocks.append(block)
                except images.Rejected as exc:
                    problem = f"the source no longer decodes: {exc}"
                except tiles.TooManyTiles as exc:
                    problem = str(exc)
            if problem is not None:
                no_box = dict.fromkeys(("box_x0", "box_y0", "box_x1", "box_y1"))
                records.append({**keys, "tile_x": -1, "tile_y": -1, **no_box, "raw": None, "problem": problem})
            if len(blocks) >= batch_rows:
                yield flush()
        if handled is not None:
            handled.add(len(frame))
    if records:
        yield flush()


def extract(
    image_table: DataFrame,
    extractor: extractors.Extractor,
    ingest_cfg: IngestConfig,
    tiles_cfg: TilesConfig,
    batch_rows: int,
    handled: Accumulator | None = None,
) -> DataFrame:
    """RAW_SCHEMA rows for the image table: per image, or per tile when tiling is on (tiles are
    decoded with ``ingest_cfg``, the settings the table was ingested with, ``batch_rows`` blocks
    per extractor call); the images done are added to ``handled``."""
    if tiles_cfg.enabled:
        light = image_table.drop("pixels")  # tiles re-read the full-resolution source instead
        return light.mapInPandas(
            lambda it: tile_frames(it, extractor, ingest_cfg, tiles_cfg, batch_rows, handled), RAW_SCHEMA
        )
    columns = [*KEYS, "orig_width", "orig_height", "height", "width", "pixels"]
    return image_table.select(*columns).mapInArrow(lambda it: whole_image_batches(it, extractor, handled), RAW_SCHEMA)
