"""Pure image functions: decoding, mode conversion, EXIF, resize policy, split and reasons."""

from __future__ import annotations

import io
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from spark_jobs.core.ingest_config import IngestConfig, ResizeConfig
from spark_jobs.imaging import images
from tests.factories import damaged_pngs, encode, png_bytes


def cfg(**changes: object) -> IngestConfig:
    return IngestConfig(image_size=8, min_side=4, **changes)


def decode_array(data: bytes, config: IngestConfig | None = None) -> np.ndarray:
    d = images.decode(data, config or cfg())
    return images.pixels_to_array(d.pixels, d.height, d.width)


def rejected_reason(data: bytes, config: IngestConfig | None = None) -> str:
    with pytest.raises(images.Rejected) as info:
        images.decode(data, config or cfg())
    return info.value.reason


# --- mode conversion ---------------------------------------------------------------------------


def test_grey_becomes_equal_rgb_channels() -> None:
    grey = np.full((8, 8), 77, dtype=np.uint8)
    out = decode_array(png_bytes(grey, mode="L"))
    assert out.shape == (8, 8, 3)
    assert (out == 77).all()


def test_palette_image_keeps_its_colours() -> None:
    im = Image.new("P", (8, 8))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.paste(1, (0, 0, 8, 4))  # top half blue (index 1), bottom half red (index 0)
    out = decode_array(encode(im, "PNG"))
    assert tuple(out[0, 0]) == (0, 0, 255)
    assert tuple(out[7, 7]) == (255, 0, 0)


def test_transparent_pixels_take_the_background_colour() -> None:
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[:, :4] = (10, 20, 30, 255)  # left half opaque, right half fully transparent black
    out = decode_array(png_bytes(rgba, mode="RGBA"), cfg(alpha_background=(200, 100, 50)))
    assert tuple(out[4, 1]) == (10, 20, 30)
    assert tuple(out[4, 6]) == (200, 100, 50)


def test_palette_transparency_is_composited() -> None:
    im = Image.new("P", (8, 8), 0)
    im.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    im.paste(1, (0, 0, 8, 4))
    data = encode(im, "PNG", transparency=0)
    out = decode_array(data, cfg(alpha_background=(255, 255, 255)))
    assert tuple(out[0, 0]) == (0, 255, 0)
    assert tuple(out[7, 7]) == (255, 255, 255)


def test_cmyk_converts_to_rgb() -> None:
    im = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red ink mix
    out = decode_array(encode(im, "JPEG", quality=100))
    r, g, b = (int(v) for v in out[4, 4])
    assert r > 200
    assert g < 60
    assert b < 60


def test_16_bit_grey_is_scaled_not_clipped() -> None:
    im = Image.new("I;16", (8, 8))
    im.frombytes(np.full((8, 8), 32768, dtype="<u2").tobytes())
    out = decode_array(encode(im, "PNG"))
    assert abs(int(out[4, 4, 0]) - 128) <= 1  # 32768/65535 of full scale, not saturated at 255


def test_float_image_in_unit_range_is_scaled() -> None:
    im = Image.fromarray(np.full((8, 8), 0.5, dtype=np.float32), mode="F")
    out = decode_array(encode(im, "TIFF"))
    assert abs(int(out[0, 0, 1]) - 128) <= 1


def test_bilevel_image_converts() -> None:
    im = Image.new("1", (8, 8), 1)
    out = decode_array(encode(im, "PNG"))
    assert (out == 255).all()


def test_animated_gif_uses_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=50, loop=0)
    out = decode_array(buf.getvalue())
    assert out[4, 4, 0] > 200
    assert out[4, 4, 2] < 50


# --- EXIF orientation --------------------------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    array = np.zeros((8, 16, 3), dtype=np.uint8)  # wide: 16 x 8, left half white
    array[:, :8] = 255
    im = Image.fromarray(array)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored rotated: view it turned 90 degrees clockwise
    data = encode(im, "PNG", exif=exif)
    d = images.decode(data, cfg(resize=ResizeConfig(policy="stretch")))
    assert (d.orig_width, d.orig_height) == (8, 16)  # as seen: tall
    out = images.pixels_to_array(d.pixels, d.height, d.width)
    # Rotating clockwise moves the stored left half to the top.
    assert out[1, 4].mean() > 200
    assert out[6, 4].mean() < 50


