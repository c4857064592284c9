"""The light tile screen: thumbnails, the ridge fit, and choosing the tiles a cascade embeds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from spark_jobs.ml import screen


def test_thumbnails_are_grey_block_means_in_zero_one() -> None:
    blocks = np.zeros((2, 32, 32, 3), dtype=np.uint8)
    blocks[0, :4, :4] = 255  # the first 4 x 4 block of the first tile is white
    blocks[1] = 51
    out = screen.thumbs(blocks)
    assert out.shape == (2, 64)
    assert out[0, 0] == pytest.approx(1.0)
    assert out[0, 1:].max() == 0.0
    assert out[1] == pytest.approx(np.full(64, 0.2))
    odd = screen.thumbs(np.full((1, 30, 30, 3), 255, dtype=np.uint8))  # not a multiple of 8: resized
    assert odd.shape == (1, 64)
    assert odd == pytest.approx(np.ones((1, 64)))


def test_the_fit_recovers_a_linear_rule_and_leaves_the_intercept_free() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((500, 64)).astype(np.float32)
    truth = rng.normal(size=64)
    y = x @ truth + 7.0
    coef = screen.fit(x, y, ridge=1e-6)
    assert coef[:-1] == pytest.approx(truth, abs=1e-3)
    assert coef[-1] == pytest.approx(7.0, abs=1e-3)


def _image(rng: np.random.Generator, hot: int, tiles: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Tile blocks of light noise, one of them holding a dark blob, and attention on that one."""
    blocks = (200 + rng.integers(0, 40, (tiles, 16, 16, 3))).astype(np.uint8)
    blocks[hot, 4:12, 4:12] = 20
    weights = np.full(tiles, 0.02)
    weights[hot] = 1.0 - 0.02 * (tiles - 1)
    return blocks, weights


def test_a_fitted_screen_ranks_the_tiles_the_heavy_model_weighs_first(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = [_image(rng, int(rng.integers(9))) for _ in range(60)]
    fitted = screen.fitted([(screen.thumbs(b), w) for b, w in images])
    assert (fitted.images, fitted.tiles) == (60, 540)
    assert fitted.recall == 1.0
    blocks, _weights = _image(rng, 5)
    chosen = fitted.choose(blocks, 0.25)
    assert len(chosen) == 3  # ceil(0.25 * 9)
    assert 5 in chosen
    assert list(chosen) == sorted(chosen)  # raster order kept
    assert list(fitted.choose(blocks, 1.0)) == list(range(9))
    again = screen.Screen.read(fitted.write(tmp_path))
    assert again == fitted
    (tmp_path / screen.SCREEN).write_text('{"side": 4, "coef": [1.0]}')
    with pytest.raises(ValueError, match="not a tile screen"):
        screen.Screen.read(tmp_path / screen.SCREEN)


@pytest.mark.parametrize(("count", "fraction", "expected"), [(49, 0.25, 13), (49, 0.5, 25), (4, 0.01, 1), (7, 1.0, 7)])
def test_kept_is_the_ceiling_and_at_least_one(count: int, fraction: float, expected: int) -> None:
    assert screen.kept(count, fraction) == expected
