"""Sample: the bundled, offline sample images, made from data that ships inside scikit-learn.

``sample.kind: digits`` (the default pipeline) writes
``<data.root>/sample/digits/<class>/<class>_<n>.png`` (the 1,797 8x8 handwritten-digit scans,
ink dark on white, upscaled to ``sample.image_size``) and
``<data.root>/sample/photos/<name>/<name>.jpg`` (the real 640x427 photographs of
``sklearn.datasets.load_sample_images``, one class folder each, for tiling) and
``<data.root>/sample/inbox/`` (new unlabelled scans and two unusable files, for scoring).

``sample.kind: grids`` (the large-image pipeline, ``grids/``) writes ``sample.grids.images``
"large images" instead, each a ``side x side`` grid of distinct digit scans of
``sample.image_size`` pixels, labelled by the order of the digits read row by row:
``ascending``, ``descending`` or ``mixed`` (the three classes equally often), as
``<data.root>/sample/grids/<class>/<class>_<n>.png``, plus an inbox of new grids
(``sample.grids.inbox``, and a truncated file). Any set of digits appears in every class, so what
the tiles show decides nothing without where they are: an order-blind model (mean pooling) is at
chance, one that reads the tiles in raster order (``tiles_gru``) can learn it.

``sample.kind: find`` (the find-it pipeline, ``find/``) writes ``sample.find.images`` images of
``side x side`` digit scans (4 x 4 of 32 px: 128 x 128) whose label depends on one cell: which of
the two ``sample.find.targets`` digits the image holds (the class is the digit), or ``none``;
every other cell is a distractor digit. The deciding cell of each image goes to a side file,
``<data.root>/sample/find_cells.csv``, that training never reads and evaluate's pointing accuracy
does. Plus an inbox of new images (``sample.find.inbox``) and a truncated file.

    python -m spark_jobs.sample [--params params.yaml] [--set sample.image_size=64]
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import Field, model_validator

from spark_jobs.core import runner
from spark_jobs.core.config import Params, Section, Seed
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.imaging.images import RESAMPLE, image_id

log = logging.getLogger(__name__)

STAGE = "sample"
Digit = Annotated[int, Field(ge=0, le=9)]
FIND_NONE = "none"  # the find class of an image without a target digit
FIND_CELLS = "find_cells.csv"  # beside the find folder: the cell that decides each image's label


class GridsConfig(Section):
    """``sample.grids``."""

    images: int = Field(1800, ge=3, le=1_000_000)
    side: int = Field(2, ge=2, le=3)  # cells per side; the digits of a grid are distinct
    inbox: int = Field(60, ge=0)
    seed: Seed = 0


class FindConfig(Section):
    """``sample.find``."""

    images: int = Field(1800, ge=3, le=1_000_000)
    side: int = Field(4, ge=4, le=16)  # cells per side
    targets: tuple[Digit, Digit] = (0, 7)
    inbox: int = Field(60, ge=0)
    seed: Seed = 0

    @model_validator(mode="after")
    def _two_targets(self) -> FindConfig:
        if self.targets[0] == self.targets[1]:
            raise ValueError(f"sample.find.targets must be two different digits, not {list(self.targets)}")
        return self


class SampleConfig(Section):
    """``sample``."""

    kind: Literal["digits", "grids", "find"] = "digits"
    image_size: int = Field(32, ge=8, le=1024)
    resample: Literal["nearest", "bilinear", "bicubic", "lanczos"] = "bicubic"
    grids: GridsConfig = GridsConfig()
    find: FindConfig = FindConfig()


class SampleParams(Params):
    """What the sample stage reads: ``sample``."""

    sample: SampleConfig = SampleConfig()


PARAMS = SampleParams  # what the stage reads of params.yaml


def digit_images(cfg: SampleConfig) -> Iterator[tuple[str, int, Image.Image]]:
    """``(label, index, image)`` for every handwritten digit, as a greyscale scan."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for index, (pixels, target) in enumerate(zip(digits.images, digits.target, strict=True)):
        ink = np.clip(pixels / 16.0 * 255.0, 0, 255)
        scan = Image.fromarray((255 - ink).round().astype(np.uint8), mode="L")
        yield str(int(target)), index, scan.resize((cfg.image_size, cfg.image_size), RESAMPLE[cfg.resample])


def photo_images() -> Iterator[tuple[str, Image.Image]]:
    """``(name, image)`` for each real photograph bundled with scikit-learn."""
    from sklearn.datasets import load_sample_images

    bunch = load_sample_images()
    for filename, array in zip(bunch.filenames, bunch.images, strict=True):
        yield Path(filename).stem, Image.fromarray(array)


