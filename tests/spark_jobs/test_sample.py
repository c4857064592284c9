"""The bundled sample: real scans and photos from scikit-learn, written as an image tree."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from spark_jobs import sample
from spark_jobs.core import manifest
from tests.factories import make_config


def test_sample_tree(tmp_path: Path) -> None:
    cfg = make_config(tmp_path, "sample.image_size=24")
    target = sample.run(cfg)
    digits = sorted((target / "digits").glob("*/*.png"))
    assert len(digits) == 1797
    assert sorted(p.name for p in (target / "digits").iterdir()) == [str(i) for i in range(10)]
    with Image.open(digits[0]) as im:
        assert (im.size, im.mode) == ((24, 24), "L")
        array = np.asarray(im)
    assert array[0, 0] == 255
    assert array.min() < 64
    photos = sorted(p.relative_to(target / "photos").as_posix() for p in (target / "photos").rglob("*.jpg"))
    assert photos == ["china/china.jpg", "flower/flower.jpg"]  # one class folder each, for ingest
    with Image.open(target / "photos" / "china" / "china.jpg") as im:
        assert im.size == (640, 427)
    doc = manifest.read_json(target)
    assert doc["counts"]["photos"] == 2
    assert sum(v for k, v in doc["counts"].items() if k.startswith("digits/")) == 1797

    # the score stage's inbox: new content (no scan equals a digit of the tree), flat, plus two unusable files
    inbox = sorted((target / "inbox").glob("scan_[0-9]*.png"))
    assert len(inbox) == doc["counts"]["inbox"] == 120
    tree = {p.read_bytes() for p in digits}
    assert not any(p.read_bytes() in tree for p in inbox)
    with Image.open(inbox[0]) as im:
        assert (im.size, im.mode) == ((24, 24), "L")
    assert (target / "inbox" / "scan_truncated.png").exists()
    assert (target / "inbox" / "README.txt").exists()


def test_sample_is_reproducible(tmp_path: Path) -> None:
    first = sample.write_sample(tmp_path / "a", make_config(tmp_path).sample)
    second = sample.write_sample(tmp_path / "b", make_config(tmp_path).sample)
    assert first == second
    a = sorted((tmp_path / "a" / "digits").rglob("*.png"))
    b = sorted((tmp_path / "b" / "digits").rglob("*.png"))
    assert [p.read_bytes() for p in a[:50]] == [p.read_bytes() for p in b[:50]]


def test_a_stage_whose_output_is_busy_exits_5(tmp_path: Path, caplog) -> None:
    """Another run holds the output's lock: the stage waits data.lock_wait_s, then one line, exit 5
    (Airflow retries it; 2 and 3 are final)."""
    from spark_jobs.core import runner
    from tests.factories import REPO

    root = tmp_path / "data"
    argv = ["--params", str(REPO / "params.yaml"), "--set", f"data.root={root}", "--set", "data.lock_wait_s=0.3"]
    with runner.StageRun("sample", root, None, root / "sample"):
        assert sample.main(argv) == 5
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert f"{root / 'sample'} is being written by another sample run" in errors[0]
    assert not (root / "sample").exists()
    assert sample.main(argv) == 0  # free again


def test_grids_are_labelled_by_the_order_of_their_digits(tmp_path: Path) -> None:
    from spark_jobs.sample import SampleConfig

    cfg = SampleConfig(kind="grids", grids={"images": 30, "side": 2, "inbox": 4, "seed": 3})
    counts = sample.write_sample(tmp_path, cfg)
    assert counts == {"grids/ascending": 10, "grids/descending": 10, "grids/mixed": 10, "inbox": 4}
    assert len(list((tmp_path / "inbox").glob("grid_*.png"))) == 5  # and one truncated file
    image = np.asarray(Image.open(next((tmp_path / "grids" / "mixed").glob("*.png"))))
    assert image.shape == (64, 64)  # 2 x 2 cells of sample.image_size
    rng = np.random.default_rng(0)
    seen: dict[tuple[int, ...], set[str]] = {}
    for n in range(6000):
        label = sample.GRID_CLASSES[n % 3]
        digits = sample.grid_digits(label, 2, rng)
        assert len(set(digits)) == 4
        assert sample.grid_label(digits) == label
        seen.setdefault(tuple(sorted(digits)), set()).add(label)
    # what the tiles show (the set of digits) does not decide the class: where they are does
    assert len(seen) == 210  # every set of 4 of the 10 digits...
    assert sum(len(labels) == 3 for labels in seen.values()) > 0.9 * len(seen)  # ...in every class


def test_find_images_hold_one_target_in_the_cell_the_side_file_names(tmp_path: Path) -> None:
    import csv

    from spark_jobs.sample import SampleConfig

    cfg = SampleConfig(kind="find", find={"images": 12, "inbox": 2, "seed": 4, "targets": [0, 7]})
    counts = sample.write_sample(tmp_path, cfg)
    assert counts == {"find/0": 4, "find/7": 4, "find/none": 4, "inbox": 2}
    assert len(list((tmp_path / "inbox").glob("find_*.png"))) == 3  # and one truncated file
    assert not list((tmp_path / "find").rglob("*.csv"))  # the answers sit outside what ingest reads
    with (tmp_path / sample.FIND_CELLS).open() as f:
        rows = {row["image_id"]: row for row in csv.DictReader(f)}
    assert len(rows) == 12
    scans = {}
    for label, _index, image in sample.digit_images(cfg):
        scans.setdefault(label, []).append(np.asarray(image))
    for path in (tmp_path / "find").rglob("*.png"):
        data = path.read_bytes()
        row = rows[hashlib.sha256(data).hexdigest()]
        image = np.asarray(Image.open(path))
        assert image.shape == (128, 128)
        assert row["label"] == path.parent.name
        cells = {(x, y): image[y : y + 32, x : x + 32] for y in range(0, 128, 32) for x in range(0, 128, 32)}
        holding = {
            label for label, pool in scans.items() for cell in cells.values() if any((cell == s).all() for s in pool)
        }
        if row["label"] == "none":
            assert row["cell_x0"] == ""
            assert not holding & {"0", "7"}
            continue
        x0, y0, x1, y1 = (int(row[k]) for k in ("cell_x0", "cell_y0", "cell_x1", "cell_y1"))
        assert (x1 - x0, y1 - y0) == (32, 32)
        assert any((cells[(x0, y0)] == s).all() for s in scans[row["label"]])  # the target is in that cell
        others = [c for at, c in cells.items() if at != (x0, y0)]
        assert not any((c == s).all() for c in others for t in ("0", "7") for s in scans[t])  # and nowhere else


def test_find_targets_must_differ() -> None:
    from pydantic import ValidationError

    from spark_jobs.sample import SampleConfig

    with pytest.raises(ValidationError, match="two different digits"):
        SampleConfig(kind="find", find={"targets": [3, 3]})
