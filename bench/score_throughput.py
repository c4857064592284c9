"""Scoring throughput: the Spark score stage vs a plain PyTorch loop vs a row-at-a-time UDF, INT8 vs
FP32, and scaling from N to 4N images (time and peak memory).

All use the same JPEG files (those of ``ingest_throughput.py``: digits upscaled to
``--source-size``, tinted, textured, q90), the same trained cnn (``--model``, default the
``models/cnn`` that ``dvc repro`` trains) decoded with the ingest settings of its card, and the
same batch size; the three are compared on N and on 4N images (fixed costs of a Spark run, ~1 s
here, weigh less on the larger batch):

- ``spark_stage``: ``spark_jobs.score.run`` on the folder, warm (one warm-up run first, as a
  scheduled deployment has its Python workers up); the figure is its decode + score + write part
  (``timings.work_s`` of the run manifest: scan, score and write), the gate is reported apart;
- ``plain_loop``: one Python process reads each file, decodes it with
  ``spark_jobs.imaging.images.decode`` (same settings), and runs the model on batches of the same size
  with torch's default threads;
- ``row_udf``: the seed document's way: ``binaryFile`` + a Python ``udf`` that decodes one image
  and runs the model on it (the model loaded once per worker, as the kindest version of it).

INT8: the same plain loop with the model's static INT8 copy, and the test-split accuracy of both
(from ``evaluate``'s ``reports/evaluation.json``). Scaling: ``python -m spark_jobs.score`` as a
subprocess on N and 4N files (cold, as the scheduler runs it), wall time and the peak summed RSS
of its process tree (driver, JVM, Python workers), sampled every 50 ms.

    python bench/score_throughput.py [--images 2000] [--source-size 256] [--batch-size 256]

Writes ``bench/results/score_throughput_<N>x<source>px.json``.
"""

from __future__ import annotations

import argparse
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from ingest_throughput import WORK, make_inputs, write_result  # noqa: E402
from peers import measured  # noqa: E402

from spark_jobs import score  # noqa: E402
from spark_jobs.core import manifest  # noqa: E402
from spark_jobs.core.ingest_config import IngestConfig  # noqa: E402
from spark_jobs.core.session import build_session  # noqa: E402
from spark_jobs.imaging import images  # noqa: E402
from spark_jobs.ml import cards, models  # noqa: E402
from spark_jobs.ml.inference import TorchModel  # noqa: E402
from spark_jobs.params import Config, load  # noqa: E402

log = logging.getLogger("bench")


def decoded_array(data: bytes, cfg: IngestConfig) -> np.ndarray:
    """One file decoded with the model's ingest settings, as ``(H, W, 3)`` uint8."""
    d = images.decode(data, cfg)
    return images.pixels_to_array(d.pixels, d.height, d.width)


def plain_loop(files: list[Path], model: TorchModel, ingest_cfg: IngestConfig, batch_size: int) -> float:
    """Seconds for one process to decode every file and classify it, in batches."""
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    net = model.load()
    start = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(files), batch_size):
            batch = np.stack([decoded_array(p.read_bytes(), ingest_cfg) for p in files[s : s + batch_size]])
            torch.softmax(net(models.to_tensor(batch)), dim=1).argmax(1)
    return time.perf_counter() - start


def row_udf(spark, folder: Path, model: TorchModel, ingest_cfg: IngestConfig) -> float:
    """Seconds for binaryFile + a row-at-a-time UDF decoding one image and running the model on it."""
    from pyspark.sql import functions as F
    from pyspark.sql.types import IntegerType

    def classify(content: bytes) -> int:
        import torch

        torch.set_num_threads(1)
        pixels = decoded_array(content, ingest_cfg)[None]
        with torch.inference_mode():
            return int(model.load()(models.to_tensor(pixels)).argmax(1)[0])

    udf = F.udf(classify, IntegerType())
    out = WORK / "row_udf"
    shutil.rmtree(out, ignore_errors=True)
    start = time.perf_counter()
    frame = spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(str(folder))
    frame.select("path", udf("content").alias("prediction")).write.parquet(str(out))
    return time.perf_counter() - start


def spark_runs(spark, cfg: Config, repeat: int) -> dict:
    """Warm runs of the score stage, each on a fresh data root (so every image is new)."""

    def once(tag: str) -> dict:
        root = WORK / f"score-{tag}"
        shutil.rmtree(root, ignore_errors=True)
        run_cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"root": str(root)})})
        t0 = time.perf_counter()
        published = score.run(run_cfg, spark)
        total = time.perf_counter() - t0
        doc = manifest.read_json(published)
        return {**doc["timings"], "wall_s": total, "rows": doc["counts"]}

    once("warm")
    runs = [once(str(i)) for i in range(repeat)]
    part = statistics.median(r["work_s"] for r in runs)
    return {
        "work_s": round(part, 3),
        "runs_s": [round(r["work_s"], 3) for r in runs],
        "with_gate_s": round(statistics.median(r["wall_s"] for r in runs), 3),
        "scored": runs[0]["rows"]["scored"],
    }


