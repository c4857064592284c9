"""Pure tiling: cut a full-resolution image into overlapping square blocks, keeping each block's
place in the original.

Along an axis of length ``L`` blocks of ``size`` start every ``stride = size - round(size *
overlap)`` pixels. The last block is never dropped: with ``edge="shift"`` it is moved back to end
exactly at ``L`` (so it overlaps its neighbour more); with ``edge="pad"`` it keeps its place on the
stride grid and the part beyond the image is filled. An axis shorter than ``size`` gets one block,
padded. Both policies give the same number of blocks: :func:`count`.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pyarrow as pa
from pydantic import Field

from spark_jobs.core.config import Section
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images


class TilesConfig(Section):
    """``features.tiles``: how the features stage cuts large images (and scoring cuts new ones)."""

    enabled: bool = False
    size: int = Field(128, ge=8, le=16384)
    overlap: float = Field(0.1, ge=0.0, lt=1.0)
    edge: Literal["shift", "pad"] = "shift"
    max_per_image: int = Field(4096, ge=1)

    @property
    def stride(self) -> int:
        """Step between tile origins: ``size`` minus the overlap, at least one pixel."""
        return max(1, self.size - round(self.size * self.overlap))


@dataclass(frozen=True)
class Tile:
    """Block ``(tile_x, tile_y)`` of the grid; ``box`` is the region of the original image it
    shows, ``(x0, y0, x1, y1)`` with exclusive ends, clipped to the image (padding is not in it)."""

    tile_x: int
    tile_y: int
    x0: int
    y0: int
    x1: int
    y1: int


def axis_count(length: int, size: int, stride: int) -> int:
    """Blocks needed to cover ``length`` pixels."""
    if length <= size:
        return 1
    return math.ceil((length - size) / stride) + 1


def count(width: int, height: int, cfg: TilesConfig) -> int:
    """Blocks in the grid of a ``width`` x ``height`` image."""
    return axis_count(width, cfg.size, cfg.stride) * axis_count(height, cfg.size, cfg.stride)


def starts(length: int, size: int, stride: int, edge: str) -> list[int]:
    """Origins of the blocks along one axis."""
    n = axis_count(length, size, stride)
    origins = [i * stride for i in range(n)]
    if edge == "shift" and length > size:
        origins[-1] = length - size
    return origins


class TooManyTiles(ValueError):
    """An image that would be cut into more than ``features.tiles.max_per_image`` blocks."""


def too_many(width: int, height: int, cfg: TilesConfig) -> str | None:
    """Why a ``width`` x ``height`` image cannot be cut (more than ``cfg.max_per_image`` blocks,
    counted without cutting: ``size=8, overlap=0.99`` on a 9000 x 9000 image would be 80 million), or None."""
    n = count(width, height, cfg)
    if n > cfg.max_per_image:
        return (
            f"{width}x{height} cut into {cfg.size}px tiles overlapping {cfg.overlap:g} makes {n} tiles "
            f"> features.tiles.max_per_image {cfg.max_per_image}"
        )
    return None


def checked_grid(width: int, height: int, cfg: TilesConfig) -> list[Tile]:
    """:func:`grid`, or :class:`TooManyTiles` when it would hold too many blocks (:func:`too_many`)."""
    problem = too_many(width, height, cfg)
    if problem:
        raise TooManyTiles(problem)
    return grid(width, height, cfg)


def grid(width: int, height: int, cfg: TilesConfig) -> list[Tile]:
    """Every block of a ``width`` x ``height`` image, row by row."""
    xs = starts(width, cfg.size, cfg.stride, cfg.edge)
    ys = starts(height, cfg.size, cfg.stride, cfg.edge)
    return [
        Tile(tx, ty, x, y, min(x + cfg.size, width), min(y + cfg.size, height))
        for ty, y in enumerate(ys)
        for tx, x in enumerate(xs)
    ]


def cut(image: np.ndarray, tile: Tile, size: int, fill: tuple[int, int, int]) -> np.ndarray:
    """The ``size`` x ``size`` x 3 block of an HWC image: its box at the top left, ``fill`` beyond."""
    block = image[tile.y0 : tile.y1, tile.x0 : tile.x1]
    if block.shape[:2] == (size, size):
        return block
    out = np.empty((size, size, image.shape[2]), dtype=image.dtype)
    out[...] = np.asarray(fill, dtype=image.dtype)
    out[: block.shape[0], : block.shape[1]] = block
    return out


def image_tiles(data: bytes, cfg: IngestConfig, tiles_cfg: TilesConfig) -> Iterator[tuple[Tile, np.ndarray]]:
    """``(tile, pixels)`` for every block of a source file, each resized to ``cfg.image_size``."""
    return full_tiles(images.decode_full(data, cfg), cfg, tiles_cfg)


def full_tiles(full: np.ndarray, cfg: IngestConfig, tiles_cfg: TilesConfig) -> Iterator[tuple[Tile, np.ndarray]]:
    """:func:`image_tiles` of an image already decoded at full resolution (HWC uint8)."""
    from PIL import Image

    for tile in checked_grid(full.shape[1], full.shape[0], tiles_cfg):
        block = cut(full, tile, tiles_cfg.size, tuple(cfg.resize.fill))
        if tiles_cfg.size != cfg.image_size:
            block = np.asarray(
                Image.fromarray(block).resize((cfg.image_size, cfg.image_size), images.RESAMPLE[cfg.resize.resample])
            )
        yield tile, block


def sequences(table: pa.Table, ids: list[str]) -> tuple[np.ndarray, list[str]]:
    """Each image of ``ids`` as the sequence of its tiles' vectors, from an Arrow table of tile rows
    (``image_id``, ``label``, ``tile_y``, ``tile_x``, ``features``) holding every tile of them:
    ``(sequences (N, T, D + 1) float32, labels)``, the tiles in raster order (``tile_y``, then
    ``tile_x``), each vector followed by a 1, padded with zeros to the most tiles any of them has
    (:func:`spark_jobs.ml.models.tile_sequence`'s input)."""
    table = table.sort_by([("image_id", "ascending"), ("tile_y", "ascending"), ("tile_x", "ascending")])
    image_ids = np.asarray(table["image_id"].to_pylist(), dtype=object)
    dim = len(table["features"][0]) if table.num_rows else 0
    vectors = table["features"].combine_chunks().flatten().to_numpy(zero_copy_only=False)
    vectors = vectors.astype(np.float32).reshape(table.num_rows, dim)
    where = _runs(image_ids)
    labels = table["label"].to_pylist()
    stacked = padded([vectors[slice(*where[image])] for image in ids], dim)
    return stacked, [labels[where[i][0]] for i in ids]


BOX = ("box_x0", "box_y0", "box_x1", "box_y1")
# An image's most-weighted tiles, heaviest first: each one's box in the original image's pixels.
TOP_TILES = pa.list_(pa.struct([*((name, pa.int32()) for name in BOX), ("weight", pa.float32())]))


def boxes(table: pa.Table, ids: list[str]) -> list[np.ndarray]:
    """Each image of ``ids``'s tile boxes ``(T_i, 4)`` int (``box_x0, box_y0, box_x1, box_y1``) in
    raster order, the order of :func:`sequences`, from a table of tile rows holding them all."""
    table = table.sort_by([("image_id", "ascending"), ("tile_y", "ascending"), ("tile_x", "ascending")])
    corners = np.stack([table[name].to_numpy(zero_copy_only=False) for name in BOX], axis=1).astype(np.int64)
    where = _runs(np.asarray(table["image_id"].to_pylist(), dtype=object))
    return [corners[slice(*where[image])] for image in ids]


def _runs(image_ids: np.ndarray) -> dict[str, tuple[int, int]]:
    """``image_id -> (start, end)`` of each run of equal ids in a sorted array."""
    starts = np.flatnonzero(np.r_[True, image_ids[1:] != image_ids[:-1]]) if len(image_ids) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(image_ids)]
    return {image_ids[a]: (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}


def top_tiles(weights: np.ndarray, per_image: list[np.ndarray], k: int) -> pa.Array:
    """:data:`TOP_TILES` of each image: its ``k`` heaviest tiles (fewer when it has fewer),
    heaviest first, from ``weights (N, T)`` (0 on padding) and each image's ``(T_i, 4)`` boxes."""
    rows = []
    for w, corners in zip(weights, per_image, strict=True):
        order = np.argsort(-w[: len(corners)], kind="stable")[:k]
        rows.append([dict(zip(BOX, map(int, corners[i]), strict=True)) | {"weight": float(w[i])} for i in order])
    return pa.array(rows, type=TOP_TILES)


HEATMAP_SIDE = 256  # a heatmap's longer side, in pixels


def shrunk(full: np.ndarray, side: int = HEATMAP_SIDE) -> tuple[np.ndarray, float]:
    """``(an HWC uint8 image at most side px on its longer side, the scale it was shrunk by)``:
    the image itself when it is that small already."""
    from PIL import Image

    height, width = full.shape[:2]
    scale = min(1.0, side / max(height, width))
    if scale == 1.0:
        return full, 1.0
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(full).resize(size, Image.Resampling.BILINEAR)), scale


