"""Pure image functions: decode bytes into normalised RGB pixels, or say why they cannot be used.

Normalised pixels are uint8 RGB in row-major HWC order, ``image_size`` x ``image_size`` x 3:
EXIF orientation applied, every mode converted to RGB, preprocessing applied, resized with the
configured policy. Consumers scale to floats themselves; uint8 is lossless and 4x smaller.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any, Final

import numpy as np
import pyarrow as pa
from PIL import Image, ImageFilter, ImageOps, UnidentifiedImageError

from spark_jobs.core.ingest_config import IngestConfig, ResizeConfig
from spark_jobs.core.tables import DECODED_FIELDS, SPLITS
from spark_jobs.imaging import audit

# Why a file was quarantined. A short fixed vocabulary, so the gate and people can count them.
EMPTY: Final = "empty"
UNSUPPORTED_EXTENSION: Final = "unsupported_extension"
NOT_AN_IMAGE: Final = "not_an_image"
TRUNCATED: Final = "truncated"
UNREADABLE: Final = "unreadable"
DECOMPRESSION_BOMB: Final = "decompression_bomb"
TOO_SMALL: Final = "too_small"
UNSUPPORTED_MODE: Final = "unsupported_mode"
UNLABELLED: Final = "unlabelled"
FETCH_FAILED: Final = "fetch_failed"
NOT_A_FILE: Final = "not_a_file"
TOO_LARGE: Final = "too_large"
LABEL_CONFLICT: Final = "label_conflict"
DUPLICATE: Final = "duplicate"
REASONS: Final = (
    EMPTY,
    UNSUPPORTED_EXTENSION,
    NOT_AN_IMAGE,
    TRUNCATED,
    UNREADABLE,
    DECOMPRESSION_BOMB,
    TOO_SMALL,
    UNSUPPORTED_MODE,
    UNLABELLED,
    FETCH_FAILED,
    NOT_A_FILE,
    TOO_LARGE,
    LABEL_CONFLICT,
    DUPLICATE,
)

RESAMPLE: Final = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}


class Rejected(Exception):
    """An input that cannot be used: ``reason`` is from :data:`REASONS`, ``detail`` says more."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Decoded:
    """One usable image: normalised pixels plus what the original looked like."""

    pixels: bytes
    height: int
    width: int
    orig_width: int
    orig_height: int
    orig_format: str
    orig_mode: str
    audit: dict[str, Any] | None = None  # the dataset audit's columns (spark_jobs.imaging.audit.measure)


def image_id(data: bytes) -> str:
    """Content hash of the source bytes: the image's identity everywhere in the platform."""
    return hashlib.sha256(data).hexdigest()


def assign_split(image_id_: str, fractions: dict[str, float], seed: int = 0) -> str:
    """train/val/test as a pure function of the image id (same on every rerun and machine)."""
    digest = hashlib.sha256(f"{seed}:{image_id_}".encode()).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    cumulative = 0.0
    for name in SPLITS:
        cumulative += fractions[name]
        if u < cumulative:
            return name
    return SPLITS[-1]


def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(tuple(extensions))


def _scale_to_uint8(arr: np.ndarray, full_scale: float | None) -> np.ndarray:
    """0..255 from ``full_scale`` (or, when None, the finite range of ``arr``). Non-finite
    pixels of a float image never set the range: +inf is white, -inf and NaN black."""
    arr = arr.astype(np.float64)
    if full_scale is None:
        finite = arr[np.isfinite(arr)]
        lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 0.0)
        arr = (arr - lo) / (hi - lo) * 255.0 if hi > lo else np.where(arr == np.inf, 255.0, 0.0)
    else:
        arr = arr / full_scale * 255.0
    return np.clip(np.rint(np.nan_to_num(arr, nan=0.0, posinf=255.0, neginf=0.0)), 0, 255).astype(np.uint8)


def _high_depth_to_l(im: Image.Image) -> Image.Image:
    """8-bit grey from 16/32-bit integer or float modes, scaled by range, not clipped."""
    arr = np.asarray(im)
    if im.mode.startswith("I;16"):
        out = _scale_to_uint8(arr, 65535.0)
    elif im.mode == "I":
        in_16_bit = arr.min() >= 0 and arr.max() <= 65535
        out = _scale_to_uint8(arr, 65535.0 if in_16_bit and arr.max() > 255 else 255.0 if in_16_bit else None)
    else:  # "F"
        finite = arr[np.isfinite(arr)]
        in_unit = finite.size > 0 and finite.min() >= 0.0 and finite.max() <= 1.0
        out = _scale_to_uint8(arr, 1.0 if in_unit else None)
    return Image.fromarray(out, mode="L")


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    rgba = im.convert("RGBA")
    base = Image.new("RGBA", rgba.size, (*background, 255))
    return Image.alpha_composite(base, rgba).convert("RGB")


