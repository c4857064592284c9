"""Camera-sized JPEGs for the benchmarks, made from the real photographs scikit-image and
scikit-learn ship (nothing is downloaded).

Each file is one source photograph (astronaut, coffee, chelsea, rocket, the Hubble deep field,
the retina, the motorcycle pair, the IHC slide, China, the flower), a random crop of it at a
camera's aspect ratio (4:3, 3:2, 16:9 or 1:1, landscape or portrait), scaled to a random long
side of ``MIN_SIDE``-``MAX_SIDE`` px, with colour jitter (brightness, contrast, saturation). A
photograph scaled up has none of the fine detail a camera records, which is what makes a camera's
JPEG large: each file also gets a real texture (grass, gravel or brick, at its native scale) as a
faint luminance grain and sensor-like noise, so it is about as large as a camera's (0.2-0.35
bytes per pixel at quality 90, 1.2 MB on average), not a smooth upscale's few bytes. Saved at quality 90 with libjpeg's
default 4:2:0 chroma subsampling, as a camera writes.

Each file depends only on ``(seed, index)``: a folder is made once and reused (a stamp file beside
it records what it holds), and a smaller folder of the same seed is the first files of a larger
one (hard-linked from it when that one was made first).
"""

from __future__ import annotations

import json
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

MIN_SIDE, MAX_SIDE = 1000, 4000
QUALITY = 90
PHOTOS = (
    "astronaut.png", "chelsea.png", "coffee.png", "hubble_deep_field.jpg", "retina.jpg", "rocket.jpg",
    "motorcycle_left.png", "motorcycle_right.png", "ihc.png", "china.jpg", "flower.jpg",
)  # fmt: skip
TEXTURES = ("grass.png", "gravel.png", "brick.png")
ASPECTS = ((4, 3), (3, 2), (16, 9), (1, 1))
NOISE_TILE = 1024  # px: one tile of sensor noise, rolled at random per file


def _source(name: str) -> Image.Image:
    import skimage
    import sklearn.datasets

    for folder in (Path(skimage.__file__).parent / "data", Path(sklearn.datasets.__file__).parent / "images"):
        if (folder / name).exists():
            with Image.open(folder / name) as im:
                return im.convert("RGB") if name not in TEXTURES else im.convert("L")
    raise FileNotFoundError(f"{name}: not in scikit-image's or scikit-learn's data")


_CACHE: dict[str, object] = {}


def _sources() -> tuple[list[Image.Image], list[np.ndarray], np.ndarray]:
    if not _CACHE:
        textures = []
        for name in TEXTURES:
            t = np.asarray(_source(name), dtype=np.float32)
            textures.append((t - t.mean()) / (t.std() or 1.0))
        noise = np.random.default_rng(12345).normal(0.0, 4.5, size=(NOISE_TILE, NOISE_TILE, 3))
        _CACHE.update(photos=[_source(n) for n in PHOTOS], textures=textures, noise=noise.astype(np.float32))
    return _CACHE["photos"], _CACHE["textures"], _CACHE["noise"]  # type: ignore[return-value]


def photo(index: int, seed: int = 0) -> tuple[str, Image.Image]:
    """``(source name, picture)`` of the ``index``-th photo of ``seed``."""
    photos, textures, noise = _sources()
    rng = np.random.default_rng([seed, index])
    k = index % len(photos)
    src = photos[k]
    a, b = ASPECTS[rng.integers(len(ASPECTS))]
    if rng.random() < 0.3:
        a, b = b, a  # portrait
    long_side = int(rng.integers(MIN_SIDE, MAX_SIDE + 1))
    width, height = (long_side, round(long_side * b / a)) if a >= b else (round(long_side * a / b), long_side)
    # The largest crop of the source at that aspect, then 60-100 % of it, placed at random.
    fit = min(src.width / width, src.height / height) * rng.uniform(0.6, 1.0)
    cw, ch = max(8, int(width * fit)), max(8, int(height * fit))
    x, y = int(rng.integers(0, src.width - cw + 1)), int(rng.integers(0, src.height - ch + 1))
    im = src.crop((x, y, x + cw, y + ch)).resize((width, height), Image.Resampling.BICUBIC)
    for enhance, low, high in ((ImageEnhance.Brightness, 0.8, 1.2), (ImageEnhance.Contrast, 0.8, 1.2),
                               (ImageEnhance.Color, 0.7, 1.3)):  # fmt: skip
        im = enhance(im).enhance(rng.uniform(low, high))
    pixels = np.asarray(im, dtype=np.float32)
    texture = textures[int(rng.integers(len(textures)))]
    grain = np.tile(texture, (-(-height // texture.shape[0]), -(-width // texture.shape[1])))[:height, :width]
    pixels *= 1.0 + 0.05 * grain[..., None]
    dy, dx = int(rng.integers(NOISE_TILE)), int(rng.integers(NOISE_TILE))
    rolled = np.roll(noise, (dy, dx), axis=(0, 1))
    pixels += np.tile(rolled, (-(-height // NOISE_TILE), -(-width // NOISE_TILE), 1))[:height, :width]
    return PHOTOS[k].split(".")[0], Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def _write(folder: Path, seed: int, index: int) -> int:
    name, im = photo(index, seed)
    path = folder / name / f"{index:05d}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path, quality=QUALITY)
    return path.stat().st_size


def _linked(folder: Path, made: dict) -> bool:
    """Hard-link the first ``made["count"]`` files of a larger folder of the same seed beside
    ``folder``, if one was made: they are the same files (a file depends only on seed and index)."""
    for stamp in folder.parent.glob(".*.json"):
        other = json.loads(stamp.read_text())
        source = stamp.with_name(stamp.stem[1:])
        same_kind = other == made | {"count": other.get("count")}
        if source != folder and source.is_dir() and same_kind and other["count"] >= made["count"]:
            for path in source.rglob("*.jpg"):
                if int(path.stem) < made["count"]:
                    (folder / path.parent.name).mkdir(exist_ok=True)
                    os.link(path, folder / path.parent.name / path.name)
            return True
    return False


def make_photos(folder: Path, count: int, seed: int = 0, workers: int | None = None) -> tuple[int, int]:
    """``count`` photo JPEGs under ``folder`` (a folder per source photograph): ``(files, bytes)``."""
    stamp = folder.with_name(f".{folder.name}.json")
    made = {"count": count, "seed": seed, "sides": [MIN_SIDE, MAX_SIDE], "quality": QUALITY}
    if not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        if not _linked(folder, made):
            with ProcessPoolExecutor(workers or os.cpu_count() or 1) as pool:
                list(pool.map(_write, [folder] * count, [seed] * count, range(count), chunksize=8))
        stamp.write_text(json.dumps(made))
    files = list(folder.rglob("*.jpg"))
    return len(files), sum(p.stat().st_size for p in files)
