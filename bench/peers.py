"""Scoring throughput against the engines users choose among: the project's score stage, a plain
single-process loop, bare Spark, Daft and Ray Data, on the same generated JPEGs with the same
trained cnn, each engine in a process of its own, measured one after the other in one run.

Two workloads (``--workload``): ``digits``, JPEGs of ``--source-size`` px drawn from the digits;
``photos``, camera-sized JPEGs of 1,000-4,000 px made from the photographs scikit-image and
scikit-learn ship (:mod:`photos`). Every engine decodes as its documentation shows; where it has a
cheaper decode it uses it: the project, the plain loop, bare Spark and Ray Data decode with the
project's ``images.decode`` (libjpeg's DCT scaling, never below twice the model's side). Daft's
``decode_image`` has no reduced-size decode (0.7.26: only ``mode`` and ``on_error``), so Daft
decodes at full size and resizes; ``daft-draft`` (a photo engine) is Daft given the project's
decode in its batch UDF, to show what the decode alone is worth.

- ``work``: the engine's own timed section: list, read, decode, model, write the predictions to
  Parquet. For the project it is its manifest's ``read`` + ``work`` phases (its gate apart).
- ``wall``: the whole process, interpreter and JVM start-up included; peak RSS is the summed RSS
  of the process tree (driver, JVM, Python workers, Ray's workers), sampled every 50 ms, with its
  split by process at the peak; PSS (a page shared by n processes counted 1/n in each, as a forked
  worker shares its daemon's torch) once a second, and both over the run.

The engines:

- ``project``: ``python -m spark_jobs.score`` (cold, as the scheduler runs it).
- ``project-no-drift``: the same with ``gate.predictions.drift: off`` (no embedding column, no
  sample, no domain classifier): what the drift test costs (``drift_cost``), asked for by name.
- ``project-shadow``: the same with ``score.shadow: --shadow`` (a second model on the same
  decoded pixels, its rows in the shadow table): what a shadow costs, asked for by name.
- ``plain``: one Python process: the project's decode (``spark_jobs.imaging.images.decode``), torch on
  every core, batches of ``--batch-size``, one pyarrow write.
- ``spark``: bare Spark 4: ``binaryFile`` + ``mapInPandas``, the project's decode, the model loaded
  once per Python worker, default settings.
- ``daft``: Daft's native runner: ``from_glob_path`` -> ``download`` -> ``decode`` -> ``resize`` ->
  a batch class UDF holding the model.
- ``ray``: Ray Data: ``read_binary_files`` + an actor pool ``map_batches`` (the project's decode).

Daft and Ray Data run in the benchmark's own venv (``make bench-venv``: ``.bench-venv`` from
bench/requirements.lock, never the project's), given by ``--bench-python``; without it they are
skipped and the result says so.

    python bench/peers.py [--workload digits|photos] [--images 16000 [64000 ...]] [--source-size 256]
        [--batch-size 64] [--engines project,plain,spark,daft,ray] [--bench-python .bench-venv/bin/python]
        [--model models/champion/classifier] [--set KEY=VALUE ...] [--repeat 1] [--tag NAME]

``--set`` passes a setting to the project's runs (a memory knob, for instance
``--set spark.driver_memory=4g`` for the previous heap).

What the drift test costs (one sitting, the two in turn, medians of three):

    python bench/peers.py --engines project-no-drift,project --repeat 3 --tag drift

What a shadow model costs (the mllib model beside the cnn champion):

    python bench/peers.py --engines project,project-shadow --repeat 3 --tag shadow

Writes ``bench/results/peers_<N>x<source>px.json`` (``peers_<N>xphotos.json``) for each size and,
for the whole run, ``peers_run_<N1>_<N2>...x<source>px.json``: every size's table and the
project's figures against the workload's targets (:data:`TARGETS`: work and wall ratios, memory,
scaling from the smallest to the largest size), all from this one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
WORK = REPO / "bench" / "work"
RESULTS = REPO / "bench" / "results"
ENGINES = ("project", "plain", "spark", "daft", "ray")
NO_DRIFT = "project-no-drift"  # not a default engine: --engines project,project-no-drift
WITH_SHADOW = "project-shadow"  # nor this: --engines project,project-shadow [--shadow models/mllib]
PEER_VENV = {"daft", "daft-draft", "ray"}  # engines that run in the benchmark's venv
# The photo workload's engines: Daft also with the project's reduced-size decode (``daft-draft``).
PHOTO_ENGINES = ("project", "plain", "spark", "daft", "daft-draft", "ray")


# -- the engines, each run as ``peers.py --child <engine>`` in a process of its own ------------------


def _model(model_dir: Path) -> tuple[Any, Any]:
    """The cnn (through the project's safe loader) and the ingest settings it was trained with."""
    from spark_jobs.ml import cards
    from spark_jobs.ml.inference import TorchModel

    card = cards.read_card(model_dir)
    return TorchModel.from_card(model_dir, card).load(), card.ingest_settings


def _decoded(data: bytes, cfg: Any) -> Any:
    from spark_jobs.imaging import images

    d = images.decode(data, cfg)
    return images.pixels_to_array(d.pixels, d.height, d.width)


def _classify(net: Any, pixels: Any) -> tuple[list[int], list[float]]:
    import torch

    from spark_jobs.ml import models

    with torch.inference_mode():
        probability, label = torch.softmax(net(models.to_tensor(pixels)), dim=1).max(1)
    return label.tolist(), probability.tolist()


def child_plain(folder: Path, model_dir: Path, batch: int, out: Path) -> int:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    net, cfg = _model(model_dir)
    files = sorted(str(p) for p in folder.rglob("*.jpg"))
    labels, probabilities = [], []
    for start in range(0, len(files), batch):
        pixels = np.stack([_decoded(Path(f).read_bytes(), cfg) for f in files[start : start + batch]])
        label, probability = _classify(net, pixels)
        labels += label
        probabilities += probability
    pq.write_table(pa.table({"path": files, "label": labels, "probability": probabilities}), out / "part-0.parquet")
    return len(files)


def child_spark(folder: Path, model_dir: Path, batch: int, out: Path) -> int:
    import numpy as np
    import pandas as pd
    from pyspark.sql import SparkSession

    spark = SparkSession.builder.master("local[*]").appName("bare-spark").getOrCreate()
    loaded: dict[str, Any] = {}

    def predict(frames: Any) -> Any:
        import torch

        torch.set_num_threads(1)
        if "net" not in loaded:  # once per Python worker
            loaded["net"], loaded["cfg"] = _model(model_dir)
        for frame in frames:
            for start in range(0, len(frame), batch):
                part = frame.iloc[start : start + batch]
                pixels = np.stack([_decoded(bytes(c), loaded["cfg"]) for c in part["content"]])
                label, probability = _classify(loaded["net"], pixels)
                yield pd.DataFrame({"path": part["path"].values, "label": label, "probability": probability})

    files = spark.read.format("binaryFile").option("recursiveFileLookup", "true").option("pathGlobFilter", "*.jpg")
    predicted = files.load(str(folder)).select("path", "content")
    predicted.mapInPandas(predict, "path string, label long, probability double").write.parquet(str(out / "spark"))
    rows = spark.read.parquet(str(out / "spark")).count()
    spark.stop()
    return rows


def child_daft(folder: Path, model_dir: Path, batch: int, out: Path) -> int:
    import daft
    import numpy as np
    from daft import col
    from daft.functions import decode_image, download, resize

    _, cfg = _model(model_dir)
    side = cfg.image_size

    @daft.cls
    class Classify:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.net, _ = _model(model_dir)

        @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=batch)
        def __call__(self, pixels: daft.Series) -> Any:
            stacked = np.stack([np.asarray(p, dtype=np.uint8) for p in pixels.to_pylist()])
            return _classify(self.net, stacked)[0]

    frame = daft.from_glob_path(str(folder / "**" / "*.jpg"))
    frame = frame.with_column("image", resize(decode_image(download(col("path")), mode="RGB"), side, side))
    frame = frame.with_column("label", Classify()(col("image"))).select("path", "label")
    frame.write_parquet(str(out / "daft"))
    return daft.read_parquet(str(out / "daft")).count_rows()


