"""What the features stage runs in its tasks, on inline data: one vector per image, or per tile of
its re-read source, and a problem row for a source that can no longer be tiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from spark_jobs.core.ingest_config import IngestConfig
from spark_jobs.imaging import images, tiles
from spark_jobs.imaging.tiles import TilesConfig
from spark_jobs.ml import featurize
from tests.spark_jobs.imaging.test_decode_fuzz import pillow_crasher


def test_whole_images_are_tile_zero_covering_the_original() -> None:
    pixels = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
    batch = pa.RecordBatch.from_pydict(
        {
            "image_id": ["a", "b"],
            "source_uri": ["file:///a.png", "file:///b.png"],
            "label": ["0", "1"],
            "split": ["train", "test"],
            "orig_width": pa.array([40, 50], pa.int32()),
            "orig_height": pa.array([30, 20], pa.int32()),
            "height": pa.array([4, 4], pa.int32()),
            "width": pa.array([4, 4], pa.int32()),
            "pixels": pa.array([p.tobytes() for p in pixels], pa.binary()),
        }
    )

    def means(x: np.ndarray) -> np.ndarray:  # an extractor: one number an image
        return x.reshape(len(x), -1).mean(axis=1, keepdims=True).astype(np.float32)

    (out,) = list(featurize.whole_image_batches(iter([batch, batch.slice(0, 0)]), means))
    rows = out.to_pylist()
    assert [(r["image_id"], r["tile_x"], r["tile_y"]) for r in rows] == [("a", 0, 0), ("b", 0, 0)]
    assert [(r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]) for r in rows] == [(0, 0, 40, 30), (0, 0, 50, 20)]
    assert [r["raw"][0] for r in rows] == pytest.approx([float(pixels[0].mean()), float(pixels[1].mean())])
    assert [r["problem"] for r in rows] == [None, None]


def test_a_changed_source_is_one_problem_row(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20, 3), dtype=np.uint8)).save(path)
    row = {"image_id": "0" * 64, "source_uri": path.as_uri(), "label": "0", "split": "train"}
    frame = pd.DataFrame([row])
    out = pd.concat(
        featurize.tile_frames(iter([frame]), lambda x: np.zeros((len(x), 2)), IngestConfig(), TilesConfig(), 4)
    )
    assert out["problem"].tolist() == ["the source file changed since ingest (its sha256 is no longer the image_id)"]
    assert out["tile_x"].tolist() == [-1]


def test_too_many_tiles_is_one_clear_problem_of_the_image(tmp_path) -> None:
    """The features stage's tiling names the image and stops (exit 2 via raise_on_problems)."""
    import numpy as np
    import pandas as pd

    from spark_jobs.core.ingest_config import IngestConfig
    from spark_jobs.imaging import images
    from tests.factories import png_bytes

    data = png_bytes(np.zeros((64, 64, 3), dtype=np.uint8))
    path = tmp_path / "a.png"
    path.write_bytes(data)
    row = {"image_id": images.image_id(data), "source_uri": path.as_uri(), "label": "0", "split": "train"}
    frame = pd.DataFrame([row])
    capped = TilesConfig(size=8, overlap=0.0, max_per_image=10)
    out = pd.concat(featurize.tile_frames(iter([frame]), lambda x: np.zeros((len(x), 2)), IngestConfig(), capped, 64))
    assert len(out) == 1
    expected = "64x64 cut into 8px tiles overlapping 0 makes 64 tiles > features.tiles.max_per_image 10"
    assert expected in out.iloc[0]["problem"]


def test_a_source_that_crashes_pillow_is_one_problem_row_when_tiled(tmp_path: Path) -> None:
    """Tiles decode each source again, at full resolution, inside the task: a file that makes
    Pillow raise is one problem row naming the exception (the stage then stops with one line
    naming the files: ``raise_on_problems``), never an exception that kills the task."""
    good, crasher = tmp_path / "good.png", tmp_path / "crashes-pillow.tif"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8)).save(good)
    crasher.write_bytes(pillow_crasher(full_resolution=True))
    try:  # what Pillow raises on it, outside the decoder's catch-all
        images._prepared(crasher.read_bytes(), IngestConfig(), full_resolution=True)
    except images.Rejected:
        pytest.fail("pillow_crasher returned a file the decoder's own checks reject")
    except Exception as exc:
        raised = type(exc).__name__
    else:
        pytest.fail("pillow_crasher returned a file Pillow decodes")
    frame = pd.DataFrame(
        {
            "image_id": [images.image_id(p.read_bytes()) for p in (good, crasher)],
            "source_uri": [good.as_uri(), crasher.as_uri()],
            "label": ["a", "b"],
            "split": ["train", "train"],
        }
    )
    tiles_cfg = TilesConfig(enabled=True, size=128, overlap=0.1)
    out = pd.concat(
        featurize.tile_frames(
            iter([frame]), lambda blocks: np.zeros((len(blocks), 3), np.float32), IngestConfig(), tiles_cfg, 4
        )
    )
    by_file = dict(tuple(out.groupby("source_uri")))
    assert len(by_file[good.as_uri()]) == tiles.count(300, 200, tiles_cfg)
    assert by_file[good.as_uri()]["problem"].isna().all()
    (problem,) = by_file[crasher.as_uri()]["problem"]
    assert problem.startswith(f"the source no longer decodes: {images.UNREADABLE}: ")
    assert raised in problem
