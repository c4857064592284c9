"""Tiling: boxes cover the whole image, overlap is as configured, coordinates map back to the source."""

from __future__ import annotations

import itertools

import numpy as np
import pyarrow as pa
import pytest

from spark_jobs.imaging import tiles
from spark_jobs.imaging.tiles import TilesConfig

CASES = [(640, 427), (128, 128), (129, 300), (50, 20), (1000, 115)]


def _cfg(edge: str = "shift", size: int = 128, overlap: float = 0.1) -> TilesConfig:
    return TilesConfig(enabled=True, size=size, overlap=overlap, edge=edge)


@pytest.mark.parametrize("edge", ["shift", "pad"])
@pytest.mark.parametrize(("width", "height"), CASES)
def test_boxes_cover_every_pixel_and_stay_inside(edge: str, width: int, height: int) -> None:
    cfg = _cfg(edge)
    covered = np.zeros((height, width), dtype=int)
    grid = tiles.grid(width, height, cfg)
    for t in grid:
        assert 0 <= t.x0 < t.x1 <= width
        assert 0 <= t.y0 < t.y1 <= height
        assert t.x1 - t.x0 <= cfg.size
        assert t.y1 - t.y0 <= cfg.size
        covered[t.y0 : t.y1, t.x0 : t.x1] += 1
    assert covered.min() >= 1  # no pixel of the original is lost
    assert len(grid) == tiles.count(width, height, cfg)
    assert len({(t.tile_x, t.tile_y) for t in grid}) == len(grid)


def test_the_bundled_photo_grid() -> None:
    """640x427 in 128px blocks with 10% overlap: stride 115, 6 columns, 4 rows."""
    cfg = _cfg("shift")
    assert cfg.stride == 115
    grid = tiles.grid(640, 427, cfg)
    assert len(grid) == 24
    assert [t.x0 for t in grid if t.tile_y == 0] == [0, 115, 230, 345, 460, 512]  # last shifted to end at 640
    assert [t.y0 for t in grid if t.tile_x == 0] == [0, 115, 230, 299]
    padded = tiles.grid(640, 427, _cfg("pad"))
    assert [t.x0 for t in padded if t.tile_y == 0] == [0, 115, 230, 345, 460, 575]
    assert padded[-1].x1 == 640
    assert padded[-1].y1 == 427


@pytest.mark.parametrize("overlap", [0.0, 0.1, 0.25, 0.5])
def test_neighbours_overlap_as_configured(overlap: float) -> None:
    cfg = _cfg("pad", size=100, overlap=overlap)
    grid = tiles.grid(1000, 100, cfg)
    for left, right in itertools.pairwise(grid):
        assert left.x0 + 100 - right.x0 == round(100 * overlap)


def test_shifted_edge_tile_overlaps_more_but_never_less() -> None:
    grid = tiles.grid(300, 100, _cfg("shift", size=100, overlap=0.1))
    overlaps = [a.x1 - b.x0 for a, b in itertools.pairwise(grid)]
    assert overlaps[:-1] == [10, 10]
    assert overlaps[-1] >= 10
    assert grid[-1].x1 == 300


@pytest.mark.parametrize("edge", ["shift", "pad"])
def test_cut_maps_back_to_the_source(edge: str) -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (427, 640, 3), dtype=np.uint8)
    cfg = _cfg(edge)
    for t in tiles.grid(640, 427, cfg):
        block = tiles.cut(image, t, cfg.size, (1, 2, 3))
        assert block.shape == (128, 128, 3)
        h, w = t.y1 - t.y0, t.x1 - t.x0
        assert np.array_equal(block[:h, :w], image[t.y0 : t.y1, t.x0 : t.x1])
        assert (block[h:, :] == (1, 2, 3)).all()
        assert (block[:, w:] == (1, 2, 3)).all()


def test_an_image_smaller_than_a_tile_is_one_padded_tile() -> None:
    image = np.full((20, 50, 3), 200, dtype=np.uint8)
    cfg = _cfg("shift")
    (only,) = tiles.grid(50, 20, cfg)
    assert (only.x0, only.y0, only.x1, only.y1) == (0, 0, 50, 20)
    block = tiles.cut(image, only, 128, (0, 0, 0))
    assert block[:20, :50].min() == 200
    assert block[20:].max() == 0


def test_tiles_per_image_are_capped_before_any_are_cut() -> None:
    huge = TilesConfig(size=8, overlap=0.99)  # stride 1: a 9000 x 9000 image would be ~80 million tiles
    with pytest.raises(tiles.TooManyTiles, match=r"9000x9000 .* makes 80874049 tiles > features.tiles.max_per_image"):
        tiles.checked_grid(9000, 9000, huge)
    assert len(tiles.checked_grid(100, 60, TilesConfig(size=32, overlap=0.0, max_per_image=12))) == 4 * 2


