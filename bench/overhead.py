"""Fixed cost per stage: what each stage costs beyond its work, against a trivial cold Spark process
measured in the same run.

Every figure comes from cold processes, as ``dvc repro``, Airflow and a scheduled scoring run
start them; each is a ratio to the trivial Spark process (``SparkSession.builder.master("local[2]")
.getOrCreate().range(10).count()`` in a fresh ``python``), the median of ``--repeat`` runs, because
this machine's absolute times move by a factor of several from hour to hour:

- ``dvc repro`` of the bundled sample in a fresh workspace (the repository's tracked files copied,
  ``git init`` and ``dvc init``, as a clone), and the quality it reached (``reports/metrics.json``);
- each stage of ``dvc.yaml`` again as a cold process in that workspace: its wall time, its work
  (``timings.work_s`` of its manifest or card; the pixel/training part that grows with the data)
  and its fixed cost (wall - work);
- scoring the sample's 120 new images cold (``python -m spark_jobs.score --set data.root=<fresh>``);
- scoring ``--images`` 256x256 JPEGs (those of ``ingest_throughput.py``) with the champion cnn:
  its fixed cost (wall - work).

    python bench/overhead.py [--repeat 3] [--images 16000] [--stages score] [--repo PATH]

``--repo`` measures another checkout (e.g. ``git worktree add /tmp/before <commit>``) with this
script, its venv and its inputs: a before/after pair. Writes ``bench/results/overhead_<label>.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
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

log = logging.getLogger("bench")
BIN = Path(sys.executable).parent
TRIVIAL = (
    "from pyspark.sql import SparkSession\nSparkSession.builder.master('local[2]').getOrCreate().range(10).count()\n"
)
# dvc.yaml's stages in the order dvc repro runs them, each with the folder its record lands in.
STAGES = {
    "sample": ("python -m spark_jobs.sample", "data/sample/_manifest.json"),
    "ingest": ("python -m spark_jobs.ingest", "data/ingest/_manifest.json"),
    "backbone": ("python -m spark_jobs.backbone", "models/backbone/card.json"),
    "features": ("python -m spark_jobs.features", "data/features/_manifest.json"),
    "train@mllib": ("python -m spark_jobs.train --set train.model=mllib", "models/mllib/card.json"),
    "train@cnn": ("python -m spark_jobs.train --set train.model=cnn", "models/cnn/card.json"),
    "train@autoencoder": ("python -m spark_jobs.train --set train.model=autoencoder", "models/autoencoder/card.json"),
    "evaluate": ("python -m spark_jobs.evaluate", "reports/_manifest.json"),
    "score": ("python -m spark_jobs.score", None),  # on a fresh data.root: every image is new
}


def environment(cwd: Path) -> dict[str, str]:
    """This venv's tools; the workspace's own ``spark_jobs`` ahead of the venv's editable install
    (driver and Python workers alike), so ``--repo`` measures that checkout's code."""
    return {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYSPARK_PYTHON": sys.executable,
        "PYTHONPATH": str(cwd),
    }


def timed(cmd: list[str] | str, cwd: Path) -> float:
    """Wall seconds of one cold process (it must succeed)."""
    start = time.perf_counter()
    proc = subprocess.run(
        cmd, cwd=cwd, env=environment(cwd), shell=isinstance(cmd, str), capture_output=True, text=True
    )
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{cmd} failed ({proc.returncode}):\n{proc.stdout[-2000:]}{proc.stderr[-4000:]}")
    return seconds


def trivial_spark(cwd: Path) -> float:
    return timed([sys.executable, "-c", TRIVIAL], cwd)