def heatmap_png(full: np.ndarray, corners: np.ndarray, weights: np.ndarray, side: int = HEATMAP_SIDE) -> bytes:
    """A small PNG of an HWC uint8 image (``side`` px on its longer side) with its tiles' attention
    laid over it: each pixel's heat is the sum of the weights of the tiles whose box
    (``corners (T, 4)``, the original's pixels) covers it, scaled to the hottest pixel; the picture
    is dimmed to grey where nothing looked and turns red where the weight is."""
    from PIL import Image

    picture, scale = shrunk(full, side)
    grey = np.asarray(Image.fromarray(picture).convert("L"), dtype=np.float32)
    heat = np.zeros(grey.shape, dtype=np.float32)
    for (x0, y0, x1, y1), w in zip(corners, weights, strict=True):
        heat[
            int(y0 * scale) : max(int(y0 * scale) + 1, round(y1 * scale)),
            int(x0 * scale) : max(int(x0 * scale) + 1, round(x1 * scale)),
        ] += w
    heat /= max(float(heat.max()), 1e-12)
    base = grey * (0.35 + 0.25 * heat)  # dim where the model did not look
    rgb = np.stack([base + (255.0 - base) * heat, base * (1 - 0.5 * heat), base * (1 - 0.5 * heat)], axis=-1)
    out = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8), "RGB").save(out, "PNG", optimize=True)
    return out.getvalue()


def padded(per_image: list[np.ndarray], dim: int) -> np.ndarray:
    """``(N, T, dim + 1)`` float32 from each image's ``(T_i, dim)`` tile vectors in raster order:
    each vector followed by a 1, zero-padded to the longest ``T_i``."""
    longest = max((len(v) for v in per_image), default=1)
    out = np.zeros((len(per_image), max(longest, 1), dim + 1), dtype=np.float32)
    for i, vectors in enumerate(per_image):
        out[i, : len(vectors), :dim] = vectors
        out[i, : len(vectors), dim] = 1.0
    return out