def throughput(spark, cfg: Config, folder: Path, model: TorchModel, ingest_cfg: IngestConfig, args) -> dict:
    """Spark stage vs plain loop vs row UDF on the JPEGs of ``folder``."""
    files = sorted(folder.rglob("*.jpg"))
    count = len(files)
    loop_s = statistics.median(plain_loop(files, model, ingest_cfg, args.batch_size) for _ in range(args.repeat))
    stage = spark_runs(
        spark, cfg.model_copy(update={"score": cfg.score.model_copy(update={"inbox": str(folder)})}), args.repeat
    )
    udf_s = row_udf(spark, folder, model, ingest_cfg)
    spark_s = stage["work_s"]
    log.info(
        "%d images: spark %.0f, plain loop %.0f, row udf %.0f img/s",
        count,
        count / spark_s,
        count / loop_s,
        count / udf_s,
    )
    return {
        "images": count,
        "spark_stage": {**stage, "images_per_s": round(count / spark_s, 1)},
        "plain_loop": {"seconds": round(loop_s, 3), "images_per_s": round(count / loop_s, 1)},
        "row_udf": {"seconds": round(udf_s, 3), "images_per_s": round(count / udf_s, 1)},
        "spark_vs_plain_loop": round(loop_s / spark_s, 2),
        "spark_vs_row_udf": round(udf_s / spark_s, 2),
    }


def peak_run(cmd: list[str], env: dict) -> tuple[float, float]:
    """``(seconds, peak MiB)`` of a command, the RSS of its whole process tree summed."""
    wall, peak, _ = measured(cmd, env, REPO)
    return wall, peak


def scaling(folder_n: Path, folder_4n: Path, model_dir: Path, batch: int) -> dict:
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    out = {}
    for tag, folder in (("n", folder_n), ("4n", folder_4n)):
        root = WORK / f"scale-{tag}"
        shutil.rmtree(root, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "spark_jobs.score",
            f"--set=data.root={root}", f"--set=score.inbox={folder}", f"--set=score.model={model_dir}",
            f"--set=score.batch_size={batch}", "--set=gate.predictions.max_low_confidence=1.0",
        ]  # fmt: skip
        seconds, peak = peak_run(cmd, env)
        files = sum(1 for _ in folder.rglob("*.jpg"))
        out[tag] = {"images": files, "seconds": round(seconds, 2), "peak_rss_mib": round(peak, 1)}
    out["time_ratio"] = round(out["4n"]["seconds"] / out["n"]["seconds"], 2)
    out["peak_memory_ratio"] = round(out["4n"]["peak_rss_mib"] / out["n"]["peak_rss_mib"], 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--model", type=Path, default=REPO / "models" / "cnn")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-scaling", action="store_true")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    card = cards.read_card(args.model)
    ingest_cfg = card.ingest_settings
    folder, big = WORK / "score_images", WORK / "score_images_4n"
    count, total_bytes = make_inputs(folder, args.images, args.source_size)
    make_inputs(big, 4 * args.images, args.source_size)
    files = sorted(folder.rglob("*.jpg"))
    fp32, int8 = TorchModel.from_card(args.model, card), TorchModel.from_card(args.model, card, "int8")

    loop_s = statistics.median(plain_loop(files, fp32, ingest_cfg, args.batch_size) for _ in range(args.repeat))
    int8_loop_s = statistics.median(plain_loop(files, int8, ingest_cfg, args.batch_size) for _ in range(args.repeat))
    log.info("plain loop: %.0f img/s fp32, %.0f img/s int8", count / loop_s, count / int8_loop_s)
    net32, net8 = fp32.load(), int8.load()
    x = models.to_tensor(np.stack([decoded_array(p.read_bytes(), ingest_cfg) for p in files[:1024]]))
    model_only = {}
    import torch

    with torch.inference_mode():
        for name, net in (("fp32", net32), ("int8", net8)):
            net(x[: args.batch_size])
            t0 = time.perf_counter()
            for s in range(0, len(x), args.batch_size):
                net(x[s : s + args.batch_size])
            model_only[name] = round(len(x) / (time.perf_counter() - t0), 1)

    cfg = load(
        REPO / "params.yaml",
        [f"score.model={args.model}", f"score.batch_size={args.batch_size}", "gate.predictions.max_low_confidence=1.0"],
    )
    spark = build_session(cfg.spark)
    try:
        sizes = [throughput(spark, cfg, f, fp32, ingest_cfg, args) for f in (folder, big)]
    finally:
        spark.stop()
    scale = None if args.skip_scaling else scaling(folder, big, args.model, args.batch_size)

    metrics_file = REPO / "reports" / "evaluation.json"
    accuracy = None
    if metrics_file.exists():
        cnn = json.loads(metrics_file.read_text())["models"].get("cnn", {})
        if cnn.get("version") == card["version"]:
            accuracy = {"fp32": cnn.get("accuracy"), "int8": (cnn.get("int8") or {}).get("accuracy")}
    result = {
        "command": "python bench/score_throughput.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
        "inputs": {"images": count, "bytes": total_bytes, "source_side": args.source_size, "format": "JPEG q90"},
        "model": {"version": card["version"], "arch": card["arch"], "image_size": card["image_size"]},
        "batch_size": args.batch_size,
        "master": cfg.spark.master,
        "throughput": {str(t["images"]): t for t in sizes},
        "int8": {
            "plain_loop_images_per_s": {"fp32": round(count / loop_s, 1), "int8": round(count / int8_loop_s, 1)},
            "model_only_images_per_s": model_only,
            "model_only_speedup": round(model_only["int8"] / model_only["fp32"], 2),
            "test_accuracy": accuracy,
        },
        "scaling": scale,
    }
    write_result(f"score_throughput_{count}x{args.source_size}px.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