def workspace(repo: Path, target: Path) -> Path:
    """The repository's tracked files (working-tree content) in a fresh git + DVC workspace: a clone."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=repo, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        source = repo / name
        if name and source.is_file() and not name.startswith(("data/", "models/", "reports/", "bench/results")):
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=target, check=True)
    subprocess.run([*git, "add", "-A"], cwd=target, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "clone"], cwd=target, check=True)
    # The clone's dvc.lock would make `dvc repro` think nothing changed: start from scratch.
    (target / "dvc.lock").unlink(missing_ok=True)
    return target


def work_seconds(record: dict[str, Any]) -> float | None:
    """The work part of a stage's manifest or card: for a torch model the ranks' own training loop
    (``training.fit_s``: starting the ranks is fixed cost), else ``timings.work_s``, or the fields
    an earlier version recorded (for a before/after pair with ``--repo``)."""
    timings = record.get("timings") or {}
    if "fit_s" in record.get("training", {}):
        return float(record["training"]["fit_s"])
    if "work_s" in timings:
        return float(timings["work_s"])
    for key in ("decode_and_write_s", "decode_and_score_s"):
        if key in timings:
            return float(timings[key])
    if "extract_s" in timings:
        return float(timings["extract_s"] + timings.get("transform_and_write_s", 0.0))
    if "training_s" in record:  # an earlier model card: its whole training
        return float(record["training_s"])
    return None


def record_of(ws: Path, stage: str, root: Path | None = None) -> dict[str, Any] | None:
    where = STAGES[stage][1]
    if where is None:
        runs = sorted((root or ws / "data").glob("predictions/run_date=*/run_id=*/_manifest.json"))
        return json.loads(runs[-1].read_text()) if runs else None
    path = ws / where
    return json.loads(path.read_text()) if path.exists() else None


def per_stage(ws: Path, trivial: float, repeat: int, only: set[str] | None = None) -> dict[str, Any]:
    """Each stage (of ``only``, if given) again as a cold process (``repeat`` times; medians):
    wall, work, fixed."""
    out: dict[str, Any] = {}
    for stage, (cmd, _) in STAGES.items():
        if only and stage not in only:
            continue
        walls, works = [], []
        for i in range(repeat):
            root = None
            if stage == "score":
                root = WORK / f"overhead-score-{i}"
                shutil.rmtree(root, ignore_errors=True)
                cmd_i = f"{cmd} --set data.root={root}"
            else:
                cmd_i = cmd
            walls.append(timed(cmd_i, ws))
            record = record_of(ws, stage, root)
            works.append(work_seconds(record) if record else None)
        wall = statistics.median(walls)
        work = statistics.median(w for w in works if w is not None) if any(w is not None for w in works) else None
        fixed = None if work is None else wall - work
        out[stage] = {
            "wall_s": round(wall, 2),
            "work_s": None if work is None else round(work, 2),
            "fixed_s": None if fixed is None else round(fixed, 2),
            "fixed_vs_trivial": None if fixed is None else round(fixed / trivial, 2),
            "walls_s": [round(w, 2) for w in walls],
        }
        log.info("%s: wall %.1f s, work %s s, fixed %s", stage, wall, work, out[stage]["fixed_vs_trivial"])
    return out


def quality(ws: Path) -> dict[str, Any]:
    doc = json.loads((ws / "reports" / "evaluation.json").read_text())["models"]
    return {
        "cnn_accuracy": doc.get("cnn", {}).get("accuracy"),
        "mllib_accuracy": doc.get("mllib", {}).get("accuracy"),
        "autoencoder_auroc": doc.get("autoencoder", {}).get("auroc"),
    }


def score_many(ws: Path, images: int, repeat: int, trivial: float) -> dict[str, Any]:
    """Cold scoring of ``images`` JPEGs (256x256) with the workspace's champion."""
    folder = WORK / "overhead_jpegs"
    count, size = make_inputs(folder, images, 256)
    walls, works = [], []
    for i in range(repeat):
        root = WORK / f"overhead-many-{i}"
        shutil.rmtree(root, ignore_errors=True)
        walls.append(timed(f"python -m spark_jobs.score --set data.root={root} --set score.inbox={folder}", ws))
        record = record_of(ws, "score", root)
        works.append(work_seconds(record))
        shutil.rmtree(root, ignore_errors=True)
    wall, work = statistics.median(walls), statistics.median(works)
    return {
        "images": count,
        "bytes": size,
        "wall_s": round(wall, 2),
        "work_s": round(work, 2),
        "fixed_s": round(wall - work, 2),
        "fixed_vs_trivial": round((wall - work) / trivial, 2),
        "walls_s": [round(w, 2) for w in walls],
        "works_s": [round(w, 2) for w in works],
    }


def cpu_capability() -> str:
    import torch

    return torch.backends.cpu.get_cpu_capability()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--images", type=int, default=16000, help="JPEGs for the large scoring run (0: skip it)")
    parser.add_argument("--repo", type=Path, default=REPO, help="the checkout to measure (default: this one)")
    parser.add_argument(
        "--stages", default="", help=f"time only these stages again (comma-separated; of {list(STAGES)})"
    )
    parser.add_argument("--label", default=None, help="name of the result file (default: the repo's commit)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    repo = args.repo.resolve()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True).stdout
    label = args.label or commit.strip()
    ws = workspace(repo, WORK / f"overhead-ws-{label}")

    trivial_runs = [trivial_spark(ws) for _ in range(args.repeat)]
    trivial = statistics.median(trivial_runs)
    log.info("trivial cold Spark process: %.1f s (median of %s)", trivial, trivial_runs)
    repro = timed([str(BIN / "dvc"), "repro", "-q"], ws)
    log.info("dvc repro: %.1f s = %.1fx trivial", repro, repro / trivial)
    reached = quality(ws)
    stages = per_stage(ws, trivial, args.repeat, set(filter(None, args.stages.split(","))))
    score_120 = stages["score"]["wall_s"]
    many = score_many(ws, args.images, max(1, args.repeat - 1), trivial) if args.images else None
    result = {
        "command": "python bench/overhead.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "code": {"repo": str(repo), "commit": commit.strip()},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            # The float path torch's kernels take: the autoencoder's AUROC depends on it (bench/README.md).
            "torch_cpu_capability": cpu_capability(),
        },
        "trivial_spark_s": round(trivial, 2),
        "trivial_spark_runs_s": [round(t, 2) for t in trivial_runs],
        "dvc_repro": {"wall_s": round(repro, 1), "vs_trivial": round(repro / trivial, 2), "quality": reached},
        "score_120_cold": {"wall_s": score_120, "vs_trivial": round(score_120 / trivial, 2)},
        "score_many": many,
        "stages": stages,
        "worst_fixed_vs_trivial": max((s["fixed_vs_trivial"] or 0 for s in stages.values()), default=None),
    }
    write_result(f"overhead_{label}.json", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