# --- resize policy -----------------------------------------------------------------------------


@pytest.fixture
def wide_white() -> bytes:
    return png_bytes(np.full((10, 20, 3), 255, dtype=np.uint8))


def test_pad_keeps_aspect_and_fills(wide_white: bytes) -> None:
    out = decode_array(wide_white, cfg(resize=ResizeConfig(policy="pad", fill=(0, 0, 0))))
    assert out.shape == (8, 8, 3)
    assert (out[0] == 0).all()
    assert (out[7] == 0).all()
    assert (out[4] == 255).all()


def test_crop_fills_the_square(wide_white: bytes) -> None:
    out = decode_array(wide_white, cfg(resize=ResizeConfig(policy="crop")))
    assert out.shape == (8, 8, 3)
    assert (out == 255).all()


def test_stretch_ignores_aspect() -> None:
    array = np.zeros((10, 20, 3), dtype=np.uint8)
    array[:, :10] = 255
    out = decode_array(png_bytes(array), cfg(resize=ResizeConfig(policy="stretch", resample="nearest")))
    assert (out[:, :4] == 255).all()
    assert (out[:, 4:] == 0).all()


def test_preprocess_median_removes_salt_noise() -> None:
    array = np.full((16, 16, 3), 100, dtype=np.uint8)
    array[8, 8] = 255
    im = images.preprocess(Image.fromarray(array), "median", 3, "none")
    assert tuple(np.asarray(im)[8, 8]) == (100, 100, 100)


def test_preprocess_autocontrast_stretches_range() -> None:
    array = np.tile(np.linspace(100, 150, 16, dtype=np.uint8), (16, 1))
    im = images.preprocess(Image.fromarray(array).convert("RGB"), "none", 3, "autocontrast")
    out = np.asarray(im)
    assert out.min() == 0
    assert out.max() == 255


# --- reasons -----------------------------------------------------------------------------------


def test_empty_file() -> None:
    assert rejected_reason(b"") == images.EMPTY


def test_random_bytes_are_not_an_image() -> None:
    assert rejected_reason(np.random.default_rng(0).bytes(500)) == images.NOT_AN_IMAGE


