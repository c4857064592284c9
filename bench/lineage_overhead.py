"""What OpenLineage events cost: on ``dvc repro`` of the bundled sample, and per stream micro-batch.

Two measures of the same cost, in one run on this machine:

- **In process.** Every run logs the time it spent on its lineage: the client's import, building
  each event (its schema facet reads Parquet footers, its statistics the files' sizes) and
  sending it (``lineage: N OpenLineage events of <job> run <id> sent ... in X ms``; the file
  transport writes one JSON file per event). The sum over the runs of ``dvc repro``, against its
  wall time, is lineage's share. Per micro-batch of a stream: its own figure.
- **A/B.** ``dvc repro`` in two fresh workspaces (the repository's tracked files, as a clone),
  one with lineage on (the default) and one with ``OPENLINEAGE_DISABLED=true`` (no event built),
  alternated ``--repeat`` times, after ``--warmup`` untimed runs. The walls' ratio is what a user
  would see, within this machine's run-to-run noise, which is larger than 2 %: the in-process
  figure is the precise one.

Then a stream (``score.mode=stream``, ``available_now``) over ``--stream-images`` of the
benchmark's 256 px JPEGs, ``--per-batch`` files per micro-batch, with the champion of the first
workspace: each micro-batch's lineage milliseconds (median, p95, max) beside its latency.

    python bench/lineage_overhead.py [--repeat 1] [--warmup 1] [--stream-images 600] [--per-batch 20]
    python bench/lineage_overhead.py --stream-only   # the stream again, in the last run's workspace

Writes ``bench/results/lineage_overhead.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from ingest_throughput import WORK, make_inputs, write_result  # noqa: E402
from overhead import environment, workspace  # noqa: E402

log = logging.getLogger("bench")
BIN = Path(sys.executable).parent
RESULT = "lineage_overhead.json"
SPENT = re.compile(r"lineage: (\d+) OpenLineage events of (\S+) run (\S+) sent .* in ([\d.]+) ms")


def spent(output: str) -> list[dict[str, Any]]:
    """Each run's lineage line in ``output``: job, run id, events, milliseconds."""
    return [
        {"job": m.group(2), "run_id": m.group(3), "events": int(m.group(1)), "ms": float(m.group(4))}
        for m in SPENT.finditer(output)
    ]


def repro(ws: Path, lineage: bool) -> tuple[float, str]:
    """Wall seconds and output of ``dvc repro`` in ``ws``, with lineage on or off."""
    env = environment(ws) | {"DVC_NO_ANALYTICS": "1"}
    if not lineage:
        env["OPENLINEAGE_DISABLED"] = "true"
    start = time.perf_counter()
    proc = subprocess.run([str(BIN / "dvc"), "repro"], cwd=ws, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"dvc repro failed in {ws}:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    return wall, proc.stdout + proc.stderr


def repro_pairs(repeat: int, warmup: int) -> tuple[dict[str, Any], Path]:
    """``repeat`` alternated pairs of ``dvc repro`` (lineage on, off) in fresh workspaces, after
    ``warmup`` untimed runs (the first run of a sitting reads the venv from disk)."""
    for i in range(warmup):
        wall, _ = repro(workspace(REPO, WORK / f"lineage-warmup-{i}"), True)
        log.info("warm-up dvc repro: %.1f s (not counted)", wall)
    on, off, runs = [], [], []
    for i in range(repeat):
        for enabled in (True, False) if i % 2 == 0 else (False, True):
            ws = workspace(REPO, WORK / f"lineage-{'on' if enabled else 'off'}-{i}")
            wall, output = repro(ws, enabled)
            (on if enabled else off).append(wall)
            if enabled:
                runs = spent(output)
                last = ws
                lineage_ms = sum(r["ms"] for r in runs)
                log.info(
                    "dvc repro with lineage: %.1f s, of which lineage %.0f ms in %d runs", wall, lineage_ms, len(runs)
                )
            else:
                log.info("dvc repro without lineage: %.1f s", wall)
    lineage_s = sum(r["ms"] for r in runs) / 1000
    return {
        "wall_on_s": [round(w, 2) for w in on],
        "wall_off_s": [round(w, 2) for w in off],
        "wall_ratio_on_off": round(statistics.median(on) / statistics.median(off), 4),
        "lineage_s_in_process": round(lineage_s, 3),
        "lineage_share_of_wall": round(lineage_s / on[-1], 5),
        "runs": runs,
        "events": sum(r["events"] for r in runs),
    }, last


def stream(ws: Path, images: int, per_batch: int) -> dict[str, Any]:
    """A stream over ``images`` JPEGs with the champion of ``ws``: each micro-batch's lineage ms."""
    inbox = WORK / "lineage_stream_inbox"
    make_inputs(inbox, images, 256)
    root = WORK / "lineage-stream-data"
    shutil.rmtree(root, ignore_errors=True)
    sets = [
        f"data.root={root}",
        f"score.inbox={inbox}",
        "score.mode=stream",
        "score.stream.available_now=true",
        f"score.stream.max_files_per_trigger={per_batch}",
        "gate.predictions.max_low_confidence=1.0",
    ]
    command = [sys.executable, "-m", "spark_jobs.score", *(f"--set={s}" for s in sets)]
    proc = subprocess.run(command, cwd=ws, env=environment(ws), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"the stream failed:\n{proc.stderr[-4000:]}")
    batches = [r for r in spent(proc.stderr) if r["job"] == "score-stream"]
    ms = sorted(r["ms"] for r in batches)
    manifests = sorted((root / "stream" / "predictions").glob("hour=*/_manifest-*.json"))
    phases = ("read_s", "work_s", "gate_s", "publish_s")  # a micro-batch's own time (total_s counts from the process)
    totals = sorted(1000 * sum(json.loads(m.read_text())["timings"][p] for p in phases) for m in manifests)
    return {
        "images": images,
        "per_batch": per_batch,
        "micro_batches": len(batches),
        "lineage_ms_median": round(statistics.median(ms), 2),
        "lineage_ms_p95": round(ms[int(0.95 * (len(ms) - 1))], 2),
        "lineage_ms_max": round(ms[-1], 2),
        "lineage_ms_first": round(batches[0]["ms"], 2),  # the client's import and creation included
        "micro_batch_ms_median": round(statistics.median(totals), 1) if totals else None,
        "lineage_ms": [round(r["ms"], 2) for r in batches],  # in the micro-batches' order
    }


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--stream-images", type=int, default=600)
    parser.add_argument("--per-batch", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=1, help="untimed dvc repro runs first")
    parser.add_argument("--stream-only", action="store_true", help="the stream again, in the last run's workspace")
    args = parser.parse_args()
    if args.stream_only:
        result = json.loads((REPO / "bench" / "results" / RESULT).read_text())
        ws = WORK / "lineage-on-0"
    else:
        pairs, ws = repro_pairs(args.repeat, args.warmup)
        result = {"machine": {"cores": os.cpu_count(), "python": platform.python_version()}, "dvc_repro": pairs}
    result["stream"] = stream(ws, args.stream_images, args.per_batch)
    result["targets"] = {"dvc_repro_share_max": 0.02, "micro_batch_ms_max": 5.0}
    write_result(RESULT, result)
    log.info("%s", json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
