"""A seeded mutation fuzz of the decoder: whatever bytes a file holds, decoding it gives an image or
a :class:`spark_jobs.imaging.images.Rejected`, never another exception (a job would fail on one file)."""

from __future__ import annotations

import io
import random
from collections import Counter

import pytest
from PIL import Image

from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images

pytestmark = pytest.mark.filterwarnings("ignore")  # Pillow warns about many of the mutants

MUTANTS_PER_SEED = 850  # x 14 seeds: 11,900 inputs, a few seconds here
# Small output and pixel limit: a mutated header claiming a huge image is rejected, not decoded.
CFG = IngestConfig(image_size=8, min_side=1, max_image_pixels=1 << 14)


def _encode(im: Image.Image, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt, **options)
    return out.getvalue()


def seeds() -> dict[str, bytes]:
    """One small file of each kind the platform meets: PNG (RGB, RGBA, P with transparency, L),
    JPEG (RGB, CMYK, with an EXIF orientation), animated GIF, TIFF (8-bit, 16-bit, LZW), BMP, WebP."""
    rng = random.Random(7)
    rgb = Image.frombytes("RGB", (16, 12), bytes(rng.randrange(256) for _ in range(16 * 12 * 3)))
    palette = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees
    frames = [rgb.convert("P"), rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).convert("P")]
    gif = io.BytesIO()
    frames[0].save(gif, "GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    return {
        "png-rgb": _encode(rgb, "PNG"),
        "png-rgba": _encode(rgb.convert("RGBA"), "PNG"),
        "png-p-transparent": _encode(palette, "PNG", transparency=0),
        "png-l": _encode(rgb.convert("L"), "PNG"),
        "jpeg-rgb": _encode(rgb, "JPEG", quality=90),
        "jpeg-cmyk": _encode(rgb.convert("CMYK"), "JPEG"),
        "jpeg-exif-orientation": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "gif-animated": gif.getvalue(),
        "tiff-8bit": _encode(rgb, "TIFF"),
        "tiff-16bit": _encode(rgb.convert("I;16"), "TIFF"),
        "tiff-lzw": _encode(rgb, "TIFF", compression="tiff_lzw"),
        "bmp": _encode(rgb, "BMP"),
        "webp": _encode(rgb, "WEBP", quality=80),
        "webp-lossless": _encode(rgb.convert("RGBA"), "WEBP", lossless=True),
    }


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to three random edits: bit flips, random bytes (often in the header), a truncation, an
    insertion, a deleted or repeated slice."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        n = len(out)
        if n == 0:
            break
        at = rng.randrange(min(n, 64)) if rng.random() < 0.5 else rng.randrange(n)  # headers matter most
        if kind == 0:
            out[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            out[at] = rng.choice((0, 0xFF, 0x7F, 0x80, rng.randrange(256)))
        elif kind == 2:
            del out[rng.randrange(n) :]
        elif kind == 3:
            out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif kind == 4:
            del out[at : at + rng.randint(1, 32)]
        else:
            out[at:at] = out[at : at + rng.randint(1, 64)]
    return bytes(out)


def test_every_seed_decodes() -> None:
    for name, data in seeds().items():
        decoded = images.decode(data, CFG)
        assert (decoded.height, decoded.width) == (8, 8), name


def test_mutated_files_decode_or_are_rejected() -> None:
    rng = random.Random(20261203)
    outcomes: Counter[str] = Counter()
    escaped: list[str] = []
    for name, data in seeds().items():
        for i in range(MUTANTS_PER_SEED):
            mutant = mutate(data, rng)
            try:
                images.decode(mutant, CFG)
                outcomes["decoded"] += 1
            except images.Rejected as exc:
                outcomes[exc.reason] += 1
            except Exception as exc:  # what this test is for
                escaped.append(f"{name} #{i}: {type(exc).__name__}: {exc}")
    assert not escaped, f"{len(escaped)} inputs escaped Rejected, e.g. {escaped[:5]}"
    assert set(outcomes) <= {"decoded", *images.REASONS}, outcomes
    assert sum(outcomes.values()) >= 10_000
    # The fuzz reaches both sides: files that still decode and several kinds of rejection.
    assert outcomes["decoded"] > 0
    assert len([r for r in outcomes if r != "decoded"]) >= 3, outcomes


def pillow_crasher(kind: str = "tiff-16bit", full_resolution: bool = False) -> bytes:
    """The first mutant of seed ``kind`` on which the decoder's Pillow steps (open, first frame,
    load, orientation, RGB; at full resolution as tiles decode, or reduced as ingest and scoring
    do) raise something other than :class:`images.Rejected` before the decoder's catch-all turns
    it into one: a file that used to end a job. Deterministic (seeded)."""
    rng = random.Random(20261203)
    data = seeds()[kind]
    for _ in range(20_000):
        mutant = mutate(data, rng)
        try:
            images._prepared(mutant, CFG, full_resolution=full_resolution)
        except images.Rejected:
            continue
        except Exception:
            return mutant
    raise AssertionError(f"no mutant of {kind} makes Pillow raise")
