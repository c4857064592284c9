"""What the dataset audit measures of an image: its near-duplicate signature and its quality
figures. Pure functions of a prepared (upright, RGB, preprocessed, not yet resized) picture, made to
run where ingest decodes it; the Spark job that pairs and clusters the signatures builds on them.

The signature (:func:`signature`):

- ``dup_thumb``: the picture as 32 x 32 grey levels (1,024 bytes) and its mean colour (two bytes),
  what :func:`match_score` and :func:`colour_distance` compare once a pair is a candidate;
- ``dup_vectors``: the low frequencies of that thumbnail (an 8 x 8 DCT block without its mean,
  weighted by frequency so that the fine structure counts as much as the coarse, unit length) of
  the whole picture and of its five 90 % crops (four corners and centre), six vectors of 63. A
  copy cropped by up to 10 % lines up with one of the crops, so the vectors that find candidates
  stay close under crops and small rotations, where one global hash does not.

The match score of a pair is the best normalised cross-correlation of the two thumbnails' detail
(the thumbnail minus its blur: the flat gradients of a sky or a wall do not count) over a grid of
small zooms, shifts and rotations, tried both ways round. A pair is a near-duplicate when that
score is high and their mean colours are close, or a little less close when the score is nearly
perfect (:func:`match`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Final

import numpy as np
from PIL import Image, ImageChops, ImageStat
from scipy.fft import dct
from scipy.ndimage import gaussian_filter

from spark_jobs.core.ingest_config import AuditConfig, FlagsConfig

THUMB_SIDE: Final = 32
VECTOR_SIDE: Final = 32
DCT_BLOCK: Final = 8
VECTOR_DIM: Final = DCT_BLOCK * DCT_BLOCK - 1
VIEW_FRACTION: Final = 0.9
VIEWS: Final = 6  # the whole picture, then its four corner crops and its centre crop
QUALITY_SIDE: Final = 128  # px: every audit figure is computed on the picture scaled down to this
_DETAIL_SIGMA: Final = 1.5  # px of the thumbnail: what the match score leaves out as flat
_MARGIN: Final = 3  # px of the thumbnail cut off each edge before comparing (warp borders)


def _grey(im: Image.Image, side: int) -> np.ndarray:
    return np.asarray(im.convert("L").resize((side, side), Image.Resampling.BILINEAR), dtype=np.float32)


@lru_cache(maxsize=1)
def _weights() -> np.ndarray:
    fy, fx = np.meshgrid(np.arange(DCT_BLOCK), np.arange(DCT_BLOCK), indexing="ij")
    return np.hypot(fx, fy).ravel()[1:].astype(np.float32)


@lru_cache(maxsize=1)
def _dct_rows() -> np.ndarray:
    """The first :data:`DCT_BLOCK` rows of the orthonormal DCT-II matrix of a
    :data:`VECTOR_SIDE`-px side: ``rows @ grey @ rows.T`` is the low block of ``dctn(grey,
    norm="ortho")``, without the rest of the transform."""
    return dct(np.eye(VECTOR_SIDE), norm="ortho", axis=0)[:DCT_BLOCK].astype(np.float32)


def dct_vectors(greys: np.ndarray) -> np.ndarray:
    """The unit vectors of square grey pictures' low frequencies (``(n, VECTOR_SIDE, VECTOR_SIDE)``
    -> ``(n, VECTOR_DIM)``: the 8 x 8 DCT block, no mean term, each weighted by its frequency);
    all zeros for a flat picture."""
    rows = _dct_rows()
    blocks = (rows @ greys @ rows.T).reshape(len(greys), -1)[:, 1:] * _weights()
    norms = np.linalg.norm(blocks, axis=1, keepdims=True)
    return np.divide(blocks, norms, out=np.zeros_like(blocks), where=norms > 1e-3).astype(np.float32)


def views(im: Image.Image) -> list[Image.Image]:
    """The picture and its five 90 % crops (corners, then centre)."""
    w, h = im.size
    f, m = VIEW_FRACTION, 1 - VIEW_FRACTION
    corners = ((0, 0), (m, 0), (0, m), (m, m), (m / 2, m / 2))
    return [im] + [im.crop((round(x * w), round(y * h), round((x + f) * w), round((y + f) * h))) for x, y in corners]


def reduced(im: Image.Image) -> Image.Image:
    """The picture in RGB at up to :data:`QUALITY_SIDE` px on its longer side: the one reduction
    every audit figure is computed from."""
    small = im.convert("RGB")
    if max(small.size) > QUALITY_SIDE:
        small.thumbnail((QUALITY_SIDE, QUALITY_SIDE), Image.Resampling.BILINEAR)
    return small


def signature(im: Image.Image) -> tuple[bytes, list[float]]:
    """``(dup_thumb, dup_vectors)`` of a picture (:func:`reduced` or not): the 32 x 32 grey
    thumbnail's bytes and its mean colour, and the six views' DCT vectors, flattened
    (``VIEWS * VECTOR_DIM`` floats)."""
    small = reduced(im)
    grey = small.convert("L")
    vectors = dct_vectors(np.stack([_grey(v, VECTOR_SIDE) for v in views(grey)]))
    thumb = np.clip(np.rint(_grey(grey, THUMB_SIDE)), 0, 255).astype(np.uint8).tobytes()
    return thumb + _chromaticity(small), vectors.ravel().tolist()


def _chromaticity(im: Image.Image) -> bytes:
    """The picture's mean red and green shares of r + g + b, each 0-255 (brightness leaves them be)."""
    r, g, b = (v + 1 for v in ImageStat.Stat(im.convert("RGB")).mean)  # from Pillow's histograms: no array
    return bytes(round(255 * c / (r + g + b)) for c in (r, g))


