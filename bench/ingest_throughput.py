"""Ingest throughput: the Spark job vs a single-process Pillow loop vs a row-at-a-time Python UDF.

All three decode the same JPEG files with the same settings and write Parquet (median of
``--repeat`` timed runs; the naive UDF runs once):

- ``spark_job``: ``spark_jobs.ingest.run`` (listing, Arrow-batched decode, duplicate check,
  both tables written; the GX gate is timed separately);
- ``single_process``: one Python process, ``spark_jobs.imaging.images.decode`` on each file, one
  pyarrow Parquet write of the same columns;
- ``naive_udf``: the seed document's way: Spark ``binaryFile`` + a row-at-a-time ``udf``
  returning the normalised pixels as nested lists of floats.

    python bench/ingest_throughput.py [--images 3000] [--source-size 256] [--image-size 64]

Writes ``bench/results/ingest_throughput_<N>x<source>px_to_<size>px.json``. Inputs are generated under ``bench/work/``
from scikit-learn's digits (upscaled, tinted, textured) so the JPEGs have a realistic size.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from spark_jobs import ingest  # noqa: E402
from spark_jobs.core import manifest  # noqa: E402
from spark_jobs.core.session import build_session  # noqa: E402
from spark_jobs.imaging import images  # noqa: E402
from spark_jobs.params import Config, load  # noqa: E402

WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results"
log = logging.getLogger("bench")


def make_inputs(folder: Path, count: int, side: int) -> tuple[int, int]:
    """``count`` JPEGs of ``side`` x ``side`` in class folders; returns (files, bytes)."""
    from sklearn.datasets import load_digits

    stamp = folder.with_name(f".{folder.name}.json")
    made = {"count": count, "side": side}
    if not stamp.exists() or json.loads(stamp.read_text()) != made:
        shutil.rmtree(folder, ignore_errors=True)
        digits = load_digits()
        rng = np.random.default_rng(0)
        for i in range(count):
            k = i % len(digits.images)
            grey = Image.fromarray((digits.images[k] / 16 * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
            ink = np.asarray(grey, dtype=np.float32)[..., None] / 255.0
            paper = rng.integers(150, 255, size=3).astype(np.float32)
            colour = rng.integers(0, 120, size=3).astype(np.float32)
            texture = rng.normal(0, 12, size=(side, side, 3))
            pixels = np.clip(paper * (1 - ink) + colour * ink + texture, 0, 255).astype(np.uint8)
            target = folder / str(digits.target[k])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(target / f"{i:05d}.jpg", quality=90)
        stamp.write_text(json.dumps(made))
    files = [p for p in folder.rglob("*.jpg")]
    return len(files), sum(p.stat().st_size for p in files)


def write_result(name: str, result: dict) -> None:
    """Save a benchmark result as ``bench/results/<name>`` and print it."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / name).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


def single_process(folder: Path, cfg: Config, out: Path) -> float:
    """Seconds for one process to decode every file and write the same columns to Parquet."""
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    rows: dict[str, list] = {}  # the decoded columns (the project's ingest also measures the audit's)
    fractions = cfg.ingest.split.fractions()
    for path in sorted(folder.rglob("*.jpg")):
        data = path.read_bytes()
        decoded = images.decode(data, cfg.ingest)
        image_id = hashlib.sha256(data).hexdigest()
        record = {
            "image_id": image_id,
            "source_uri": path.as_uri(),
            "label": path.parent.name,
            "split": images.assign_split(image_id, fractions, cfg.ingest.split.seed),
            "size_bytes": len(data),
            "orig_width": decoded.orig_width,
            "orig_height": decoded.orig_height,
            "orig_format": decoded.orig_format,
            "orig_mode": decoded.orig_mode,
            "height": decoded.height,
            "width": decoded.width,
            "pixels": decoded.pixels,
        }
        for key, value in record.items():
            rows.setdefault(key, []).append(value)
    out.mkdir(parents=True)
    pq.write_table(pa.table(rows), out / "images.parquet", compression="zstd")
    return time.perf_counter() - start