def child_daft_draft(folder: Path, model_dir: Path, batch: int, out: Path) -> int:
    """Daft with the reduced-size decode Daft itself lacks: its own listing and download, then a
    batch class UDF that decodes each file's bytes with the project's decode (libjpeg's DCT scaling,
    as the project, the plain loop, bare Spark and Ray Data here) and runs the model."""
    import daft
    import numpy as np
    from daft import col
    from daft.functions import download

    @daft.cls
    class DecodeClassify:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.net, self.cfg = _model(model_dir)

        @daft.method.batch(return_dtype=daft.DataType.int64(), batch_size=batch)
        def __call__(self, data: daft.Series) -> Any:
            pixels = np.stack([_decoded(b, self.cfg) for b in data.to_pylist()])
            return _classify(self.net, pixels)[0]

    frame = daft.from_glob_path(str(folder / "**" / "*.jpg"))
    frame = frame.with_column("label", DecodeClassify()(download(col("path")))).select("path", "label")
    frame.write_parquet(str(out / "daft"))
    return daft.read_parquet(str(out / "daft")).count_rows()


def child_ray(folder: Path, model_dir: Path, batch: int, out: Path) -> int:
    import numpy as np
    import ray

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)

    class Classify:
        def __init__(self) -> None:
            import torch

            torch.set_num_threads(1)
            self.net, self.cfg = _model(model_dir)

        def __call__(self, rows: dict[str, Any]) -> dict[str, Any]:
            pixels = np.stack([_decoded(bytes(b), self.cfg) for b in rows["bytes"]])
            label, probability = _classify(self.net, pixels)
            return {"path": rows["path"], "label": np.array(label), "probability": np.array(probability)}

    # One actor per core, each holding the model; their CPU shares leave room for the read tasks
    # (an actor per full CPU takes every CPU and the reads never run).
    cpus = os.cpu_count() or 1
    files = ray.data.read_binary_files(
        str(folder), include_paths=True, file_extensions=["jpg"], ray_remote_args={"num_cpus": 0.25}
    )
    predicted = files.map_batches(
        Classify, batch_size=batch, concurrency=cpus, num_cpus=(cpus - 0.25) / cpus, batch_format="numpy"
    )
    predicted.write_parquet(str(out / "ray"))
    rows = ray.data.read_parquet(str(out / "ray")).count()
    ray.shutdown()
    return rows