def colour_distance(thumb_a: bytes, thumb_b: bytes) -> float:
    """How far apart two signatures' mean colours are: the larger difference of their red and green
    shares (0-1); pictures alike in grey but not in colour (blue sky, grey wall) are not copies."""
    a, b = thumb_a[-2:], thumb_b[-2:]
    return max(abs(a[0] - b[0]), abs(a[1] - b[1])) / 255


def _highpass(grey: np.ndarray) -> np.ndarray:
    return grey - gaussian_filter(grey, _DETAIL_SIGMA)


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row minus its mean, at unit length (a flat row stays zeros)."""
    rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 1e-3)


def _grid() -> np.ndarray:
    """The thumbnail's pixel centres inside the margin, as (x, y) rows."""
    inside = np.arange(_MARGIN, THUMB_SIDE - _MARGIN, dtype=np.float64) + 0.5
    ys, xs = np.meshgrid(inside, inside, indexing="ij")
    return np.stack([xs.ravel(), ys.ravel()], axis=1)


@lru_cache(maxsize=1)
def _warp_matrix() -> Any:
    """Every warp as one sparse linear map: (warps x inside pixels) rows of bilinear weights over
    the thumbnail's pixels. The warps: zoom into 100 % to 90 % of the picture, shifted within what
    the zoom leaves, rotated by up to 4 degrees."""
    from scipy.sparse import csr_matrix

    points, centre, rows, cols, vals = _grid(), THUMB_SIDE / 2, [], [], []
    row = 0
    for zoom in (1.0, 0.95, 0.9):
        shifts = np.linspace(-(1 - zoom) / 2, (1 - zoom) / 2, 3) * THUMB_SIDE if zoom < 1 else (0.0,)
        for angle in np.radians((-4.0, -2.0, 0.0, 2.0, 4.0)):
            turn = zoom * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
            for dx in shifts:
                for dy in shifts:
                    source = (points - centre) @ turn.T + centre + (dx, dy) - 0.5
                    _bilinear(source, row, rows, cols, vals)
                    row += len(points)
    return csr_matrix((vals, (rows, cols)), shape=(row, THUMB_SIDE * THUMB_SIDE), dtype=np.float32)


def _bilinear(source: np.ndarray, first_row: int, rows: list, cols: list, vals: list) -> None:
    """Append the bilinear weights of sampling the thumbnail at ``source`` (x, y rows, clamped)."""
    top = np.clip(source, 0, THUMB_SIDE - 1.001)
    base = np.floor(top).astype(int)
    frac = top - base
    out = np.arange(len(source)) + first_row
    for ox, oy in ((0, 0), (1, 0), (0, 1), (1, 1)):
        weight = (frac[:, 0] if ox else 1 - frac[:, 0]) * (frac[:, 1] if oy else 1 - frac[:, 1])
        rows.extend(out)
        cols.extend((base[:, 1] + oy) * THUMB_SIDE + base[:, 0] + ox)
        vals.extend(weight)


def _as_grey(thumb: bytes) -> np.ndarray:
    return (
        np.frombuffer(thumb[: THUMB_SIDE * THUMB_SIDE], dtype=np.uint8)
        .reshape(THUMB_SIDE, THUMB_SIDE)
        .astype(np.float32)
    )


@lru_cache(maxsize=256)
def details(thumb: bytes) -> tuple[np.ndarray, np.ndarray]:
    """``(warped, plain)``: the detail of a thumbnail (the thumbnail minus its blur: flat gradients
    left out) under every warp, one unit row each, and as it is, a unit vector. Kept for the
    thumbnails met last: an image's candidate pairs come one after another."""
    grey = _highpass(_as_grey(thumb))
    warped = _warp_matrix() @ grey.ravel()
    plain = grey[_MARGIN:-_MARGIN, _MARGIN:-_MARGIN].reshape(1, -1)
    return _unit_rows(warped.reshape(-1, (THUMB_SIDE - 2 * _MARGIN) ** 2)), _unit_rows(plain)[0]


