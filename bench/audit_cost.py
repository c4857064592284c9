"""What the dataset audit costs ingest: its share of the stage's time, and how its pairing grows.

Inputs (:func:`make_inputs`): distinct 256 px JPEGs (q90), each a 2 x 2 grid of four of
scikit-learn's 1,797 digit scans drawn at random, in its own ink and paper colours with grain,
labelled by the top-left digit; every ``--copy-every``-th image also gets a planted near-duplicate
(re-encoded at q60 and rescaled by 0.9). Ingested at 64 px by ``spark_jobs.ingest.run`` in one
session (after a small warm-up run), at each ``--images`` size. ``--lookalikes`` uses
``ingest_throughput.py``'s JPEGs instead, a worst case: one scan per image, so the 1,797 scans
repeat and every image has a handful of look-alikes (same strokes, other tint and grain) that
its candidates must sort out. ``--photos`` uses photographs instead: 640 x 480 JPEGs (COCO's
usual size; :func:`make_photos`), ingested at 224 px with ``ingest.audit``'s own defaults (made
for photographs: 96 bands of 18 bits, ``min_score`` 0.84), where a file's decode costs what a
photograph's does.

The audit's part of one ingest run (from its manifest's ``timings``):

- its share of the pixel pass (``decode_s``): the signature and quality figures are computed on
  the picture each task has just decoded, so the pass is timed whole and the audit's fraction of it
  is measured beside it, in one process on ``--sample`` of the same files: ``images.decode`` with
  and without ``audited`` (medians of 3 interleaved rounds);
- ``near_duplicates_s``: LSH candidates, verification, connected components, cluster relabelling;
- ``audit_gate_s``: the near-duplicate and flag figures the gate checks, and the report's galleries.

Share = audit / the stage's wall time (``total_s``: every run here shares one warm session, so
no Spark start-up is in it, which makes the share larger than in a cold ``python -m`` run).
Growth: ``near_duplicates_s`` at the largest size over the smallest, as an exponent (1: linear,
2: quadratic).

    python bench/audit_cost.py [--images 12000 48000] [--sample 600] [--lookalikes | --photos]

Writes ``bench/results/audit_cost.json`` (``audit_cost_lookalikes.json``, ``audit_cost_photos.json``).
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import ingest_throughput  # noqa: E402
from ingest_throughput import WORK, write_result  # noqa: E402

from spark_jobs import ingest  # noqa: E402
from spark_jobs.core import manifest  # noqa: E402
from spark_jobs.core.session import build_session  # noqa: E402
from spark_jobs.imaging import images  # noqa: E402
from spark_jobs.params import Config, load  # noqa: E402

log = logging.getLogger("bench")
SIDE = 256
PHOTO_SIZE = (640, 480)  # --photos: COCO's usual size
PHOTO_IMAGE_SIZE = 224  # --photos are ingested at the side ImageNet models take
TIMINGS = (
    "total_s",
    "read_s",
    "work_s",
    "decode_s",
    "near_duplicates_s",
    "cluster_relabel_s",
    "gate_s",
    "audit_gate_s",
)


def make_inputs(folder: Path, count: int, copy_every: int) -> tuple[int, int]:
    """``count`` distinct 2 x 2 digit grids (+ a planted copy of every ``copy_every``-th) as JPEGs
    in class folders; returns (files, bytes). Made once per settings."""
    import io
    import json
    import shutil

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    stamp = folder.with_name(f".{folder.name}.json")
    made = {"count": count, "side": SIDE, "copy_every": copy_every, "kind": "grid2x2"}
    if not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(folder, ignore_errors=True)
        digits = load_digits()
        scans = digits.images / 16.0
        rng = np.random.default_rng(0)
        for i in range(count):
            picks = rng.integers(0, len(scans), 4)
            ink = np.block([[scans[picks[0]], scans[picks[1]]], [scans[picks[2]], scans[picks[3]]]])
            grey = Image.fromarray((ink * 255).astype(np.uint8)).resize((SIDE, SIDE), Image.BICUBIC)
            ink = np.asarray(grey, dtype=np.float32)[..., None] / 255.0
            paper = rng.integers(150, 255, size=3).astype(np.float32)
            colour = rng.integers(0, 120, size=3).astype(np.float32)
            grain = rng.normal(0, 12, size=(SIDE, SIDE, 3))
            pixels = np.clip(paper * (1 - ink) + colour * ink + grain, 0, 255).astype(np.uint8)
            target = folder / str(digits.target[picks[0]])
            target.mkdir(parents=True, exist_ok=True)
            picture = Image.fromarray(pixels)
            picture.save(target / f"{i:06d}.jpg", quality=90)
            if copy_every and i % copy_every == 0:
                buf = io.BytesIO()
                picture.save(buf, "JPEG", quality=60)
                copy = Image.open(buf).resize((round(SIDE * 0.9), round(SIDE * 0.9)), Image.BILINEAR)
                copy.save(target / f"{i:06d}_copy.jpg", quality=90)
        stamp.write_text(json.dumps(made))
    files = list(folder.rglob("*.jpg"))
    return len(files), sum(p.stat().st_size for p in files)


def make_photos(folder: Path, count: int, copy_every: int) -> tuple[int, int]:
    """``count`` distinct 640 x 480 JPEGs (q90) of real photographs (+ a planted copy of every
    ``copy_every``-th, re-encoded at q60 and rescaled by 0.9): each a 2 x 2 mosaic of random crops
    (a fifth to all of a photograph's shorter side) of the photographs scikit-image and
    scikit-learn ship, in its own tint with grain, labelled by the top-left photograph. Made once
    per settings."""
    import io
    import json
    import shutil

    import numpy as np
    from PIL import Image

    from tests.near_duplicate_corpus import photographs

    stamp = folder.with_name(f".{folder.name}.json")
    made = {"count": count, "size": list(PHOTO_SIZE), "copy_every": copy_every, "kind": "photo-mosaic"}
    if not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(folder, ignore_errors=True)
        photos = [(name, np.asarray(photo)) for name, photo in photographs()]
        rng = np.random.default_rng(0)
        tile_w, tile_h = PHOTO_SIZE[0] // 2, PHOTO_SIZE[1] // 2
        for i in range(count):
            picks = rng.integers(0, len(photos), 4)
            tiles = []
            for k in picks:
                pixels = photos[k][1]
                h, w = pixels.shape[:2]
                side = int(rng.uniform(0.2, 1.0) * min(h, w))
                y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
                crop = Image.fromarray(pixels[y : y + side, x : x + side]).resize((tile_w, tile_h), Image.BILINEAR)
                tiles.append(np.asarray(crop, dtype=np.float32) * rng.uniform(0.8, 1.2, size=3))
            mosaic = np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)])
            grain = rng.normal(0, 6, size=mosaic.shape)
            picture = Image.fromarray(np.clip(mosaic + grain, 0, 255).astype(np.uint8))
            target = folder / photos[picks[0]][0]
            target.mkdir(parents=True, exist_ok=True)
            picture.save(target / f"{i:06d}.jpg", quality=90)
            if copy_every and i % copy_every == 0:
                buf = io.BytesIO()
                picture.save(buf, "JPEG", quality=60)
                copy = Image.open(buf).resize((round(PHOTO_SIZE[0] * 0.9), round(PHOTO_SIZE[1] * 0.9)), Image.BILINEAR)
                copy.save(target / f"{i:06d}_copy.jpg", quality=90)
        stamp.write_text(json.dumps(made))
    files = list(folder.rglob("*.jpg"))
    return len(files), sum(p.stat().st_size for p in files)


def config(folder: Path, root: Path, image_size: int = 64, photographs: bool = False) -> Config:
    """The bench's ingest settings: params.yaml's (the digits' audit settings) for the small
    JPEGs, ``ingest.audit``'s own defaults (made for photographs) for ``photographs``."""
    from spark_jobs.core.ingest_config import AuditConfig

    audit = [f"ingest.audit.{k}={v}" for k, v in AuditConfig().model_dump().items()] if photographs else []
    return load(
        REPO / "params.yaml",
        [
            f"data.root={root}",
            f"ingest.source={folder}",
            f"ingest.image_size={image_size}",
            "gate.raw.min_per_class=1",
            "gate.raw.max_quarantine_ratio=1.0",
            *audit,
        ],
    )


def audit_fraction(folder: Path, cfg: Config, sample: int) -> dict[str, float]:
    """The audit's share of decoding one file, measured in this process on ``sample`` files."""
    datas = [p.read_bytes() for p in sorted(folder.rglob("*.jpg"))[:sample]]
    plain, audited = [], []
    for _ in range(3):
        for flag, into in ((False, plain), (True, audited)):
            started = time.perf_counter()
            for data in datas:
                images.decode(data, cfg.ingest, audited=flag)
            into.append((time.perf_counter() - started) / len(datas) * 1000)
    plain_ms, audited_ms = statistics.median(plain), statistics.median(audited)
    return {
        "decode_ms": round(plain_ms, 3),
        "decode_audited_ms": round(audited_ms, 3),
        "audit_fraction_of_decode": round(1 - plain_ms / audited_ms, 3),
    }


def inputs(count: int, args: argparse.Namespace) -> tuple[Path, int, int]:
    """The folder of ``count`` images of the chosen kind, made if needed; (folder, files, bytes)."""
    if args.lookalikes:
        folder = WORK / f"audit_lookalikes_{count}"
        return folder, *ingest_throughput.make_inputs(folder, count, SIDE)
    if args.photos:
        folder = WORK / f"audit_photos_{count}"
        return folder, *make_photos(folder, count, args.copy_every)
    folder = WORK / f"audit_{count}"
    return folder, *make_inputs(folder, count, args.copy_every)


def one_size(spark, count: int, args: argparse.Namespace, fraction: float) -> dict:
    folder, files, total_bytes = inputs(count, args)
    cfg = config(folder, WORK / "audit_run", image_size(args), args.photos)
    published = ingest.run(cfg, spark)
    doc = manifest.read_json(published)
    t = {k: doc["timings"].get(k) for k in TIMINGS}
    in_pass = fraction * t["decode_s"]
    audit_s = in_pass + t["near_duplicates_s"] + t["audit_gate_s"]
    summary = doc["counts"]["near_duplicates"]
    log.info("%d images: audit %.1f s of %.1f s", count, audit_s, t["total_s"])
    return {
        "images": files,
        "bytes": total_bytes,
        "rows": doc["counts"]["rows"],
        "timings": t,
        "audit_in_decode_s": round(in_pass, 2),
        "audit_s": round(audit_s, 2),
        "audit_share": round(audit_s / t["total_s"], 3),
        "near_duplicates": summary,
    }


def describe_inputs(args: argparse.Namespace) -> str:
    if args.photos:
        return (
            f"JPEG q90, {PHOTO_SIZE[0]} x {PHOTO_SIZE[1]}, ingested at {PHOTO_IMAGE_SIZE} px with ingest.audit's "
            f"defaults: 2x2 mosaics of photograph crops, a copy of every {args.copy_every}th"
        )
    kind = (
        "repeated digit scans (look-alikes)"
        if args.lookalikes
        else f"2x2 digit grids, a copy of every {args.copy_every}th"
    )
    return f"JPEG q90, {SIDE} px, ingested at {image_size(args)} px: {kind}"


def image_size(args: argparse.Namespace) -> int:
    return PHOTO_IMAGE_SIZE if args.photos else 64


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, nargs="+", default=[12000, 48000])
    parser.add_argument("--sample", type=int, default=600, help="files timed in one process")
    parser.add_argument("--copy-every", type=int, default=50, help="a planted copy of every N-th image")
    parser.add_argument("--lookalikes", action="store_true", help="the worst case: repeated scans")
    parser.add_argument("--photos", action="store_true", help=f"{PHOTO_SIZE[0]} x {PHOTO_SIZE[1]} photo mosaics")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    sizes = sorted(args.images)
    first, _, _ = inputs(sizes[0], args)
    fraction = audit_fraction(first, config(first, WORK, image_size(args), args.photos), args.sample)
    log.info("in one process: %s", fraction)
    warm = WORK / "audit_warm"
    ingest_throughput.make_inputs(warm, 600, SIDE)
    cfg = config(warm, WORK / "audit_warm_run")
    spark = build_session(cfg.spark, ingest.worker_preload(cfg))
    try:
        ingest.run(cfg, spark)  # starts the Python workers once
        runs = [one_size(spark, n, args, fraction["audit_fraction_of_decode"]) for n in sizes]
    finally:
        spark.stop()
    result = {
        "command": "python bench/audit_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "inputs": describe_inputs(args),
        "master": cfg.spark.master,
        "one_process": fraction,
        "runs": runs,
        "target_audit_share": 0.15,
    }
    if len(runs) > 1:
        small, large = runs[0], runs[-1]
        ratio = large["timings"]["near_duplicates_s"] / small["timings"]["near_duplicates_s"]
        result["pairing_growth"] = {
            "images": [small["images"], large["images"]],
            "seconds": [small["timings"]["near_duplicates_s"], large["timings"]["near_duplicates_s"]],
            "ratio": round(ratio, 2),
            "exponent": round(math.log(ratio) / math.log(large["images"] / small["images"]), 2),
        }
    kind = "_lookalikes" if args.lookalikes else "_photos" if args.photos else ""
    write_result(f"audit_cost{kind}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
