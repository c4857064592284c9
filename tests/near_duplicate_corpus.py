"""A corpus of planted near-duplicates made from the real photographs installed packages ship
(scikit-image's data folder, scikit-learn's sample images): distinct crops as bases, textures
(grass, gravel, brick) among them as hard negatives, and one copy of each base under one of the
transforms a re-encoded, resized, cropped, re-exposed, blurred, straightened or noisy copy goes
through. Small for the tests; ``bench/near_duplicates.py`` measures the matching on a large one."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter

PHOTOS = (
    "astronaut",
    "coffee",
    "chelsea",
    "camera",
    "brick",
    "grass",
    "gravel",
    "rocket",
    "text",
    "coins",
    "immunohistochemistry",
    "cell",
    "hubble_deep_field",
    "page",
    "moon",
)
TRANSFORMS = ("jpeg", "rescale", "crop", "brightness", "blur", "rotate", "noise")
MIN_CONTRAST = 15.0  # grey-level standard deviation: a base must show something (not a blank crop)


@dataclass(frozen=True)
class Item:
    name: str  # base-<n> or copy-<n>-<transform>
    base: int
    transform: str | None  # None: the base itself
    image: Image.Image


def photographs() -> Iterator[tuple[str, Image.Image]]:
    """The installed photographs as RGB pictures."""
    import skimage.data
    from sklearn.datasets import load_sample_images

    for name in PHOTOS:
        yield name, Image.fromarray(np.asarray(getattr(skimage.data, name)())).convert("RGB")
    for i, array in enumerate(load_sample_images().images):
        yield f"sklearn{i}", Image.fromarray(array).convert("RGB")


def bases(sides: tuple[int, ...] = (160,)) -> Iterator[Image.Image]:
    """Non-overlapping square crops of every photograph, at each of ``sides`` px (a crop that shows
    too little, such as a patch of blank sky, is no base)."""
    for _, photo in photographs():
        for side in sides:
            for y in range(0, photo.height - side + 1, side):
                for x in range(0, photo.width - side + 1, side):
                    crop = photo.crop((x, y, x + side, y + side))
                    if np.asarray(crop.convert("L"), dtype=np.float32).std() >= MIN_CONTRAST:
                        yield crop


def transform(im: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """One near-duplicate copy of ``im``."""
    w, h = im.size
    if kind == "jpeg":
        out = io.BytesIO()
        im.save(out, "JPEG", quality=int(rng.integers(10, 30)))
        return Image.open(io.BytesIO(out.getvalue())).convert("RGB")
    if kind == "rescale":
        f = rng.uniform(0.3, 0.6)
        return im.resize((max(8, int(w * f)), max(8, int(h * f))), Image.Resampling.BILINEAR).resize((w, h))
    if kind == "crop":  # up to 10 % of each side's length in all, split between its two ends
        cut, left, top = rng.uniform(0.04, 0.10), rng.uniform(0, 1), rng.uniform(0, 1)
        return im.crop(
            (int(cut * left * w), int(cut * top * h), int(w - cut * (1 - left) * w), int(h - cut * (1 - top) * h))
        )
    if kind == "brightness":
        return ImageEnhance.Brightness(im).enhance(float(rng.choice([0.8, 1.2])))
    if kind == "blur":
        return im.filter(ImageFilter.GaussianBlur(rng.uniform(1.0, 2.5)))
    if kind == "rotate":  # straightened: rotated, then cut to the largest upright square without corners
        angle = rng.uniform(-5, 5)
        keep = 1 / (np.cos(np.radians(abs(angle))) + np.sin(np.radians(abs(angle))))
        m = (1 - keep) / 2
        return im.rotate(angle, Image.Resampling.BILINEAR).crop(
            (int(m * w) + 1, int(m * h) + 1, int(w - m * w) - 1, int(h - m * h) - 1)
        )
    if kind == "noise":
        noisy = np.asarray(im, dtype=np.float32) + rng.normal(0, 12, (h, w, 3))
        return Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8))
    if kind == "flip":
        return im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    raise ValueError(kind)


def corpus(count: int | None = None, sides: tuple[int, ...] = (160,), seed: int = 0, flips: bool = False) -> list[Item]:
    """The bases (the first ``count``, spread over the photographs) and one copy of each, the
    transforms taken in turn; with ``flips``, a mirrored copy of each base too."""
    rng = np.random.default_rng(seed)
    found = list(bases(sides))
    if count is not None:
        found = [found[i] for i in np.linspace(0, len(found) - 1, min(count, len(found))).astype(int)]
    items = [Item(f"base-{i}", i, None, b) for i, b in enumerate(found)]
    for i, b in enumerate(found):
        kind = TRANSFORMS[i % len(TRANSFORMS)]
        items.append(Item(f"copy-{i}-{kind}", i, kind, transform(b, kind, rng)))
        if flips:
            items.append(Item(f"copy-{i}-flip", i, "flip", transform(b, "flip", rng)))
    return items
