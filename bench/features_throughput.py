"""Feature extraction throughput: the Spark features stage vs a plain single-process loop.

Same ingested images (the JPEGs of ``ingest_throughput.py``, ingested once at ``--image-size``),
same extractor settings. Medians of ``--repeat`` warm runs (one warm-up run first, as a
long-running cluster would have its Python workers and their loaded model):

- ``cnn``: ``spark_jobs.features.run`` with ``features.kind=cnn`` (extract pass = Arrow batches
  -> backbone in batches of ``--batch-size`` -> Parquet) vs a plain PyTorch loop: pyarrow reads
  the same Parquet, the same backbone file runs in inference mode on the same batches with
  torch's default threads (all cores), embeddings kept in memory.
- ``classical``: the same stage with ``features.kind=classical`` (HOG + colour, then scaler + PCA)
  vs a loop calling the same descriptor function.

The Spark figure is the stage's extract pass (``timings.extract_s`` of its manifest: reading
pixels, extracting, writing the vectors); the PCA fit/transform and the gate are reported apart.

    python bench/features_throughput.py [--images 3000] [--image-size 64] [--width 16] [--batch-size 64]

Writes ``bench/results/features_throughput_<N>x<size>px.json``.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_throughput import WORK, make_inputs, write_result  # noqa: E402

from spark_jobs import features, ingest  # noqa: E402
from spark_jobs.core import manifest  # noqa: E402
from spark_jobs.core.session import build_session  # noqa: E402
from spark_jobs.imaging import images  # noqa: E402
from spark_jobs.ml import extractors, models  # noqa: E402
from spark_jobs.params import Config, load  # noqa: E402

log = logging.getLogger("bench")


def read_batches(images_dir: Path, batch_size: int):
    """``(N, S, S, 3)`` uint8 batches of the ingested pixels, read with pyarrow."""
    for batch in ds.dataset(images_dir, format="parquet").to_batches(
        columns=["pixels", "height", "width"], batch_size=batch_size
    ):
        h, w = batch.column("height")[0].as_py(), batch.column("width")[0].as_py()
        yield images.stack_pixels(batch.column("pixels"), h, w)


def plain_torch_loop(images_dir: Path, backbone: Path, batch_size: int) -> tuple[float, int]:
    """Seconds (and rows) for one process to embed every image with the backbone file."""
    import torch

    module = models.module_from_bytes(backbone.read_bytes(), str(backbone), None)
    torch.set_num_threads(os.cpu_count() or 1)
    start, rows, out = time.perf_counter(), 0, []
    with torch.inference_mode():
        for pixels in read_batches(images_dir, batch_size):
            x = torch.from_numpy(np.array(pixels)).permute(0, 3, 1, 2).float() / 255.0
            out.append(module(x).numpy())
            rows += len(pixels)
    return time.perf_counter() - start, rows


def plain_classical_loop(images_dir: Path, cfg: Config) -> tuple[float, int]:
    extractor = extractors.Classical(cfg.features.classical, cfg.ingest.image_size)
    start, rows = time.perf_counter(), 0
    for pixels in read_batches(images_dir, 256):
        extractor(pixels)
        rows += len(pixels)
    return time.perf_counter() - start, rows


def spark_runs(spark, cfg: Config, repeat: int) -> dict[str, float]:
    """Median timings of ``repeat`` warm runs of the features stage (after one warm-up)."""
    features.run(cfg, spark)
    extract, total, rows = [], [], 0
    for _ in range(repeat):
        t0 = time.perf_counter()
        folder = features.run(cfg, spark)
        total.append(time.perf_counter() - t0)
        doc = manifest.read_json(folder)
        extract.append(doc["timings"]["extract_s"])
        rows = doc["counts"]["rows"]
    return {
        "rows": rows,
        "extract_s": round(statistics.median(extract), 3),
        "extract_runs_s": [round(x, 3) for x in extract],
        "stage_s": round(statistics.median(total), 3),
        "images_per_s": round(rows / statistics.median(extract), 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--width", type=int, default=16, help="small_cnn width of the benchmark backbone")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-classical", action="store_true", help="benchmark the cnn extractor only")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    import torch

    folder = WORK / "images"
    files, _ = make_inputs(folder, args.images, args.source_size)
    root = WORK / f"features_{args.images}x{args.image_size}"  # its own ingest output per input set
    backbone = WORK / f"backbone_w{args.width}.pt2"
    torch.manual_seed(0)
    models.export_backbone(models.small_cnn(args.width), backbone, args.image_size)
    common = [
        f"data.root={root}",
        f"ingest.source={folder}",
        f"ingest.image_size={args.image_size}",
        "gate.raw.min_per_class=1",
        f"features.batch_size={args.batch_size}",
    ]
    cnn_cfg = load(REPO / "params.yaml", [*common, "features.kind=cnn", f"features.cnn.backbone={backbone}"])
    classical_cfg = load(REPO / "params.yaml", common)

    spark = build_session(cnn_cfg.spark, features.worker_preload(cnn_cfg))  # as the stage's own session
    try:
        if not (root / "ingest" / manifest.MANIFEST).exists():
            ingest.run(classical_cfg, spark)
        images_dir = root / "ingest" / "images.parquet"
        parquet_files = len(list(images_dir.glob("*.parquet")))
        plain_torch_loop(images_dir, backbone, args.batch_size)  # warm-up: page cache, torch kernels
        loop_runs = [plain_torch_loop(images_dir, backbone, args.batch_size)[0] for _ in range(args.repeat)]
        loop_s = statistics.median(loop_runs)
        log.info("plain torch loop: %.2f s, %.0f images/s", loop_s, files / loop_s)
        cnn = spark_runs(spark, cnn_cfg, args.repeat)
        log.info("spark cnn: %s", cnn)
        if not args.skip_classical:
            classical_loop_s = statistics.median(plain_classical_loop(images_dir, classical_cfg)[0] for _ in range(2))
            classical = spark_runs(spark, classical_cfg, args.repeat)
            log.info("spark classical: %s", classical)
    finally:
        spark.stop()

    rows = cnn["rows"]
    result = {
        "command": "python bench/features_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "inputs": {"images": rows, "image_size": args.image_size, "parquet_files": parquet_files},
        "backbone": {"architecture": "small_cnn", "width": args.width, "embedding_dim": 4 * args.width},
        "batch_size": args.batch_size,
        "master": cnn_cfg.spark.master,
        "torch_threads": {"plain_loop": os.cpu_count(), "spark_task": cnn_cfg.features.cnn.threads},
        "cnn": {
            "plain_torch_loop": {
                "seconds": round(loop_s, 3),
                "runs_s": [round(x, 3) for x in loop_runs],
                "images_per_s": round(rows / loop_s, 1),
            },
            "spark_stage": cnn,
            "spark_vs_plain_loop": round(loop_s / cnn["extract_s"], 2),
        },
    }
    if not args.skip_classical:
        result["classical"] = {
            "plain_loop": {"seconds": round(classical_loop_s, 3), "images_per_s": round(rows / classical_loop_s, 1)},
            "spark_stage": classical,
            "spark_vs_plain_loop": round(classical_loop_s / classical["extract_s"], 2),
        }
    write_result(f"features_throughput_{rows}x{args.image_size}px_w{args.width}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