CHILDREN = {
    "plain": child_plain, "spark": child_spark, "daft": child_daft, "daft-draft": child_daft_draft, "ray": child_ray,
}  # fmt: skip


def run_child(engine: str, folder: Path, model_dir: Path, batch: int, out: Path) -> None:
    """In the child: time the engine's work and print it as one JSON line."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    started = time.perf_counter()
    rows = CHILDREN[engine](folder, model_dir, batch, out)
    print(json.dumps({"work_s": time.perf_counter() - started, "rows": rows}), flush=True)


# -- the parent: each engine in its own process, wall and peak memory measured from outside --------


def role(proc: Any, root_pid: int) -> str | None:
    """What a process of an engine's tree is, for the memory breakdown: ``driver`` (the process the
    benchmark started), ``jvm``, ``python`` (Spark's daemon and workers, Daft's) or its name (Ray
    names its workers). None for a JVM's child between its fork and its exec (named after the
    forking thread, "Executor task l..."): it shares the JVM's memory, which is counted once."""
    if proc.pid == root_pid:
        return "driver"
    name = proc.name()
    if name == "java":
        return "jvm"
    if Path(proc.exe()).name == "java":
        return None
    return "python" if name.startswith("python") else name


def tree_memory(root: Any, root_pid: int, pss: bool = False) -> dict[str, float]:
    """MiB of each :func:`role` of ``root``'s process tree: RSS, or with ``pss`` the proportional
    set size (a page shared by n processes, as a forked Python worker shares its daemon's torch,
    counts 1/n in each: the tree's real footprint; slower to read)."""
    import psutil

    by_role: dict[str, float] = {}
    for p in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error, OSError):
            r = role(p, root_pid)
            if r is not None:
                mib = (p.memory_full_info().pss if pss else p.memory_info().rss) / 2**20
                by_role[r] = by_role.get(r, 0) + mib
    return by_role


def measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str, dict[str, Any]]:
    """``(wall seconds, peak MiB of the process tree's summed RSS, stdout, memory)`` of a command,
    sampled every 50 ms; ``memory``: the RSS by :func:`role` at the peak, each role's own peak, the
    tree's peak PSS (sampled once a second) and its RSS and PSS once a second (the run's curve)."""
    import psutil

    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak, pss_peak, done = 0.0, 0.0, threading.Event()
    at_peak: dict[str, float] = {}
    role_peak: dict[str, float] = {}
    curve: list[tuple[float, int, int]] = []

    def sample() -> None:
        nonlocal peak, pss_peak, at_peak
        root = psutil.Process(proc.pid)
        while not done.is_set():
            by_role = tree_memory(root, proc.pid)
            total = sum(by_role.values())
            if total > peak:
                peak, at_peak = total, by_role
            for r, mib in by_role.items():
                role_peak[r] = max(role_peak.get(r, 0.0), mib)
            now = time.perf_counter() - started
            if not curve or now - curve[-1][0] >= 1.0:
                pss = sum(tree_memory(root, proc.pid, pss=True).values())
                pss_peak = max(pss_peak, pss)
                curve.append((round(now, 1), round(total), round(pss)))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stdout, stderr = proc.communicate()
    wall = time.perf_counter() - started
    done.set()
    sampler.join()
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd[:4])} ... failed (exit {proc.returncode}):\n{stderr[-3000:]}")
    memory = {
        "at_peak_mib": {r: round(m) for r, m in sorted(at_peak.items())},
        "role_peak_mib": {r: round(m) for r, m in sorted(role_peak.items())},
        "peak_pss_mib": round(pss_peak),
        "curve_s_rss_pss_mib": curve,
    }
    return wall, peak, stdout, memory


def run_engine(
    engine: str,
    folder: Path,
    model_dir: Path,
    batch: int,
    python: str,
    shadow: Path | None = None,
    settings: tuple[str, ...] = (),
) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYSPARK_PYTHON": sys.executable}
    out = WORK / f"peers-{engine}"
    if engine in ("project", NO_DRIFT, WITH_SHADOW):
        shutil.rmtree(out, ignore_errors=True)
        cmd = [
            sys.executable, "-m", "spark_jobs.score", f"--set=data.root={out}", f"--set=score.inbox={folder}",
            f"--set=score.model={model_dir}", f"--set=score.batch_size={batch}",
            "--set=gate.predictions.max_low_confidence=1.0",
            *(["--set=gate.predictions.drift=off"] if engine == NO_DRIFT else []),
            *([f"--set=score.shadow={shadow}"] if engine == WITH_SHADOW else []),
            *(f"--set={s}" for s in settings),
        ]  # fmt: skip
        wall, peak, _, memory = measured(cmd, env, REPO)
        (published,) = (out / "predictions").glob("run_date=*/run_id=*")
        doc = json.loads((published / "_manifest.json").read_text())
        timings = doc["timings"]
        work, rows = timings["read_s"] + timings["work_s"], doc["counts"]["scored"]
        extra = {"gate_s": timings["gate_s"], "startup_s": timings["startup_s"]}
    else:
        cmd = [python, __file__, "--child", engine, str(folder), str(model_dir), str(batch), str(out)]
        wall, peak, stdout, memory = measured(cmd, env, WORK)
        reported = json.loads(stdout.strip().splitlines()[-1])
        work, rows, extra = reported["work_s"], reported["rows"], {}
    shutil.rmtree(out, ignore_errors=True)
    figures = {"work_s": round(work, 2), "wall_s": round(wall, 2), "rows": rows, "peak_rss_mib": round(peak, 1)}
    return figures | extra | {"memory": memory}