def _tile_rows(images: dict[str, tuple[str, list[tuple[int, int, list[float]]]]]) -> pa.Table:
    rows = [
        {"image_id": i, "label": label, "tile_y": y, "tile_x": x, "features": v}
        for i, (label, cells) in images.items()
        for y, x, v in cells
    ]
    return pa.Table.from_pylist(rows[::-1])  # stored in no particular order


def test_sequences_are_each_image_s_tiles_in_raster_order_then_padded() -> None:
    table = _tile_rows(
        {
            "a": ("x", [(1, 1, [4.0, 4.0]), (0, 1, [2.0, 2.0]), (1, 0, [3.0, 3.0]), (0, 0, [1.0, 1.0])]),
            "b": ("y", [(0, 1, [6.0, 6.0]), (0, 0, [5.0, 5.0])]),
        }
    )
    x, labels = tiles.sequences(table, ["b", "a", "b"])
    assert labels == ["y", "x", "y"]
    assert x.shape == (3, 4, 3)  # the most tiles any image has; each vector then the mask
    assert x[1, :, 0].tolist() == [1.0, 2.0, 3.0, 4.0]  # row by row: (0,0) (0,1) (1,0) (1,1)
    assert x[0, :, 0].tolist() == [5.0, 6.0, 0.0, 0.0]
    assert x[0, :, -1].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert np.array_equal(x[0], x[2])


def test_a_grid_cut_and_read_back_keeps_each_cell_in_its_place() -> None:
    """A 2 x 3 grid of flat cells cut into cell-sized tiles comes back in raster order."""
    cfg = TilesConfig(enabled=True, size=8, overlap=0.0)
    image = np.zeros((16, 24, 3), dtype=np.uint8)
    for cell in range(6):
        y, x = divmod(cell, 3)
        image[y * 8 : (y + 1) * 8, x * 8 : (x + 1) * 8] = cell * 10
    cells = [(t.tile_y, t.tile_x, [float(tiles.cut(image, t, 8, (0, 0, 0)).mean())]) for t in tiles.grid(24, 16, cfg)]
    x, _ = tiles.sequences(_tile_rows({"g": ("l", cells)}), ["g"])
    assert x[0, :, 0].tolist() == [0.0, 10.0, 20.0, 30.0, 40.0, 50.0]


def test_top_tiles_are_each_image_s_heaviest_boxes_in_raster_order_of_its_rows() -> None:
    rows = {  # image b's tiles arrive out of order: boxes follows sequences' raster order
        "image_id": ["b", "a", "b", "a", "b"],
        "tile_y": [1, 0, 0, 0, 0],
        "tile_x": [0, 0, 0, 1, 1],
        "box_x0": [0, 0, 0, 16, 16],
        "box_y0": [16, 0, 0, 0, 0],
        "box_x1": [32, 32, 32, 48, 48],
        "box_y1": [48, 32, 32, 32, 32],
    }
    per_image = tiles.boxes(pa.table(rows), ["a", "b"])
    assert [c.tolist() for c in per_image] == [
        [[0, 0, 32, 32], [16, 0, 48, 32]],
        [[0, 0, 32, 32], [16, 0, 48, 32], [0, 16, 32, 48]],
    ]
    weights = np.array([[0.3, 0.7, 0.0], [0.2, 0.1, 0.7]], dtype=np.float32)
    top = tiles.top_tiles(weights, per_image, 2).to_pylist()
    assert [[(t["box_x0"], t["box_y0"]) for t in image] for image in top] == [[(16, 0), (0, 0)], [(0, 16), (0, 0)]]
    assert top[0][0]["weight"] == pytest.approx(0.7)
    assert len(tiles.top_tiles(weights, per_image, 5).to_pylist()[0]) == 2  # never a padding slot


def test_a_heatmap_is_red_where_the_weight_is_and_dim_elsewhere() -> None:
    import io

    from PIL import Image

    white = np.full((128, 64, 3), 255, dtype=np.uint8)
    corners = np.array([[0, 0, 64, 64], [0, 64, 64, 128]])
    picture = np.asarray(Image.open(io.BytesIO(tiles.heatmap_png(white, corners, np.array([0.9, 0.1])))))
    assert picture.shape == (128, 64, 3)  # small images keep their size
    hot, cold = picture[10, 10].astype(int), picture[100, 10].astype(int)
    assert hot[0] == 255
    assert hot[0] - hot[1] > 100  # red
    assert cold[0] - cold[1] < 40  # hardly tinted
    assert cold.max() < 200  # and dimmed
    big = np.zeros((3000, 4000, 3), dtype=np.uint8)
    shrunk = Image.open(io.BytesIO(tiles.heatmap_png(big, np.array([[0, 0, 4000, 3000]]), np.array([1.0]))))
    assert shrunk.size == (tiles.HEATMAP_SIDE, 192)  # the longer side is HEATMAP_SIDE
