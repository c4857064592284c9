"""How big a Spark cluster a target needs, from what a real run measured.

Every stage's manifest (or model card) records how many images it processed, its phase
``timings`` (``work_s``: the data-proportional work; ``total_s``: the whole run since its process
started) and how many cores it ran on. From them:

- ``core_s_per_image`` = work seconds x cores / images (the per-core throughput, inverted);
- ``fixed_s`` = total - work seconds (JVM and torch start-up, reading inputs, the gate, the
  publish: what does not shrink with more cores);

and for a target of ``images`` within ``deadline`` seconds, the seed's formula
``cores = images x per-image time / (deadline x per-core throughput)`` with the fixed cost taken
out of the deadline: ``cores = ceil(images x core_s_per_image / (deadline - fixed_s))``, then
executors of ``--cores-per-executor`` cores. Each stage is sized as if it had the whole deadline,
and the pipeline as one (its stages in sequence on one cluster).

    python -m spark_jobs.ml.sizing --images 10000000 --deadline 4h [--cores-per-executor 4]
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from spark_jobs.core.config import DEFAULT_PARAMS, ConfigError, Params, load_config
from spark_jobs.core.manifest import MANIFEST, Manifest, read
from spark_jobs.ml.cards import CARD, TrainedModels, read_card


class SizingParams(Params):
    """What sizing reads of params.yaml: where the runs' outputs are."""

    train: TrainedModels = TrainedModels()


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Measure:
    """One stage of one real run."""

    stage: str
    source: Path  # the manifest or card it was read from
    images: int  # images (rows) the data-proportional work processed
    work_s: float  # seconds of that work
    fixed_s: float  # the rest of the stage: what does not shrink with more cores
    cores: int  # cores it ran on (Spark's default parallelism, or the training ranks)
    caveat: str = ""  # why the figure may overstate the per-image cost

    @property
    def core_s_per_image(self) -> float:
        return self.work_s * self.cores / self.images


def _measure(stage: str, source: Path, images: int, work_s: float, duration_s: float, cores: int) -> Measure:
    return Measure(stage, source, images, work_s, max(duration_s - work_s, 0.0), cores)


