"""The tile cascade on the find workspace's test split: at each ``score.cascade.tile_fraction``, how
many tiles a second the scoring path handles, and the image and pointing accuracy it keeps.

It runs after ``dvc repro find/dvc.yaml`` and reads that workspace: its tiles_attention model
(``find/models/tiles_attention``, with its light tile screen), the test split of its ingest
table and the sample's deciding cells (``find/data/sample/find_cells.csv``). For each fraction
the scoring worker's own head (:func:`spark_jobs.scoring.model.tile_head`, built from
find/params.yaml with that fraction) runs over every test file, as a scan task runs it: decode at
full resolution, cut, the light screen on every tile's thumbnail, the backbone and the attention
on the kept tiles. The files are read into memory first (the fetch is not timed); one process,
one torch thread (``score.threads``), batches of ``--batch`` files; the time is the median of
``--repeats`` passes.

    python bench/tile_cascade.py [--fractions 1.0 0.5 0.25] [--repeats 3] [--batch 64]

Writes ``bench/results/tile_cascade.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import pandas as pd  # noqa: E402
import pyarrow.dataset as ds  # noqa: E402
from ingest_throughput import write_result  # noqa: E402

from spark_jobs.core import store  # noqa: E402
from spark_jobs.ml import metrics, screen  # noqa: E402
from spark_jobs.ml.cards import read_card  # noqa: E402
from spark_jobs.params import load  # noqa: E402
from spark_jobs.scoring.model import tile_head  # noqa: E402

WORKSPACE = REPO / "find"
MODEL = WORKSPACE / "models" / "tiles_attention"


def test_split() -> pd.DataFrame:
    """``image_id, source_uri, label`` of the find workspace's test images."""
    table = ds.dataset(str(WORKSPACE / "data" / "ingest" / "images.parquet"), format="parquet").to_table(
        columns=["image_id", "source_uri", "label", "split"], filter=ds.field("split") == "test"
    )
    return table.to_pandas().sort_values("source_uri").reset_index(drop=True)


def one_fraction(fraction: float, files: list[bytes], batch: int, repeats: int) -> tuple[dict, pd.DataFrame]:
    """Seconds (median of ``repeats``) and the outputs of the scoring head at ``fraction``."""
    cfg = load(WORKSPACE / "params.yaml", [f"score.cascade.tile_fraction={fraction}", "score.top_tiles=1"])
    head = tile_head(MODEL, read_card(MODEL), cfg)
    head(files[:2])  # load the model and the backbone once, as a scan task's first batch does
    seconds, outputs = [], []
    for _ in range(repeats):
        start, outputs = time.perf_counter(), []
        for at in range(0, len(files), batch):
            outputs.append(head(files[at : at + batch]))
        seconds.append(time.perf_counter() - start)
    columns = {name: [v for part in outputs for v in part[name].to_pylist()] for name in outputs[0]}
    return {"seconds": statistics.median(seconds), "all_seconds": seconds}, pd.DataFrame(columns)


def figures(fraction: float, timing: dict, said: pd.DataFrame, test: pd.DataFrame, cells: pd.DataFrame) -> dict:
    tiles = int(said["tile_count"].sum())
    embedded = sum(screen.kept(int(n), fraction) for n in said["tile_count"])
    predictions = said.assign(image_id=test["image_id"].to_numpy())
    pointing = metrics.pointing_accuracy(predictions, cells)
    return {
        "tile_fraction": fraction,
        "images": len(said),
        "tiles_cut": tiles,
        "tiles_embedded": embedded,
        "seconds": round(timing["seconds"], 3),
        "all_seconds": [round(s, 3) for s in timing["all_seconds"]],
        "tiles_per_s": round(tiles / timing["seconds"], 1),
        "images_per_s": round(len(said) / timing["seconds"], 1),
        "accuracy": float((said["predicted_label"].to_numpy() == test["label"].to_numpy()).mean()),
        "pointing_accuracy": pointing["pointing_accuracy"],
        "pointing_images": pointing["pointing_images"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[1.0, 0.5, 0.25])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    test = test_split()
    cells = pd.read_csv(WORKSPACE / "data" / "sample" / "find_cells.csv", dtype={"image_id": str})
    files = [store.fetch(uri) for uri in test["source_uri"]]
    rows = []
    for fraction in sorted(args.fractions, reverse=True):
        timing, said = one_fraction(fraction, files, args.batch, args.repeats)
        rows.append(figures(fraction, timing, said, test, cells))
        print(rows[-1], flush=True)
    full = next((r for r in rows if r["tile_fraction"] == 1.0), None)
    within = [r["tile_fraction"] for r in rows if full and r["accuracy"] >= full["accuracy"] - 0.01]
    card = read_card(MODEL)
    light = screen.Screen.read(MODEL / card.files.screen) if card.files.screen else None
    write_result(
        "tile_cascade.json",
        {
            "command": "python bench/tile_cascade.py " + " ".join(sys.argv[1:]),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
            "inputs": f"find/ test split ({len(test)} images of 128 x 128 px, 7 x 7 tiles of 32 px every 16 px)",
            "model": card.version,
            "screen": {"images": light.images, "tiles": light.tiles, "recall": light.recall} if light else None,
            "threads": 1,
            "rows": rows,
            "smallest_fraction_within_1_point": min(within) if within else None,
        },
    )


if __name__ == "__main__":
    main()