def match_score(thumb_a: bytes, thumb_b: bytes) -> float:
    """How well two thumbnails line up: the best correlation of their detail over every warp of
    one against the other, both ways round (1.0: the same picture; about 0 unrelated)."""
    (warped_a, plain_a), (warped_b, plain_b) = details(thumb_a), details(thumb_b)
    return max(float((warped_a @ plain_b).max()), float((warped_b @ plain_a).max()))


def colour_fits(colour: float, score: float, cfg: AuditConfig) -> bool:
    """Whether mean colours ``colour`` apart (:func:`colour_distance`) fit a pair whose detail
    lines up to ``score``: within ``max_colour_distance``, or within ``exact_colour_distance`` when
    the score reaches ``exact_score`` (a low-quality JPEG copy lines up but shifts its colours)."""
    return colour <= cfg.max_colour_distance or (colour <= cfg.exact_colour_distance and score >= cfg.exact_score)


def match(thumb_a: bytes, thumb_b: bytes, cfg: AuditConfig) -> float | None:
    """The match score of two signatures when they are near-duplicates under ``cfg``: their detail
    lining up to ``min_score`` with mean colours that fit it (:func:`colour_fits`); None when they
    are not. The colour is checked first: it costs nothing beside the score."""
    colour = colour_distance(thumb_a, thumb_b)
    if colour > max(cfg.max_colour_distance, cfg.exact_colour_distance):
        return None
    score = match_score(thumb_a, thumb_b)
    return score if score >= cfg.min_score and colour_fits(colour, score, cfg) else None


# ---- quality figures ------------------------------------------------------------------------


def quality(im: Image.Image, orig_width: int, orig_height: int) -> dict[str, Any]:
    """The quality figures of a picture (:func:`reduced` or not): ``sharpness`` (variance of the
    Laplacian of its grey levels, 0-255, at up to 128 px), ``brightness`` and ``contrast`` (mean
    and standard deviation of the grey levels, 0-1), ``entropy`` (bits of the grey-level histogram,
    0-8), ``grayscale`` (no pixel's channels differ by more than 2 levels) and ``aspect_ratio``
    (original width / height)."""
    small = reduced(im)
    grey = np.asarray(small.convert("L"))
    counts = np.bincount(grey.ravel(), minlength=256)
    p = counts[counts > 0] / grey.size
    grey_f = grey.astype(np.float32)
    return {
        "sharpness": float(laplacian(grey_f).var()),
        "brightness": float(grey_f.mean() / 255),
        "contrast": float(grey_f.std() / 255),
        "entropy": float(-(p * np.log2(p)).sum()) + 0.0,  # + 0.0: a flat picture's is 0, not -0
        "grayscale": _channel_spread(small) <= 2,
        "aspect_ratio": float(orig_width / orig_height),
    }


def laplacian(grey: np.ndarray) -> np.ndarray:
    """The 4-neighbour Laplacian of a grey picture, edges mirrored (``scipy.ndimage.laplace``'s
    result, from five slices: a third less time than its two 1-D passes)."""
    a = np.pad(grey, 1, mode="symmetric")
    return a[:-2, 1:-1] + a[2:, 1:-1] + a[1:-1, :-2] + a[1:-1, 2:] - 4 * a[1:-1, 1:-1]


def _channel_spread(im: Image.Image) -> int:
    """The largest difference between two channels of one pixel (0 for a grey picture), with
    Pillow's own differences and extrema: a tenth of numpy's max - min over the channel axis."""
    r, g, b = im.split()
    return max(ImageChops.difference(x, y).getextrema()[1] for x, y in ((r, g), (g, b), (r, b)))


def measure(im: Image.Image, orig_width: int, orig_height: int, thresholds: FlagsConfig) -> dict[str, Any]:
    """Every audit column of a prepared picture: its signature, quality figures and flags."""
    small = reduced(im)
    thumb, vectors = signature(small)
    figures = quality(small, orig_width, orig_height)
    return {"dup_thumb": thumb, "dup_vectors": vectors, **figures, "flags": flags(figures, thresholds)}


FLAGS: Final = ("blurry", "dark", "light", "low_contrast", "low_information", "grayscale", "odd_aspect")


def flags(figures: dict[str, Any], cfg: FlagsConfig) -> list[str]:
    """The quality flags of an image's :func:`quality` figures under ``cfg``'s thresholds, in
    :data:`FLAGS` order."""
    aspect = figures["aspect_ratio"]
    raised = {
        "blurry": figures["sharpness"] < cfg.blurry_below,
        "dark": figures["brightness"] < cfg.dark_below,
        "light": figures["brightness"] > cfg.light_above,
        "low_contrast": figures["contrast"] < cfg.low_contrast_below,
        "low_information": figures["entropy"] < cfg.low_information_below,
        "grayscale": figures["grayscale"],
        "odd_aspect": max(aspect, 1 / aspect) > cfg.odd_aspect_above,
    }
    return [f for f in FLAGS if raised[f]]