def write_photos(folder: Path) -> int:
    """Write each photograph as ``folder/<name>/<name>.jpg`` (a class folder each); returns how many."""
    n = 0
    for name, image in photo_images():
        (folder / name).mkdir(parents=True, exist_ok=True)
        image.save(folder / name / f"{name}.jpg", quality=95)
        n += 1
    return n


def write_inbox(folder: Path, cfg: SampleConfig, every: int = 15) -> int:
    """New, unlabelled scans for the score stage: every ``every``-th digit re-inked a little
    lighter and shifted by a couple of pixels (so its content, and ``image_id``, is new), as
    ``folder/scan_<n>.png``, plus one truncated PNG and one text file that scoring must quarantine."""
    folder.mkdir(parents=True, exist_ok=True)
    n = 0
    for _label, index, image in digit_images(cfg):
        if index % every:
            continue
        pixels = np.asarray(image, dtype=np.float32)
        lighter = 255.0 - (255.0 - pixels) * 0.85
        shift = 1 + index % 3
        moved = np.full_like(lighter, 255.0)
        moved[:, shift:] = lighter[:, :-shift]
        Image.fromarray(moved.round().astype(np.uint8), mode="L").save(folder / f"scan_{index:04d}.png", optimize=True)
        n += 1
    whole = (folder / f"scan_{0:04d}.png").read_bytes()
    (folder / "scan_truncated.png").write_bytes(whole[: len(whole) // 2])
    (folder / "README.txt").write_text("not an image: scoring quarantines it (unsupported extension)\n")
    return n


GRID_CLASSES = ("ascending", "descending", "mixed")


def grid_digits(label: str, side: int, rng: np.random.Generator) -> list[int]:
    """``side * side`` distinct digits in the raster order ``label`` names."""
    digits = rng.choice(10, side * side, replace=False)
    if label == "ascending":
        return sorted(int(d) for d in digits)
    if label == "descending":
        return sorted((int(d) for d in digits), reverse=True)
    while np.all(np.diff(digits) > 0) or np.all(np.diff(digits) < 0):
        digits = rng.permutation(digits)
    return [int(d) for d in digits]


def grid_label(digits: list[int]) -> str:
    """The class of a grid from its digits in raster order (what :func:`grid_digits` made)."""
    steps = np.diff(digits)
    return "ascending" if np.all(steps > 0) else "descending" if np.all(steps < 0) else "mixed"


def grid_images(cfg: SampleConfig, count: int, seed: int) -> Iterator[tuple[str, int, Image.Image]]:
    """``(label, index, image)`` for ``count`` digit grids, the classes in turn."""
    scans: dict[int, list[Image.Image]] = {}
    for label, _index, image in digit_images(cfg):
        scans.setdefault(int(label), []).append(image)
    rng = np.random.default_rng(seed)
    side, size = cfg.grids.side, cfg.image_size
    for n in range(count):
        label = GRID_CLASSES[n % len(GRID_CLASSES)]
        canvas = Image.new("L", (side * size, side * size), 255)
        for cell, digit in enumerate(grid_digits(label, side, rng)):
            pool = scans[digit]
            canvas.paste(pool[int(rng.integers(len(pool)))], ((cell % side) * size, (cell // side) * size))
        yield label, n, canvas


def write_grids(target: Path, cfg: SampleConfig) -> dict[str, int]:
    """The grids sample: ``target/grids/<class>/`` and an inbox of new grids (another seed)."""
    counts: dict[str, int] = {}
    for label, index, image in grid_images(cfg, cfg.grids.images, cfg.grids.seed):
        folder = target / "grids" / label
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{label}_{index:05d}.png", optimize=True)
        counts[f"grids/{label}"] = counts.get(f"grids/{label}", 0) + 1
    new = ((index, image) for _label, index, image in grid_images(cfg, cfg.grids.inbox, cfg.grids.seed + 1))
    counts["inbox"] = write_inbox_images(target / "inbox", "grid", new)
    return counts


def write_inbox_images(inbox: Path, prefix: str, pictures: Iterator[tuple[int, Image.Image]]) -> int:
    """New images for the score stage, ``inbox/<prefix>_<n>.png``, and a truncated copy of the
    first (``<prefix>_truncated.png``) that scoring must quarantine; returns how many are whole."""
    inbox.mkdir(parents=True)
    written = 0
    for index, image in pictures:
        image.save(inbox / f"{prefix}_{index:05d}.png", optimize=True)
        written += 1
    if written:
        whole = (inbox / f"{prefix}_{0:05d}.png").read_bytes()
        (inbox / f"{prefix}_truncated.png").write_bytes(whole[: len(whole) // 2])
    return written


def find_classes(cfg: FindConfig) -> tuple[str, str, str]:
    """The find classes: each target digit (its folder name is the digit) and :data:`FIND_NONE`."""
    return str(cfg.targets[0]), str(cfg.targets[1]), FIND_NONE


def find_images(
    cfg: SampleConfig, count: int, seed: int
) -> Iterator[tuple[str, int, Image.Image, tuple[int, int, int, int] | None]]:
    """``(label, index, image, cell)`` for ``count`` find images, the classes in turn: a ``side x
    side`` grid of digit scans, every cell a digit other than the targets except, for a target
    class, one cell at a random place holding that target. ``cell``: that cell's box ``(x0, y0,
    x1, y1)`` in the image's pixels (exclusive ends), None for :data:`FIND_NONE`."""
    scans: dict[int, list[Image.Image]] = {}
    for label, _index, image in digit_images(cfg):
        scans.setdefault(int(label), []).append(image)
    find = cfg.find
    others = [d for d in range(10) if d not in find.targets]
    rng = np.random.default_rng(seed)
    side, size = find.side, cfg.image_size
    classes = find_classes(find)
    for n in range(count):
        label = classes[n % len(classes)]
        where = int(rng.integers(side * side)) if label != FIND_NONE else -1
        canvas = Image.new("L", (side * size, side * size), 255)
        for cell in range(side * side):
            digit = int(label) if cell == where else int(rng.choice(others))
            pool = scans[digit]
            canvas.paste(pool[int(rng.integers(len(pool)))], ((cell % side) * size, (cell // side) * size))
        x0, y0 = (where % side) * size, (where // side) * size
        yield label, n, canvas, (x0, y0, x0 + size, y0 + size) if where >= 0 else None


def write_find(target: Path, cfg: SampleConfig) -> dict[str, int]:
    """The find sample: ``target/find/<class>/<class>_<n>.png``, the deciding cells in
    ``target/find_cells.csv`` (``image_id`` = the file's sha256, ``label``, the cell's box, empty
    for ``none``; outside the ingested folder, so that nothing trains on it), and an inbox of new
    images (another seed) with one truncated file."""
    import csv

    counts: dict[str, int] = {}
    with (target / FIND_CELLS).open("w", newline="") as out:
        rows = csv.writer(out)
        rows.writerow(["image_id", "label", "cell_x0", "cell_y0", "cell_x1", "cell_y1"])
        for label, index, image, cell in find_images(cfg, cfg.find.images, cfg.find.seed):
            folder = target / "find" / label
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{label}_{index:05d}.png"
            image.save(path, optimize=True)
            rows.writerow([image_id(path.read_bytes()), label, *(cell or ("", "", "", ""))])
            counts[f"find/{label}"] = counts.get(f"find/{label}", 0) + 1
    new = ((index, image) for _label, index, image, _cell in find_images(cfg, cfg.find.inbox, cfg.find.seed + 1))
    counts["inbox"] = write_inbox_images(target / "inbox", "find", new)
    return counts


def write_sample(target: Path, cfg: SampleConfig) -> dict[str, int]:
    """Write the sample tree into the empty folder ``target`` and return per-folder counts."""
    if cfg.kind == "grids":
        return write_grids(target, cfg)
    if cfg.kind == "find":
        return write_find(target, cfg)
    counts: dict[str, int] = {}
    for label, index, image in digit_images(cfg):
        folder = target / "digits" / label
        folder.mkdir(parents=True, exist_ok=True)
        image.save(folder / f"{label}_{index:04d}.png", optimize=True)
        counts[f"digits/{label}"] = counts.get(f"digits/{label}", 0) + 1
    counts["photos"] = write_photos(target / "photos")
    counts["inbox"] = write_inbox(target / "inbox", cfg)
    return counts


def run(cfg: SampleParams, _spark: object = None) -> Path:
    target = Path(cfg.data.root) / STAGE
    params = cfg.section("sample")
    with runner.StageRun(STAGE, cfg.data.root, None, target, lock_wait=cfg.data.lock_wait_s, params=params) as run:
        with run.phase("work"):
            counts = write_sample(run.staging, cfg.sample)
        made = {"grids": "digit grids", "find": "find images"}.get(cfg.sample.kind, "digit images")
        inputs = {"source": f"sklearn.datasets.load_digits ({made}) + load_sample_images"}
        target = run.finish(None, run.manifest(params, inputs, counts, None))
    log.info(
        "wrote %d %s (and %d photos) under %s",
        sum(v for k, v in counts.items() if k.startswith(("digits", "grids", "find"))),
        made,
        counts.get("photos", 0),
        target,
    )
    return target


def main(argv: list[str] | None = None) -> int:
    # The sample is a source by design (the pipeline's ingest.source): no output to keep apart from it.
    return run_stage(STAGE, argv, run, params=PARAMS, outputs=lambda cfg: [], description=__doc__, needs_spark=False)


if __name__ == "__main__":
    exit_process(main())