def test_html_named_png_is_not_an_image() -> None:
    with pytest.raises(images.Rejected) as info:
        images.decode(b"<!DOCTYPE html><html><body>404</body></html>", cfg())
    assert info.value.reason == images.NOT_AN_IMAGE
    assert "markup" in info.value.detail


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_file(fmt: str) -> None:
    rng = np.random.default_rng(1)
    data = encode(Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)), fmt)
    assert rejected_reason(data[: len(data) // 2]) == images.TRUNCATED


@pytest.mark.parametrize("name", sorted(damaged_pngs()))
def test_damaged_pixel_data_is_never_kept(name: str) -> None:
    data = damaged_pngs()[name]
    with Image.open(io.BytesIO(data)) as im:  # the header reads: only the pixels are broken
        assert im.size == (64, 64)
        with pytest.raises(Exception):  # noqa: B017, PT011 (Pillow raises OSError or SyntaxError)
            im.load()
    assert rejected_reason(data) in (images.TRUNCATED, images.UNREADABLE)
    with pytest.raises(images.Rejected):
        images.decode_full(data, cfg())  # tiles read the same way


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_float_pixels_do_not_set_the_range(bad: float) -> None:
    ramp = np.tile(np.linspace(0.0, 1000.0, 8, dtype=np.float32), (8, 1))
    ramp[0, 0] = bad
    out = decode_array(encode(Image.fromarray(ramp, mode="F"), "TIFF"))[:, :, 0]
    assert out[4, 0] == 0
    assert out[4, 7] == 255
    assert abs(int(out[4, 3]) - round(3 / 7 * 255)) <= 1  # scaled over the finite range, not black
    assert out[0, 0] == (255 if bad == np.inf else 0)


def test_decompression_bomb() -> None:
    data = png_bytes(np.zeros((40, 40), dtype=np.uint8), mode="L")
    assert rejected_reason(data, cfg(max_image_pixels=1000)) == images.DECOMPRESSION_BOMB
    assert images.decode(data, cfg(max_image_pixels=1600)).height == 8


def test_too_small() -> None:
    assert rejected_reason(png_bytes(np.zeros((3, 30, 3), dtype=np.uint8))) == images.TOO_SMALL


def test_bomb_limit_is_restored_after_decoding() -> None:
    before = Image.MAX_IMAGE_PIXELS
    images.decode(png_bytes(np.zeros((8, 8), dtype=np.uint8), mode="L"), cfg(max_image_pixels=100))
    assert before == Image.MAX_IMAGE_PIXELS


# --- identity and split ------------------------------------------------------------------------


def test_image_id_is_sha256_of_bytes() -> None:
    assert images.image_id(b"abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_split_is_a_pure_function_of_the_id() -> None:
    fractions = {"train": 0.7, "val": 0.15, "test": 0.15}
    ids = [images.image_id(str(i).encode()) for i in range(6000)]
    first = [images.assign_split(i, fractions) for i in ids]
    assert first == [images.assign_split(i, fractions) for i in ids]
    counts = Counter(first)
    assert abs(counts["train"] / 6000 - 0.7) < 0.02
    assert abs(counts["val"] / 6000 - 0.15) < 0.02
    # A different seed is a different (but equally stable) split.
    assert first != [images.assign_split(i, fractions, seed=1) for i in ids]


def test_split_with_empty_fraction_never_assigns_it() -> None:
    fractions = {"train": 0.8, "val": 0.0, "test": 0.2}
    splits = {images.assign_split(images.image_id(bytes([i])), fractions) for i in range(200)}
    assert splits == {"train", "test"}


def test_stack_pixels_reads_arrow_buffers_including_slices() -> None:
    import pyarrow as pa

    rng = np.random.default_rng(0)
    arrays = rng.integers(0, 255, (5, 4, 3, 3), dtype=np.uint8)
    column = pa.array([im.tobytes() for im in arrays], type=pa.binary())
    np.testing.assert_array_equal(images.stack_pixels(column, 4, 3), arrays)
    np.testing.assert_array_equal(images.stack_pixels(column.slice(2, 3), 4, 3), arrays[2:])  # offset != 0
    large = pa.array([im.tobytes() for im in arrays], type=pa.large_binary())
    np.testing.assert_array_equal(images.stack_pixels(large, 4, 3), arrays)  # the copying fallback
    assert images.stack_pixels(column.slice(0, 0), 4, 3).shape == (0, 4, 3, 3)


def _thumb_source(side: int) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_a_small_scan_is_enlarged_and_a_photo_shrunk_to_the_thumbnail_side() -> None:
    for side in (8, 1200):
        png = images.thumbnail(_thumb_source(side), 10**8)
        with Image.open(io.BytesIO(png)) as im:
            assert im.size == (images.THUMB_SIDE, images.THUMB_SIDE)


def test_bytes_that_do_not_decode_give_no_picture() -> None:
    good = _thumb_source(12)
    cut = good[: len(good) // 2]
    zeroed = good[:40] + b"\x00" * (len(good) - 40)  # the header, then the pixel data gone
    for data in (b"", b"not an image", cut, zeroed):
        assert images.thumbnail(data, 10**8) is None
    assert images.pixels_thumbnail(b"\x00" * 10, 8, 8) is None  # not 8 x 8 x 3 bytes


def test_a_damaged_or_oversized_file_gives_no_picture_not_a_partial_one() -> None:
    for name, data in damaged_pngs().items():  # valid CRCs, broken data: the ingest path refuses each
        assert images.thumbnail(data, 10**8) is None, name
    assert images.thumbnail(_thumb_source(1200), max_pixels=1000) is None  # over the bomb limit