def naive_udf(spark, folder: Path, cfg: Config, out: Path) -> float:
    """Seconds for binaryFile + a row-at-a-time Python UDF returning nested float lists."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType

    size = cfg.ingest.image_size

    def to_floats(content: bytes) -> list:
        im = Image.open(io.BytesIO(content)).convert("RGB").resize((size, size))
        return (np.asarray(im, dtype=np.float32) / 255.0).tolist()

    udf = F.udf(to_floats, ArrayType(ArrayType(ArrayType(FloatType()))))
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    frame.select("path", udf("content").alias("pixels")).write.parquet(str(out))
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per method; the median is reported")
    parser.add_argument("--skip-naive", action="store_true", help="skip the slow row-at-a-time UDF")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    folder = WORK / "images"
    files, total_bytes = make_inputs(folder, args.images, args.source_size)
    log.info("%d JPEGs, %.1f KiB average", files, total_bytes / files / 1024)
    cfg = load(
        REPO / "params.yaml",
        [
            f"data.root={WORK / 'data'}",
            f"ingest.source={folder}",
            f"ingest.image_size={args.image_size}",
            "gate.raw.min_per_class=1",
        ],
    )

    single_runs = [single_process(folder, cfg, WORK / "single") for _ in range(args.repeat)]
    single_s = statistics.median(single_runs)
    log.info("single process: %.1f s, %.0f images/s", single_s, files / single_s)

    t0 = time.perf_counter()
    spark = build_session(cfg.spark, ingest.worker_preload(cfg))  # as the stage's own session
    spark.range(1).count()
    session_s = time.perf_counter() - t0
    try:
        # Warm-up run: starts the Python workers once, as a long-running cluster would have them.
        ingest.run(cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(WORK / "warm")})}), spark)
        job_runs, decode_runs = [], []
        for _ in range(args.repeat):
            t1 = time.perf_counter()
            published = ingest.run(cfg, spark)
            job_runs.append(time.perf_counter() - t1)
            decode_runs.append(manifest.read_json(published)["timings"]["work_s"])
        job_s, decode_write_s = statistics.median(job_runs), statistics.median(decode_runs)
        log.info(
            "spark job: %.1f s (decode+write %.1f s), %.0f images/s", job_s, decode_write_s, files / decode_write_s
        )
        naive_s = None if args.skip_naive else naive_udf(spark, folder, cfg, WORK / "naive")
        if naive_s:
            log.info("naive udf: %.1f s, %.0f images/s", naive_s, files / naive_s)
    finally:
        spark.stop()

    result = {
        "command": "python bench/ingest_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "inputs": {"images": files, "bytes": total_bytes, "source_side": args.source_size, "format": "JPEG q90"},
        "image_size": args.image_size,
        "master": cfg.spark.master,
        "session_start_s": round(session_s, 2),
        "repeat": args.repeat,
        "spark_runs_decode_and_write_s": [round(x, 2) for x in decode_runs],
        "single_process": {
            "seconds": round(single_s, 2),
            "runs_s": [round(x, 2) for x in single_runs],
            "images_per_s": round(files / single_s, 1),
        },
        "spark_job": {
            "seconds_decode_and_write": round(decode_write_s, 2),
            "images_per_s": round(files / decode_write_s, 1),
            "seconds_with_gate": round(job_s, 2),
            "images_per_s_with_gate": round(files / job_s, 1),
        },
        "speedup_vs_single_process": round(single_s / decode_write_s, 2),
        "speedup_vs_single_process_with_gate": round(single_s / job_s, 2),
    }
    if naive_s:
        result["naive_udf"] = {"seconds": round(naive_s, 2), "images_per_s": round(files / naive_s, 1)}
        result["speedup_vs_naive_udf"] = round(naive_s / decode_write_s, 2)
    write_result(f"ingest_throughput_{files}x{args.source_size}px_to_{args.image_size}px.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
