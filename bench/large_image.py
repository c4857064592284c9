"""The tiles path on camera-sized photographs: tile count, time and peak memory of the features and
score stages on 4,000 x 3,000 px JPEGs, and whether memory grows with the images a task holds.

The images are made from the real photographs scikit-image and scikit-learn ship: each a 3 x 3
mosaic of random crops, scaled up to 1,334 x 1,000 px a cell, in its own tint with grain, JPEG
q90 (about 2 MB each; class folders by the top-left photograph's half of the list). A workspace
under ``bench/work/large`` with find/params.yaml's settings and these overrides runs each stage
as its own process, as ``dvc repro`` does, with the RSS of its whole process tree (the driver,
its JVM, the Python workers) sampled every 50 ms:

- ingest (``--images`` files), then features with ``features.tiles`` of 512 px overlapping 0.1
  (9 x 7 = 63 tiles an image, each resized to the backbone's 32 px; the digits backbone);
- train ``tiles_attention`` for one epoch (a model to score with: the figures here are time and
  memory, not accuracy);
- score one image, then four images one per task, then four images in one task
  (``spark.master=local[1]`` for all three; ``spark.files_max_partition_bytes`` decides the packing).

    python bench/large_image.py [--images 12] [--side 4000x3000]

Writes ``bench/results/large_image.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
from ingest_throughput import WORK, write_result  # noqa: E402
from peers import measured  # noqa: E402

CELLS = 3  # a mosaic's cells per side


def make_large(folder: Path, count: int, size: tuple[int, int], seed: int = 0) -> list[Path]:
    """``count`` mosaics of ``size`` px (made once per settings), in two class folders."""
    from PIL import Image

    from tests.near_duplicate_corpus import photographs

    stamp = folder.with_name(f".{folder.name}.json")
    made = {"count": count, "size": list(size), "seed": seed, "cells": CELLS}
    if not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(folder, ignore_errors=True)
        photos = [np.asarray(photo) for _name, photo in photographs()]
        rng = np.random.default_rng(seed)
        cell_w, cell_h = -(-size[0] // CELLS), -(-size[1] // CELLS)
        for i in range(count):
            picks = rng.integers(0, len(photos), CELLS * CELLS)
            canvas = np.zeros((cell_h * CELLS, cell_w * CELLS, 3), dtype=np.float32)
            for cell, k in enumerate(picks):
                pixels = photos[k]
                h, w = pixels.shape[:2]
                side = int(rng.uniform(0.3, 1.0) * min(h, w))
                y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
                crop = Image.fromarray(pixels[y : y + side, x : x + side]).resize((cell_w, cell_h), Image.BICUBIC)
                top, left = (cell // CELLS) * cell_h, (cell % CELLS) * cell_w
                canvas[top : top + cell_h, left : left + cell_w] = np.asarray(crop) * rng.uniform(0.85, 1.15, size=3)
            canvas += rng.normal(0, 4, size=canvas.shape)
            picture = Image.fromarray(np.clip(canvas, 0, 255).astype(np.uint8)[: size[1], : size[0]])
            target = folder / ("first" if picks[0] < len(photos) // 2 else "second")
            target.mkdir(parents=True, exist_ok=True)
            picture.save(target / f"{i:04d}.jpg", quality=90)
        stamp.write_text(json.dumps(made))
    return sorted(folder.rglob("*.jpg"))


def stage(module: str, overrides: list[str]) -> dict:
    """Run one stage as its own process; its wall seconds and the peak RSS of its process tree."""
    cmd = [sys.executable, "-m", f"spark_jobs.{module}", "--params", str(REPO / "find" / "params.yaml")]
    cmd += [f"--set={o}" for o in overrides]
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
    wall, peak, _ = measured(cmd, env, REPO / "find")
    return {"wall_s": round(wall, 2), "peak_rss_mib": round(peak, 1)}


def timings(folder: Path) -> dict:
    """The ``timings`` of a stage's published manifest (the newest run under ``folder``)."""
    found = sorted(folder.rglob("_manifest.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text())["timings"]


def score_runs(root: Path, common: list[str], files: list[Path], model: Path) -> dict:
    """Score one image, then four one per task, then four in one task, each in a fresh data root."""
    runs = {}
    for name, count, max_bytes in (
        ("one_image", 1, 2**16),
        ("four_one_per_task", 4, 2**16),
        ("four_in_one_task", 4, 2**30),
    ):
        inbox = root / f"inbox-{count}"
        if not inbox.exists():
            inbox.mkdir(parents=True)
            for f in files[:count]:
                (inbox / f.name).symlink_to(f)
        data = root / f"score-{name}"
        shutil.rmtree(data, ignore_errors=True)
        overrides = [
            *common, f"data.root={data}", f"score.inbox={inbox}", f"score.model={model}", "spark.master=local[1]",
            f"spark.files_max_partition_bytes={max_bytes}", "gate.predictions.max_low_confidence=1.0",
            "gate.predictions.min_rows_for_drift=100000",
        ]  # fmt: skip
        figures = stage("score", overrides)
        figures["timings"] = {k: timings(data / "predictions")[k] for k in ("read_s", "work_s", "gate_s")}
        runs[name] = {"images": count, **figures}
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--side", default="4000x3000")
    args = parser.parse_args()
    size = tuple(int(v) for v in args.side.split("x"))
    root = WORK / "large"
    files = make_large(WORK / f"large_{args.images}_{args.side}", args.images, size)  # type: ignore[arg-type]
    data = root / "data"
    shutil.rmtree(data, ignore_errors=True)
    common = [
        f"features.cnn.backbone={REPO / 'models' / 'backbone' / 'backbone.pt2'}",
        "features.tiles.size=512", "features.tiles.overlap=0.1", "features.tiles.max_per_image=64",
    ]  # fmt: skip
    workspace = [
        *common, f"data.root={data}", f"ingest.source={files[0].parent.parent}", "ingest.split.train=0.5",
        "ingest.split.val=0.25", "ingest.split.test=0.25", "gate.raw.min_per_class=1", "gate.raw.split_tolerance=1.0",
        f"train.output={root / 'models'}", "train.model=tiles_attention", "train.tiles.epochs=1",
        "train.tiles.batch_size=2",
    ]  # fmt: skip
    result: dict = {"stages": {}}
    for module in ("ingest", "features", "train"):
        result["stages"][module] = stage(module, workspace)
        print(module, result["stages"][module], flush=True)
    features = json.loads((data / "features" / "_manifest.json").read_text())
    result["stages"]["features"]["timings"] = {k: features["timings"][k] for k in ("read_s", "work_s", "gate_s")}
    result["stages"]["features"]["tiles"] = features["counts"]
    result["score"] = score_runs(root, common, files, root / "models" / "tiles_attention")
    ratio = result["score"]["four_in_one_task"]["peak_rss_mib"] / result["score"]["four_one_per_task"]["peak_rss_mib"]
    sizes = [f.stat().st_size for f in files]
    write_result(
        "large_image.json",
        {
            "command": "python bench/large_image.py " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "inputs": f"{len(files)} JPEG q90 of {args.side} px, photo mosaics, {np.mean(sizes) / 2**20:.1f} MiB each",
            "tiles": "512 px, overlap 0.1: 9 x 7 = 63 an image, each resized to 32 px for the digits backbone",
            "full_image_mib": round(size[0] * size[1] * 3 / 2**20, 1),
            **result,
            "peak_rss_four_in_one_task_vs_one_per_task": round(ratio, 3),
        },
    )


if __name__ == "__main__":
    main()