def _cmyk_to_rgb(im: Image.Image) -> Image.Image:
    profile = im.info.get("icc_profile")
    if profile:
        try:
            from PIL import ImageCms

            src = ImageCms.ImageCmsProfile(io.BytesIO(profile))
            return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"), outputMode="RGB")
        except Exception:  # a broken embedded profile: fall back to Pillow's conversion
            pass
    return im.convert("RGB")


def to_rgb(im: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """RGB version of an image of any Pillow mode; transparency composited over ``background``."""
    mode = im.mode
    if mode == "RGB":
        return im
    if mode in ("RGBA", "LA", "La", "RGBa", "PA") or (mode in ("P", "L", "RGB") and "transparency" in im.info):
        return _composite(im, background)
    if mode == "CMYK":
        return _cmyk_to_rgb(im)
    if mode.startswith("I") or mode == "F":
        return _high_depth_to_l(im).convert("RGB")
    try:
        return im.convert("RGB")
    except (ValueError, OSError) as exc:
        raise Rejected(UNSUPPORTED_MODE, f"cannot convert mode {mode} to RGB: {exc}") from exc


def preprocess(im: Image.Image, denoise: str, median_size: int, contrast: str) -> Image.Image:
    """Optional denoise (median) then contrast (autocontrast / equalize) of an RGB image."""
    if denoise == "median":
        im = im.filter(ImageFilter.MedianFilter(median_size))
    if contrast == "autocontrast":
        im = ImageOps.autocontrast(im)
    elif contrast == "equalize":
        im = ImageOps.equalize(im)
    return im


def resize(im: Image.Image, size: int, cfg: ResizeConfig) -> Image.Image:
    """A ``size`` x ``size`` image: pad (letterbox), crop (fill + centre-crop) or stretch."""
    method = RESAMPLE[cfg.resample]
    if cfg.policy == "stretch":
        return im.resize((size, size), method)
    if cfg.policy == "crop":
        return ImageOps.fit(im, (size, size), method=method, centering=(0.5, 0.5))
    return ImageOps.pad(im, (size, size), method=method, color=tuple(cfg.fill), centering=(0.5, 0.5))


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open (headers only) with the bomb limit enforced; raises :class:`Rejected`."""
    if not data:
        raise Rejected(EMPTY, "zero-byte file")
    with warnings.catch_warnings():
        # Pillow warns between the limit and twice the limit and raises above: treat both alike.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        previous = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = max_pixels
        try:
            im = Image.open(io.BytesIO(data))
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise Rejected(DECOMPRESSION_BOMB, str(exc)) from exc
        except UnidentifiedImageError as exc:
            raise Rejected(NOT_AN_IMAGE, _sniff(data)) from exc
        except (OSError, SyntaxError, ValueError) as exc:
            raise Rejected(UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
        finally:
            Image.MAX_IMAGE_PIXELS = previous
    width, height = im.size
    if width * height > max_pixels:
        raise Rejected(DECOMPRESSION_BOMB, f"{width}x{height} = {width * height} pixels > limit {max_pixels}")
    return im


def _sniff(data: bytes) -> str:
    head = data[:64].lstrip().lower()
    if head.startswith((b"<!doctype", b"<html", b"<?xml", b"<svg")):
        return "markup (HTML/XML/SVG), not a raster image"
    # Never the bytes themselves: a quarantine row must not copy a file's content (a link named
    # x.png to a secret would otherwise leak its first bytes into the report).
    return f"unknown format ({len(data)} bytes)"


def _load(im: Image.Image) -> None:
    try:
        im.load()
    except OSError as exc:
        text = str(exc).lower()
        if "truncated" in text or "broken data stream" in text or "premature end" in text:
            raise Rejected(TRUNCATED, str(exc)) from exc
        raise Rejected(UNREADABLE, f"{type(exc).__name__}: {exc}") from exc
    except (SyntaxError, ValueError, EOFError) as exc:
        raise Rejected(UNREADABLE, f"{type(exc).__name__}: {exc}") from exc


def _prepared(data: bytes, cfg: IngestConfig, full_resolution: bool) -> tuple[tuple[str, str, int, int], Image.Image]:
    """``((format, mode, width, height), prepared)``: the file as opened (oriented size) and its
    RGB, oriented, preprocessed image before any resize; :class:`Rejected` when it cannot be used."""
    im = _open(data, cfg.max_image_pixels)
    width, height = im.size  # from the header, before a draft scales it
    if min(width, height) < cfg.min_side:
        raise Rejected(TOO_SMALL, f"{width}x{height} < min_side {cfg.min_side}")
    mode = im.mode
    if not full_resolution and im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK"):
        # Let libjpeg decode at a reduced DCT scale, never below twice the target side.
        im.draft(im.mode, (2 * cfg.image_size, 2 * cfg.image_size))
    # The pixels (of the first frame of an animated or multi-page file) load before anything else
    # reads the file: EXIF, frame counts. Reading them first would meet a load error there, where
    # it is easily lost, and a second load would then "succeed" with partial pixels.
    _load(im)
    orig_width, orig_height = _oriented_size(im, width, height)
    return (im.format or "unknown", mode, orig_width, orig_height), _normalised(ImageOps.exif_transpose(im), cfg)


def _normalised(im: Image.Image, cfg: IngestConfig) -> Image.Image:
    """A loaded, upright picture in RGB with the configured preprocessing (not resized)."""
    im = to_rgb(im, tuple(cfg.alpha_background))
    p = cfg.preprocess
    return preprocess(im, p.denoise, p.median_size, p.contrast)


@contextlib.contextmanager
def any_failure_rejected() -> Iterator[None]:
    """Pillow raises far more than ``OSError`` on malformed files (``TypeError``, ``IndexError``,
    ``SyntaxError``, ``struct.error``, ...): whatever a file makes the decoder raise is the file's
    fault, an ``unreadable`` :class:`Rejected` naming the exception type, never a failed job."""
    try:
        yield
    except Rejected:
        raise
    except Exception as exc:
        kind = type(exc)
        name = kind.__qualname__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__qualname__}"
        raise Rejected(UNREADABLE, f"{name}: {exc}"[:500]) from None


THUMB_SIDE = 96  # px: the longer side of a report's picture


def thumbnail(data: bytes, max_pixels: int, side: int = THUMB_SIDE) -> bytes | None:
    """A PNG picture of an image file for a report, ``side`` px on its longer side, or None when the
    bytes do not decode. Opened as ingest opens a file (:func:`_open`: the bomb limit
    ``max_pixels``; :func:`_load`: pixels before anything else, so a damaged file never shows as a
    partial picture; :func:`to_rgb`: any mode). A JPEG decodes at a reduced DCT scale, never below
    twice ``side``: a report's dozen camera photos cost 13 ms each instead of 59 here."""
    try:
        with any_failure_rejected():
            im = _open(data, max_pixels)
            if im.format == "JPEG":
                im.draft(im.mode, (2 * side, 2 * side))
            _load(im)
            return _png(to_rgb(im), side)
    except Rejected:
        return None


def pixels_thumbnail(pixels: bytes, height: int, width: int, side: int = THUMB_SIDE) -> bytes | None:
    """A PNG picture of a table's uint8 RGB pixels (row-major ``height x width x 3``), or None when
    they are not that many bytes."""
    if len(pixels) != height * width * 3:
        return None
    return _png(Image.frombytes("RGB", (width, height), bytes(pixels)), side)


def _png(im: Image.Image, side: int) -> bytes:
    scale = side / max(im.width, im.height)
    size = (max(1, round(im.width * scale)), max(1, round(im.height * scale)))
    # Small scans are enlarged with hard pixel edges (what the model saw); large photos shrunk smoothly.
    im = im.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)
    out = io.BytesIO()
    im.save(out, "PNG", optimize=True)
    return out.getvalue()