def repeated(args: argparse.Namespace, folder: Path, model_dir: Path, images: int) -> dict[str, dict[str, Any]]:
    """Each engine ``args.repeat`` times, the engines in turn within each round (so a slow hour
    weighs on all of them): each figure's median, and every run's work and wall."""
    import statistics

    measured_runs: dict[str, list[dict[str, Any]]] = {}
    skipped: dict[str, dict[str, Any]] = {}
    for _ in range(args.repeat):
        for engine in args.engines.split(","):
            python = args.bench_python if engine in PEER_VENV else sys.executable
            if not Path(python).exists():
                skipped[engine] = {"skipped": f"{python} not found: make bench-venv"}
                continue
            figures = run_engine(
                engine, folder, model_dir, args.batch_size, python, args.shadow.resolve(), tuple(args.set)
            )
            measured_runs.setdefault(engine, []).append(figures)
            memory = figures["memory"]
            shown = {k: v for k, v in figures.items() if k != "memory"}
            shown |= {"pss": memory["peak_pss_mib"], "at_peak": memory["at_peak_mib"]}
            print(images, engine, json.dumps(shown), flush=True)
    results: dict[str, dict[str, Any]] = dict(skipped)
    for engine, done in measured_runs.items():
        results[engine] = {k: statistics.median(r[k] for r in done) for k in done[0] if k not in ("rows", "memory")}
        results[engine]["rows"] = done[0]["rows"]
        # The memory breakdown of the run whose peak is the median one.
        typical = min(done, key=lambda r: abs(r["peak_rss_mib"] - results[engine]["peak_rss_mib"]))
        results[engine]["memory"] = typical["memory"]
        if len(done) > 1:
            results[engine] |= {"work_runs": [r["work_s"] for r in done], "wall_runs": [r["wall_s"] for r in done]}
    return results


def table(results: dict[str, dict[str, Any]], images: int) -> dict[str, dict[str, Any]]:
    """Images/s and ratios to the plain loop for each engine that ran."""
    plain = results.get("plain")
    for figures in results.values():
        if "work_s" not in figures:
            continue
        figures["work_img_s"] = round(images / figures["work_s"], 1)
        figures["wall_img_s"] = round(images / figures["wall_s"], 1)
        if plain and "work_s" in plain:
            figures["work_vs_plain"] = round(plain["work_s"] / figures["work_s"], 2)
            figures["wall_vs_plain"] = round(plain["wall_s"] / figures["wall_s"], 2)
    return results


# The project's score stage's targets on this kind of machine, per workload: (figure, bound, "min"
# or "max"), each read from the sizes measured in the same run. ``digits``: the 256-px JPEGs (the
# throughput issue's, with the memory issue's peak RSS and its wall against Daft raised to 1.25);
# ``photos``: camera-sized JPEGs (the memory issue's).
TARGETS = {
    "digits": {
        "work_vs_plain_at_smallest": (1.3, "min"),
        "wall_vs_plain_at_largest": (1.0, "min"),
        "wall_vs_daft_at_largest": (1.25, "min"),
        "work_ratio_smallest_to_largest": (4.2, "max"),
        "peak_rss_ratio_smallest_to_largest": (1.2, "max"),
        "peak_rss_mib_at_largest": (1500, "max"),
        "drift_work_cost_at_largest": (0.10, "max"),  # the drift issue's: the work phase with it / without - 1
    },
    "photos": {
        "wall_vs_daft_at_largest": (1.5, "min"),
        "wall_vs_plain_at_largest": (1.0, "min"),
        "peak_rss_vs_daft_at_largest": (2.0, "max"),  # the project's peak RSS / Daft's
        "work_ratio_smallest_to_largest": (4.2, "max"),
        "peak_rss_ratio_smallest_to_largest": (1.2, "max"),
    },
}


def figures_of(runs: dict[int, dict[str, dict[str, Any]]]) -> dict[str, float]:
    """Every target figure the engines of ``runs`` measured, from its smallest and largest size."""
    small, large = min(runs), max(runs)
    project_s, project_l = runs[small].get("project", {}), runs[large].get("project", {})
    figures: dict[str, float] = {}
    if "work_vs_plain" in project_s:
        figures["work_vs_plain_at_smallest"] = project_s["work_vs_plain"]
    if "wall_vs_plain" in project_l:
        figures["wall_vs_plain_at_largest"] = project_l["wall_vs_plain"]
    if "peak_rss_mib" in project_l:
        figures["peak_rss_mib_at_largest"] = project_l["peak_rss_mib"]
    daft = runs[large].get("daft", {})
    if "wall_s" in project_l and "wall_s" in daft:
        figures["wall_vs_daft_at_largest"] = round(daft["wall_s"] / project_l["wall_s"], 2)
        figures["peak_rss_vs_daft_at_largest"] = round(project_l["peak_rss_mib"] / daft["peak_rss_mib"], 2)
    if small != large and "work_s" in project_s and "work_s" in project_l:
        figures["work_ratio_smallest_to_largest"] = round(project_l["work_s"] / project_s["work_s"], 2)
        figures["peak_rss_ratio_smallest_to_largest"] = round(project_l["peak_rss_mib"] / project_s["peak_rss_mib"], 2)
    off = runs[large].get(NO_DRIFT, {})
    if "work_s" in project_l and "work_s" in off:
        figures["drift_work_cost_at_largest"] = round(project_l["work_s"] / off["work_s"] - 1, 3)
    return figures


