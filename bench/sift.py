"""SIFT visual words against the classical HOG + colour descriptors on the bundled sample.

Both read the same published ingest table (the 1,797 digit scans ``dvc repro`` ingests into
``data/ingest``), fit the same StandardScaler + PCA on the train split, train the same MLlib
logistic regression (``train.mllib``) and are evaluated by the evaluate stage on the same test
split; the figures are its ``metrics.json`` (accuracy, macro F1). Only ``features.kind`` differs.
The features stage's own timings are reported too (``extract_s``; ``codebook_s`` for SIFT: the
train split's descriptors and MLlib KMeans).

    python bench/sift.py [--words 128] [--grid 2] [--contrast 0.002]

Writes ``bench/results/sift_vs_classical.json``.
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

from ingest_throughput import WORK, write_result  # noqa: E402

from spark_jobs import evaluate, features, train  # noqa: E402
from spark_jobs.core import manifest  # noqa: E402
from spark_jobs.core.session import build_session  # noqa: E402
from spark_jobs.params import load  # noqa: E402


def run_kind(spark, kind: str, root: Path, ingest_dir: Path, extra: list[str]) -> dict:
    """features (``kind``) -> train mllib -> evaluate mllib under ``root``; the figures."""
    shutil.rmtree(root, ignore_errors=True)
    (root / "data").mkdir(parents=True)
    (root / "data" / "ingest").symlink_to(ingest_dir, target_is_directory=True)
    cfg = load(
        REPO / "params.yaml",
        [
            f"data.root={root / 'data'}",
            f"features.kind={kind}",
            "train.model=mllib",
            f"train.output={root / 'models'}",
            "evaluate.models=[mllib]",
            f"evaluate.reports={root / 'reports'}",
            f"evaluate.champion={root / 'champion'}",
            f"evaluate.rejected={root / 'rejected'}",
            "evaluate.int8=false",
            *extra,
        ],
    )
    published = features.run(cfg, spark)
    timings = manifest.read_json(published)["timings"]
    train.run(cfg, spark)
    evaluate.run(cfg, spark)
    metrics = json.loads((root / "reports" / "metrics.json").read_text())
    spec = json.loads((published / "extractor.json").read_text())
    return {
        "accuracy": round(metrics["mllib"]["accuracy"], 4),
        "macro_f1": round(metrics["mllib"]["macro_f1"], 4),
        "test_rows": metrics["test_rows"],
        "descriptor_dim": spec["descriptor_dim"],
        "pca_k": spec["dim"],
        "extract_s": timings.get("extract_s"),
        "codebook_s": timings.get("codebook_s"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--words", type=int, default=None, help="features.sift.words (default: params.yaml's)")
    parser.add_argument("--grid", type=int, default=None, help="features.sift.grid (default: params.yaml's)")
    parser.add_argument("--contrast", type=float, default=None, help="features.sift.contrast")
    args = parser.parse_args(argv)
    ingest_dir = REPO / "data" / "ingest"
    if not (ingest_dir / manifest.MANIFEST).exists():
        raise SystemExit(f"no published ingest table at {ingest_dir}: run `dvc repro` first")
    sift = [f"features.sift.{k}={v}" for k, v in vars(args).items() if v is not None]
    cfg = load(REPO / "params.yaml", sift)
    spark = build_session(cfg.spark, features.worker_preload(cfg))
    try:
        result = {
            "what": "features.kind classical vs sift, same ingest table, scaler + PCA, MLlib classifier, test split",
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "sift_settings": cfg.features.sift.model_dump(),
            "results": {
                "classical": run_kind(spark, "classical", WORK / "sift" / "classical", ingest_dir, []),
                "sift": run_kind(spark, "sift", WORK / "sift" / "sift", ingest_dir, sift),
            },
        }
    finally:
        spark.stop()
    write_result("sift_vs_classical.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