def decode(data: bytes, cfg: IngestConfig, audited: bool = False) -> Decoded:
    """Normalised pixels of one encoded image, or :class:`Rejected` saying why not; ``audited``:
    with the dataset audit's columns, measured on the same decoded picture."""
    with any_failure_rejected():
        opened, im = _prepared(data, cfg, full_resolution=False)
        decoded = _resized(opened, im, cfg)
        if audited:
            return replace(decoded, audit=audit.measure(im, decoded.orig_width, decoded.orig_height, cfg.flags))
        return decoded


def decode_frame(im: Image.Image, cfg: IngestConfig) -> Decoded:
    """Normalised pixels of a picture decoded elsewhere (a video frame), prepared as
    :func:`decode` prepares an image file, or :class:`Rejected` saying why not."""
    with any_failure_rejected():
        if min(im.size) < cfg.min_side:
            raise Rejected(TOO_SMALL, f"{im.width}x{im.height} < min_side {cfg.min_side}")
        return _resized(("video", im.mode, im.width, im.height), _normalised(im, cfg), cfg)


def _resized(opened: tuple[str, str, int, int], im: Image.Image, cfg: IngestConfig) -> Decoded:
    orig_format, orig_mode, orig_width, orig_height = opened
    pixels = np.asarray(resize(im, cfg.image_size, cfg.resize), dtype=np.uint8)
    return Decoded(
        pixels=pixels.tobytes(),
        height=pixels.shape[0],
        width=pixels.shape[1],
        orig_width=orig_width,
        orig_height=orig_height,
        orig_format=orig_format,
        orig_mode=orig_mode,
    )