def parse_duration(text: str) -> float:
    """``3600``, ``90s``, ``45m``, ``4h`` or ``1d`` as seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"deadline {text!r}: expected a positive number with an optional unit s, m, h or d")
    return float(match.group(1)) * _UNITS[match.group(2) or "s"]


def _manifest(path: Path) -> Manifest | None:
    return read(path.parent) if path.exists() else None


def measures(data_root: Path, models_root: Path) -> list[Measure]:
    """What the last run of each stage under ``data_root`` / ``models_root`` measured (stages
    that have not run, or processed nothing, are left out)."""
    found: list[Measure] = []
    path = data_root / "ingest" / MANIFEST
    if (doc := _manifest(path)) and doc.timings and doc.count("files_seen"):
        t, n = doc.timings, doc.count("files_seen")
        found.append(_measure("ingest", path, n, t.work_s, t.total_s, doc.spark_cores()))
    path = data_root / "features" / MANIFEST
    if (doc := _manifest(path)) and doc.timings and doc.count("rows"):
        t = doc.timings
        found.append(_measure("features", path, doc.count("rows"), t.work_s, t.total_s, doc.spark_cores()))
    for name in ("cnn", "autoencoder"):
        path = models_root / name / CARD
        card = read_card(path.parent) if path.exists() else None
        if card and card.training and card.timings and card.training.train_rows:
            fit = card.training
            rows = fit.train_rows * fit.epochs  # an image seen once per epoch
            # The ranks' own loop is the per-image work; starting them is part of the fixed cost.
            found.append(_measure(f"train@{name}", path, rows, fit.fit_s, card.timings.total_s, fit.world_size))
    # Scoring keeps every run: with runs of several sizes, a line through (images, seconds) splits
    # the per-image cost from the per-run cost (model load, torch import on each worker), which a
    # single small run would count as per-image work.
    paths = sorted((data_root / "predictions").glob(f"run_date=*/run_id=*/{MANIFEST}"))
    runs = [d for d in map(_manifest, paths) if d and d.timings and d.count("scored", "unusable") > 0]
    if runs:
        sizes = [d.count("scored", "unusable") for d in runs]
        work = [d.timings.work_s for d in runs if d.timings]
        biggest = max(range(len(runs)), key=sizes.__getitem__)
        cores = runs[biggest].spark_cores()
        per_image, start = _line(sizes, work)
        caveat = ""
        if per_image is None:  # the biggest run, all of its work counted per image
            per_image, start = work[biggest] / sizes[biggest], 0.0
            caveat = "its runs' sizes do not separate the per-run from the per-image cost"
        found.append(
            Measure(
                "score",
                data_root / "predictions" / f"({len(runs)} runs, up to {sizes[biggest]} images)",
                sizes[biggest],
                per_image * sizes[biggest],
                (runs[biggest].timings.total_s if runs[biggest].timings else 0.0) - work[biggest] + start,
                cores,
                caveat,
            )
        )
    return [
        m if m.caveat or m.images >= SMALL_RUN else replace(m, caveat=f"only {m.images} images measured") for m in found
    ]


SMALL_RUN = 1000  # below this many images, start-up inside the timed work weighs on the figure


def _line(x: list[int], y: list[float]) -> tuple[float | None, float]:
    """Least-squares slope and intercept of ``y`` over ``x``; no slope without two sizes or when
    the points do not rise."""
    if len(set(x)) < 2:
        return None, 0.0
    slope, intercept = np.polyfit(x, y, 1)
    if slope <= 0:
        return None, 0.0
    return float(slope), max(float(intercept), 0.0)


@dataclass(frozen=True)
class Need:
    stage: str
    fixed_s: float
    hours: float  # how long the target would take on one core (plus the fixed cost)
    cores: int | None  # None: the fixed cost alone exceeds the deadline
    executors: int | None


def plan(found: list[Measure], images: int, deadline_s: float, cores_per_executor: int) -> list[Need]:
    """Cores and executors per stage, then for the whole pipeline (``"pipeline"``)."""

    def need(stage: str, core_s: float, fixed: float) -> Need:
        one_core_h = (images * core_s + fixed) / 3600
        if deadline_s <= fixed:
            return Need(stage, fixed, one_core_h, None, None)
        cores = max(1, math.ceil(images * core_s / (deadline_s - fixed)))
        return Need(stage, fixed, one_core_h, cores, math.ceil(cores / cores_per_executor))

    needs = [need(m.stage, m.core_s_per_image, m.fixed_s) for m in found]
    needs.append(need("pipeline", sum(m.core_s_per_image for m in found), sum(m.fixed_s for m in found)))
    return needs


def report(found: list[Measure], needs: list[Need], images: int, deadline_s: float, cores_per_executor: int) -> str:
    lines = [
        f"Target: {images:,} images within {deadline_s / 3600:.2f} h; executors of {cores_per_executor} cores.",
        "",
        f"{'stage':<18}{'measured on':>12}{'images/s/core':>15}{'fixed s':>9}{'1-core h':>10}"
        f"{'cores':>8}{'executors':>11}",
    ]
    for m, n in zip([*found, None], needs, strict=True):
        measured = f"{m.images:,}" if m else ""
        rate = f"{1 / m.core_s_per_image:,.1f}" if m else ""
        cores = str(n.cores) if n.cores is not None else "never"
        executors = str(n.executors) if n.executors is not None else "-"
        lines.append(f"{n.stage:<18}{measured:>12}{rate:>15}{n.fixed_s:>9.0f}{n.hours:>10.2f}{cores:>8}{executors:>11}")
    caveats = [f"  {m.stage}: {m.caveat}" for m in found if m.caveat]
    if caveats:
        lines += ["", "Overstated (start-up counted as per-image work; measure a bigger run):", *caveats]
    lines += [
        "",
        "cores = ceil(images x core-seconds per image / (deadline - fixed s)); 'never': the fixed cost",
        "alone exceeds the deadline. Each stage is sized as if it had the whole deadline; 'pipeline'",
        "runs them one after another on one cluster. Measured by: " + ", ".join(f"{m.stage}={m.source}" for m in found),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m spark_jobs.ml.sizing",
        description="Executors and cores each stage needs for a data volume and a deadline, "
        "from a real run's manifests.",
    )
    parser.add_argument("--images", type=int, required=True, help="images to process")
    parser.add_argument("--deadline", required=True, help="e.g. 3600, 90m, 4h")
    parser.add_argument("--cores-per-executor", type=int, default=4)
    parser.add_argument("--params", default=str(DEFAULT_PARAMS), help="params.yaml of the run (where its outputs are)")
    args = parser.parse_args(argv)
    try:
        deadline = parse_duration(args.deadline)
        if args.images <= 0 or args.cores_per_executor <= 0:
            raise ValueError("--images and --cores-per-executor must be positive")
        cfg = load_config(args.params, [], SizingParams)
    except (ValueError, ConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    found = measures(Path(cfg.data.root), Path(cfg.train.output))
    if not found:
        where = f"{cfg.data.root} or {cfg.train.output}"
        print(f"error: no stage manifests under {where}: run the pipeline first", file=sys.stderr)
        return 2
    needs = plan(found, args.images, deadline, args.cores_per_executor)
    print(report(found, needs, args.images, deadline, args.cores_per_executor))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