def targets(runs: dict[int, dict[str, dict[str, Any]]], workload: str = "digits") -> dict[str, Any]:
    """The project's figures against the ``workload``'s :data:`TARGETS`, from the smallest and
    largest size of this run (a figure whose engines did not run is left out)."""
    bounds = TARGETS[workload]
    return {
        name: {"measured": value, "bound": bounds[name][0], "kind": bounds[name][1],
               "met": value >= bounds[name][0] if bounds[name][1] == "min" else value <= bounds[name][0]}
        for name, value in figures_of(runs).items() if name in bounds
    }  # fmt: skip


def inputs(workload: str, images: int, source_size: int) -> tuple[Path, str, int, int]:
    """``(folder, label of the results' names, files, bytes)`` of a workload's ``images`` files,
    made once (``bench/work``) and reused."""
    if workload == "photos":
        from photos import make_photos

        folder = WORK / f"photos_{images}"
        return folder, "photos", *make_photos(folder, images)
    from ingest_throughput import make_inputs

    folder = WORK / f"peers_jpegs_{images}"
    return folder, f"{source_size}px", *make_inputs(folder, images, source_size)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[16000], help="one or more input sizes")
    parser.add_argument("--source-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64, help="images per forward pass, every engine")
    parser.add_argument(
        "--workload",
        choices=sorted(TARGETS),
        default="digits",
        help="digits: --source-size px JPEGs of digits; photos: camera-sized JPEGs (bench/photos.py)",
    )
    parser.add_argument("--engines", help=f"default: {','.join(ENGINES)}; photos: {','.join(PHOTO_ENGINES)}")
    parser.add_argument("--bench-python", default=str(REPO / ".bench-venv" / "bin" / "python"))
    parser.add_argument("--model", type=Path, default=REPO / "models" / "champion" / "classifier")
    parser.add_argument("--shadow", type=Path, default=REPO / "models" / "mllib", help="project-shadow's shadow model")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a params.yaml setting for the project's runs (a memory knob: spark.driver_memory=1g)",
    )
    parser.add_argument("--repeat", type=int, default=1, help="runs of each engine, in turn; medians reported")
    parser.add_argument("--tag", default="", help="results go to peers_<tag>_*.json (the committed ones stay)")
    args = parser.parse_args(argv)
    args.engines = args.engines or ",".join(PHOTO_ENGINES if args.workload == "photos" else ENGINES)
    tag = f"_{args.tag}" if args.tag else ""
    sys.path[:0] = [str(REPO), str(REPO / "bench")]
    model_dir = args.model.resolve()
    machine = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for images in args.images:
        folder, label, count, size = inputs(args.workload, images, args.source_size)
        runs[count] = table(repeated(args, folder, model_dir, images), count)
        doc = {
            "benchmark": "peers",
            "images": count,
            "bytes": size,
            "workload": args.workload,
            "source_size": args.source_size if args.workload == "digits" else "photos: 1000-4000 px (bench/photos.py)",
            "batch_size": args.batch_size,
            "project_settings": args.set,
            "model": str(model_dir),
            "machine": machine,
            "engines": runs[count],
        }
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"peers{tag}_{count}x{label}.json").write_text(json.dumps(doc, indent=2) + "\n")
    summary = {
        "benchmark": "peers",
        "command": "python bench/peers.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "sizes": sorted(runs),
        "machine": machine,
        "engines": {str(n): runs[n] for n in sorted(runs)},
        "targets": targets(runs, args.workload),
    }
    name = RESULTS / (f"peers{tag}_run_" + "_".join(str(n) for n in sorted(runs)) + f"x{label}.json")
    name.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["targets"], indent=2))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        sys.path.insert(0, str(REPO))
        run_child(sys.argv[2], Path(sys.argv[3]), Path(sys.argv[4]), int(sys.argv[5]), Path(sys.argv[6]))
    else:
        sys.exit(main())