def decode_record(
    uri: str,
    label: str | None,
    data: bytes | Exception,
    cfg: IngestConfig,
    labelled: bool = True,
    content_id: str | None = None,
) -> dict[str, Any]:
    """One decoded row: pixels and split for a usable image, otherwise ``reason`` and ``detail``.
    With ``labelled`` false (scoring) an image needs no class folder and gets no split;
    ``content_id``: ``data``'s :func:`image_id` when the caller hashed it already."""
    row: dict[str, Any] = dict.fromkeys(DECODED_FIELDS)
    row.update(source_uri=uri, label=label)
    if isinstance(data, Exception):
        return {**row, "reason": getattr(data, "reason", FETCH_FAILED), "detail": str(data), "size_bytes": 0}
    row.update(image_id=content_id or image_id(data), size_bytes=len(data))
    if not has_extension(uri, cfg.extensions):
        return {**row, "reason": UNSUPPORTED_EXTENSION, "detail": f"extension not in {list(cfg.extensions)}"}
    try:
        decoded = decode(data, cfg, audited=labelled)
    except Rejected as exc:
        return {**row, "reason": exc.reason, "detail": exc.detail[:500]}
    if label is None and labelled:
        return {
            **row,
            "reason": UNLABELLED,
            "detail": "file is directly under the source root, not in a class folder",
        }
    row.update(
        split=assign_split(row["image_id"], cfg.split.fractions(), cfg.split.seed) if labelled else None,
        orig_width=decoded.orig_width,
        orig_height=decoded.orig_height,
        orig_format=decoded.orig_format,
        orig_mode=decoded.orig_mode,
        height=decoded.height,
        width=decoded.width,
        pixels=decoded.pixels,
        **(decoded.audit or {}),
        cluster_id=row["image_id"] if labelled else None,  # until ingest finds its near-duplicates
    )
    return row


def decode_full(data: bytes, cfg: IngestConfig) -> np.ndarray:
    """The full-resolution HWC uint8 RGB array of an image, prepared exactly as :func:`decode`
    prepares it (orientation, RGB conversion, preprocessing) but not resized: what tiles cut."""
    with any_failure_rejected():
        _, im = _prepared(data, cfg, full_resolution=True)
        return np.asarray(im, dtype=np.uint8)


def _oriented_size(im: Image.Image, width: int, height: int) -> tuple[int, int]:
    """Original ``width`` and ``height`` of a loaded image as it is meant to be seen (EXIF
    rotation applied; unreadable EXIF is no rotation)."""
    try:
        orientation = im.getexif().get(0x0112, 1)
    except Exception:  # the pixels loaded already: only the metadata is bad
        orientation = 1
    if orientation in (5, 6, 7, 8):
        width, height = height, width
    return width, height


def pixels_to_array(pixels: bytes, height: int, width: int) -> np.ndarray:
    """The HWC uint8 array stored in a ``pixels`` column."""
    return np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)


def stack_pixels(pixels: pa.Array, height: int, width: int) -> np.ndarray:
    """A ``pixels`` column (uint8 HWC blobs of one size) as one ``(N, H, W, 3)`` array, read
    straight from the Arrow buffers when the blobs are contiguous (they are, as Spark and pyarrow
    read them)."""
    n, size = len(pixels), height * width * 3
    if n == 0:
        return np.zeros((0, height, width, 3), dtype=np.uint8)
    if pixels.null_count == 0 and pa.types.is_binary(pixels.type):
        offsets = np.frombuffer(pixels.buffers()[1], dtype=np.int32)[pixels.offset : pixels.offset + n + 1]
        if offsets[-1] - offsets[0] == n * size:
            data = np.frombuffer(pixels.buffers()[2], dtype=np.uint8)[offsets[0] : offsets[-1]]
            return data.reshape(n, height, width, 3)
    return np.frombuffer(b"".join(pixels.to_pylist()), dtype=np.uint8).reshape(n, height, width, 3)


def vectors_array(vectors: np.ndarray) -> pa.ListArray:
    """An ``(N, D)`` float32 array as an Arrow list<float> column, without a Python object per row."""
    n, d = vectors.shape
    offsets = pa.array(np.arange(0, (n + 1) * d, d, dtype=np.int32)[: n + 1])
    return pa.ListArray.from_arrays(offsets, pa.array(np.ascontiguousarray(vectors, dtype=np.float32).ravel()))
