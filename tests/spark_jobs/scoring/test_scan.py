"""What the scanning tasks run, on inline data: the already-scored id set, and a slice of files
fetched, skipped, decoded and run through a head."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, partitions
from spark_jobs.scoring import scan
from tests.factories import class_image, encode


def test_id_set_holds_exactly_its_ids() -> None:
    ids = [images.image_id(bytes([i])) for i in range(50)]
    known = scan.IdSet(ids[:25] + ids[:5])  # repeats collapse
    assert len(known) == 25
    assert all(i in known for i in ids[:25])
    assert not any(i in known for i in ids[25:])
    assert ids[0] not in scan.IdSet([])
    # Digests ending in NUL bytes (one image in 256; a DAG run found it scored twice).
    ending_in_nul = ["ab" * 31 + "00", "00" * 30 + "0000", "ff" * 31 + "00"]
    known = scan.IdSet(ending_in_nul)
    assert all(i in known for i in ending_in_nul)
    assert "ab" * 31 + "01" not in known
    assert "00" * 32 in known
    assert "00" * 31 + "01" not in known


class _Means:
    """A head that says each image's mean pixel value: enough to see which rows it ran on."""

    def outputs(self) -> pa.Schema:
        return pa.schema([("mean", pa.float64())])

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        return {"mean": pa.array(pixels.reshape(len(pixels), -1).mean(axis=1).astype(np.float64))}


def test_a_slice_is_fetched_skipped_decoded_and_run_through_the_head(tmp_path: Path) -> None:
    good, seen, bad = tmp_path / "good.png", tmp_path / "seen.png", tmp_path / "bad.png"
    good.write_bytes(class_image(0, 1))
    seen.write_bytes(class_image(1, 2))
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    done = scan.IdSet([images.image_id(seen.read_bytes())])
    entries = [(p.as_uri(), None) for p in (good, seen, bad)]
    batch = scan.scan_batch(entries, IngestConfig(image_size=16), done, _Means())
    rows = {Path(r["source_uri"]).name: r for r in batch.to_pylist()}
    assert set(rows) == {"good.png", "seen.png", "bad.png"}  # a row per file: every outcome counted from rows
    assert rows["seen.png"]["reason"] == scan.ALREADY_SCORED  # skipped before decoding
    assert rows["seen.png"]["mean"] is None
    assert rows["good.png"]["image_id"] == images.image_id(good.read_bytes())
    assert rows["good.png"]["reason"] is None
    assert rows["good.png"]["mean"] > 0
    assert rows["bad.png"]["reason"] in {images.NOT_AN_IMAGE, images.TRUNCATED, images.UNREADABLE}
    assert rows["bad.png"]["mean"] is None  # the head ran on the usable rows only
    assert batch.schema.names == [*scan.SCAN_FIELDS.names, "mean"]


def test_an_id_union_holds_what_any_of_its_sets_holds() -> None:
    a, b, c = (images.image_id(bytes([i])) for i in range(3))
    union = scan.IdUnion([scan.IdSet([a]), scan.IdSet([b])])
    assert a in union
    assert b in union
    assert c not in union


class _Seen:
    """A head that keeps the pixels it is given: what the model would see."""

    def __init__(self) -> None:
        self.pixels: list[np.ndarray] = []

    def outputs(self) -> pa.Schema:
        return pa.schema([("n", pa.int64())])

    def __call__(self, pixels: np.ndarray) -> dict[str, pa.Array]:
        self.pixels += list(pixels.copy())
        return {"n": pa.array(np.arange(len(pixels)))}


def _camera_jpeg(orientation: int) -> bytes:
    """A 3,000 x 2,000 px JPEG (quality 90) of a real photograph with sensor-like noise; with an
    EXIF ``orientation`` other than 1 it is stored on its side, as a phone writes it."""
    from skimage import data as photos

    rng = np.random.default_rng(orientation)
    im = Image.fromarray(photos.astronaut()).resize((3000, 2000), Image.Resampling.BICUBIC)
    noisy = np.asarray(im, dtype=np.int16) + rng.integers(-6, 7, size=(2000, 3000, 3))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encode(Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)), "JPEG", quality=90, exif=exif)


@pytest.mark.parametrize("image_size", [32, 224])
def test_scoring_sees_the_pixels_ingest_stored_for_a_camera_sized_jpeg(tmp_path: Path, image_size: int) -> None:
    """Both decode through ``images.decode`` with the model's ingest settings: the reduced-size
    (DCT-scaled) decode of a large JPEG gives scoring exactly the pixels training was given."""
    files = []
    for orientation in (1, 6):
        files.append(tmp_path / f"photo-{orientation}.jpg")
        files[-1].write_bytes(_camera_jpeg(orientation))
    cfg = IngestConfig(image_size=image_size)
    entries = [(f.as_uri(), "astronaut") for f in files]
    ingested = partitions.decode_frame(entries, cfg)
    seen = _Seen()
    scanned = scan.scan_batch(entries, cfg, scan.IdSet([]), seen)
    assert scanned.column("reason").null_count == len(files)
    assert scanned.column("image_id").to_pylist() == ingested["image_id"].tolist()
    for row, pixels in zip(ingested.itertuples(), seen.pixels, strict=True):
        assert (row.orig_width, row.orig_height) == ((3000, 2000) if "-1." in row.source_uri else (2000, 3000))
        assert np.array_equal(images.pixels_to_array(row.pixels, row.height, row.width), pixels)
    # The check can fail: the reduced-size decode is not a full decode resized (its pixels differ).
    full = images.resize(Image.fromarray(images.decode_full(files[0].read_bytes(), cfg)), image_size, cfg.resize)
    assert not np.array_equal(np.asarray(full), seen.pixels[0])
