"""The light tile screen of the tile-level cascade (``score.cascade.tile_fraction``): a linear
model on each tile's ``SIDE x SIDE`` grey thumbnail that predicts how much a ``tiles_attention``
model will weigh the tile, so that only an image's most promising tiles go through the heavy
backbone and the attention.

It has no labels of its own: it learns where the heavy model looks. After the attention model
is trained, it is fitted by ridge regression on the attention logits (each tile's log weight less
its image's mean) that the model gives the tiles of at most ``train.tiles.screen_images`` training
images, read once more from their files for their tiles' thumbnails (:func:`thumbs`). Its
coefficients are a small JSON file beside the model (:data:`SCREEN`), recorded in its card.

Pure functions, and :func:`tile_thumbs`, the Arrow-batched function the train stage's one Spark
job runs (:func:`spark_jobs.train.fit_screen`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from spark_jobs.core import store
from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, tiles
from spark_jobs.imaging.tiles import TilesConfig

SIDE = 8  # a tile's thumbnail: SIDE x SIDE grey values
SCREEN = "screen.json"
FLOOR = 1e-8  # the smallest attention weight a logit is taken of
THUMBS_SCHEMA = "image_id string, thumbs array<float>"  # :func:`tile_thumbs`'s rows


def thumbs(blocks: np.ndarray) -> np.ndarray:
    """``(T, SIDE * SIDE)`` float32 in [0, 1]: each ``(S, S, 3)`` uint8 tile block's grey mean
    over a ``SIDE x SIDE`` grid (block averages; ``S`` a multiple of ``SIDE``, else resized)."""
    grey = blocks.astype(np.float32).mean(axis=-1) / 255.0
    n, size = grey.shape[0], grey.shape[1]
    if size % SIDE == 0:
        step = size // SIDE
        return grey.reshape(n, SIDE, step, SIDE, step).mean(axis=(2, 4)).reshape(n, SIDE * SIDE)
    from PIL import Image

    small = [np.asarray(Image.fromarray(g).resize((SIDE, SIDE), Image.Resampling.BOX)) for g in grey]
    return np.asarray(small, dtype=np.float32).reshape(n, SIDE * SIDE)


def logits(weights: np.ndarray) -> np.ndarray:
    """An image's attention weights ``(T,)`` as centred logits: what a softmax reads (the screen's
    target; the image's mean is left out, as a softmax ignores it)."""
    values = np.log(np.maximum(weights, FLOOR))
    return values - values.mean()


def fit(features: np.ndarray, targets: np.ndarray, ridge: float = 1.0) -> np.ndarray:
    """Ridge regression coefficients ``(D + 1,)`` (the last is the intercept) of ``targets (N,)``
    on ``features (N, D)``; the intercept is not shrunk."""
    x = np.hstack([features, np.ones((len(features), 1), dtype=features.dtype)]).astype(np.float64)
    penalty = np.eye(x.shape[1]) * ridge
    penalty[-1, -1] = 0.0
    return np.linalg.solve(x.T @ x + penalty, x.T @ targets.astype(np.float64))


def kept(count: int, fraction: float) -> int:
    """How many of an image's ``count`` tiles go on: ``ceil(fraction * count)``, at least one."""
    return max(1, min(count, math.ceil(fraction * count - 1e-9)))


@dataclass(frozen=True)
class Screen:
    """A fitted screen: ``coef`` as :func:`fit` returns it; what it was fitted on."""

    coef: tuple[float, ...]
    images: int
    tiles: int
    recall: float  # the share of fitting images whose heaviest tile the screen ranks in its top quarter

    def scores(self, features: np.ndarray) -> np.ndarray:
        """Predicted attention logits ``(T,)`` of thumbnails ``(T, SIDE * SIDE)``."""
        coef = np.asarray(self.coef, dtype=np.float32)
        return features @ coef[:-1] + coef[-1]

    def choose(self, blocks: np.ndarray, fraction: float) -> np.ndarray:
        """The indexes, in raster order, of the ``fraction`` of an image's tile blocks the screen
        rates highest (all of them at ``fraction`` 1)."""
        if fraction >= 1.0:
            return np.arange(len(blocks))
        ranked = np.argsort(-self.scores(thumbs(blocks)), kind="stable")
        return np.sort(ranked[: kept(len(blocks), fraction)])

    def write(self, folder: Path) -> Path:
        path = folder / SCREEN
        body = {"side": SIDE, "coef": list(self.coef), "images": self.images, "tiles": self.tiles}
        path.write_text(json.dumps(body | {"recall": self.recall}, indent=1) + "\n")
        return path

    @classmethod
    def read(cls, path: Path) -> Screen:
        body: dict[str, Any] = json.loads(path.read_text())
        if body.get("side") != SIDE or len(body.get("coef", ())) != SIDE * SIDE + 1:
            raise ValueError(f"{path} is not a tile screen of {SIDE} x {SIDE} thumbnails")
        return cls(
            tuple(float(c) for c in body["coef"]), int(body["images"]), int(body["tiles"]), float(body["recall"])
        )


def fitted(per_image: list[tuple[np.ndarray, np.ndarray]], ridge: float = 1.0) -> Screen:
    """The screen of ``(thumbnails (T_i, SIDE * SIDE), attention weights (T_i,))`` of each fitting
    image, with its recall: how often the image's heaviest tile is in the screen's top quarter."""
    features = np.concatenate([f for f, _ in per_image])
    targets = np.concatenate([logits(w) for _, w in per_image])
    coef = fit(features, targets, ridge)
    screen = Screen(tuple(float(c) for c in coef), len(per_image), len(features), 0.0)
    hits = [int(np.argmax(w)) in np.argsort(-screen.scores(f))[: kept(len(w), 0.25)] for f, w in per_image]
    return Screen(screen.coef, screen.images, screen.tiles, float(np.mean(hits)) if hits else 0.0)


def tile_thumbs(
    batches: Iterator[pa.RecordBatch], cfg: IngestConfig, tiles_cfg: TilesConfig
) -> Iterator[pa.RecordBatch]:
    """Arrow-batched, on the executors: for rows of ``image_id, source_uri``, each image's tile
    thumbnails (:func:`thumbs`) in raster order, flattened (:data:`THUMBS_SCHEMA`), its file cut
    again as the features stage cut it. A file that is gone, changed or no longer cut yields no
    row (the screen is fitted on the others)."""
    for batch in batches:
        out: dict[str, list[Any]] = {"image_id": [], "thumbs": []}
        uris = batch.column("source_uri").to_pylist()
        for image, data in zip(
            batch.column("image_id").to_pylist(), store.fetch_many(uris, cfg.fetch_threads), strict=True
        ):
            if isinstance(data, Exception) or images.image_id(data) != image:
                continue
            try:
                blocks = np.stack([block for _tile, block in tiles.image_tiles(data, cfg, tiles_cfg)])
            except (images.Rejected, tiles.TooManyTiles):
                continue
            out["image_id"].append(image)
            out["thumbs"].append(thumbs(blocks).ravel())
        if out["image_id"]:
            values = pa.array(out["thumbs"], type=pa.list_(pa.float32()))
            yield pa.RecordBatch.from_pydict({"image_id": out["image_id"], "thumbs": values})
