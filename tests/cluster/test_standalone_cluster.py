"""The pipeline on a real Spark standalone cluster started from the installed pyspark: a master and
two workers (one core each) on 127.0.0.1, ports chosen free, every process stopped afterwards even
when a test fails. Each stage runs as its Airflow task runs (``stages.stage_task``: spark-submit of
the packaged jobs through the ``spark_default`` connection, here ``spark://127.0.0.1:<port>``),
and the results are compared with the session's training run on ``local[2]`` (``trained_pipeline``:
the same stage tasks, params and images, run by the training DAG); the cnn trains with
TorchDistributor on the executors (one rank per worker); and a worker killed while ingest runs
costs nothing but time (Spark re-runs its tasks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import requests
from image_platform import package

from tests.factories import free_port, write_inbox
from tests.orchestration import training_run
from tests.orchestration.airflow_setup import airflow_environment, make_workspace, start_stage
from tests.processes import kill_group, stop_group, wait_for

# The module fixture runs the pipeline once on the cluster (local[2]: the shared training run).
pytestmark = [pytest.mark.slow, pytest.mark.cluster, pytest.mark.timeout(2400)]

BIN = Path(sys.executable).parent
STAGES = ["ingest", "features", "train@mllib", "train@cnn", "evaluate", "score"]  # no backbone: classical features
PARAMS = (  # on top of the orchestration tests' workspace params (the rest as the shared training run)
    "spark.executor_memory=1g",
    "spark.driver_memory=2g",
    "features.kind=classical",
    "evaluate.models=[mllib, cnn]",
    "evaluate.int8=false",
    "train.num_processes=2",
)


@dataclass
class Cluster:
    url: str  # spark://127.0.0.1:<port>
    ui: str  # the master's web UI (its /json/ view)
    root: Path
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def start(self, name: str, *args: str) -> None:
        log = (self.root / f"{name}.log").open("w")
        env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "SPARK_LOCAL_IP": "127.0.0.1"}
        self.procs[name] = subprocess.Popen(
            [str(BIN / "spark-class"), *args], env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def status(self) -> dict:
        try:
            return requests.get(f"{self.ui}/json/", timeout=5).json()
        except (requests.RequestException, ValueError):
            return {}

    def alive_workers(self) -> int:
        return sum(w["state"] == "ALIVE" for w in self.status().get("workers", []))

    def kill(self, name: str) -> None:
        """SIGKILL a worker with its group (its executor JVM and Python workers)."""
        kill_group(self.procs[name])

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            stop_group(proc)


def _start_worker(cluster: Cluster, name: str) -> None:
    work = cluster.root / name
    work.mkdir(exist_ok=True)
    cluster.start(
        name,
        "org.apache.spark.deploy.worker.Worker",
        cluster.url,
        "--host", "127.0.0.1",
        "--port", str(free_port()),
        "--webui-port", str(free_port()),
        "--cores", "1",
        "--memory", "2g",
        "--work-dir", str(work),
    )  # fmt: skip


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("spark-cluster")
    port, ui = free_port(), free_port()
    cluster = Cluster(f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}", root)
    try:
        cluster.start(
            "master",
            "org.apache.spark.deploy.master.Master",
            "--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui),
        )  # fmt: skip
        wait_for("the master", lambda: cluster.status().get("status") == "ALIVE", 120, root / "master.log", every=1)
        for name in ("worker-1", "worker-2"):
            _start_worker(cluster, name)
        wait_for("two workers", lambda: cluster.alive_workers() == 2, 120, root / "master.log", every=1)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def packaged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return package.build(tmp_path_factory.mktemp("dist"))


def _workspace(root: Path, per_class: int = training_run.PER_CLASS) -> Path:
    make_workspace(root, per_class, *PARAMS, *training_run.PARAMS)
    write_inbox(root / "inbox", 300, 4)
    return root


def _start(master: str, zip_path: Path, ws: Path, stage: str, *overrides: str) -> subprocess.Popen:
    """The stage task of ``stage`` (spark-submit through the ``spark_default`` connection, here
    ``master``), run from the workspace; its log in ``ws/<stage>.log``."""
    home = ws.parent / "airflow-home"
    home.mkdir(exist_ok=True)
    env = airflow_environment(home)
    env["AIRFLOW_CONN_SPARK_DEFAULT"] = json.dumps({"conn_type": "spark", "host": master})
    env["IMAGE_PLATFORM_WORKSPACE"] = str(ws)
    env["SPARK_LOCAL_IP"] = "127.0.0.1"  # the driver on loopback, as the cluster
    log = ws / f"{stage.replace('@', '-')}.log"
    return start_stage(env, stage, zip_path, f"ingest.source={ws / 'src'}", *overrides, log=log)


def _pipeline(master: str, zip_path: Path, ws: Path) -> None:
    for stage in STAGES:
        code = _start(master, zip_path, ws, stage).wait(900)
        log = (ws / f"{stage.replace('@', '-')}.log").read_text()
        assert code == 0, f"{stage} on {master} exited {code}:\n{log[-5000:]}"
        assert "STAGE-OK" in log, log[-5000:]


def _splits(ws: Path) -> dict[str, str]:
    table = pq.read_table(ws / "data" / "ingest" / "images.parquet", columns=["image_id", "split"])
    return dict(zip(table["image_id"].to_pylist(), table["split"].to_pylist(), strict=True))


@pytest.fixture(scope="module")
def runs(
    cluster: Cluster, packaged: Path, trained_pipeline: dict, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    """The stages on the cluster, and the same stages, params and images on local[2]."""
    ws = _workspace(tmp_path_factory.mktemp("runs") / "cluster")
    _pipeline(cluster.url, packaged, ws)
    return {"cluster": ws, "local": trained_pipeline["workspace"]}


def test_the_pipeline_on_the_cluster_matches_local(runs: dict[str, Path]) -> None:
    on, off = runs["cluster"], runs["local"]
    manifest = json.loads((on / "data" / "ingest" / "_manifest.json").read_text())
    assert manifest["spark"]["master"].startswith("spark://127.0.0.1:")  # it really ran there
    local = json.loads((off / "data" / "ingest" / "_manifest.json").read_text())
    assert manifest["counts"] == local["counts"]
    assert _splits(on) == _splits(off)  # the same split assignment, image by image
    for stage in ("features", "ingest"):
        c = json.loads((on / "data" / stage / "_manifest.json").read_text())["counts"]
        l_ = json.loads((off / "data" / stage / "_manifest.json").read_text())["counts"]
        assert c["rows"] == l_["rows"], stage
    metrics = {k: json.loads((ws / "reports" / "evaluation.json").read_text())["models"] for k, ws in runs.items()}
    for model in ("mllib", "cnn"):
        assert metrics["cluster"][model]["accuracy"] == pytest.approx(metrics["local"][model]["accuracy"], abs=0.05)
    scored = json.loads(next((on / "data" / "predictions").glob("run_date=*/run_id=*/_manifest.json")).read_text())
    assert scored["counts"]["scored"] == 12  # the inbox's new images, each once


def test_the_cnn_trained_one_rank_per_worker(cluster: Cluster, runs: dict[str, Path]) -> None:
    training = json.loads((runs["cluster"] / "models" / "cnn" / "card.json").read_text())["training"]
    assert training["local_mode"] is False
    assert training["world_size"] == 2
    workers = {Path(r["workdir"]).relative_to(cluster.root).parts[0] for r in training["ranks"]}
    assert workers == {"worker-1", "worker-2"}


def test_killing_a_worker_during_ingest_loses_nothing(cluster: Cluster, packaged: Path, tmp_path: Path) -> None:
    ws = _workspace(tmp_path / "ws", per_class=400)
    # Small tasks so that the lost worker's share is re-run elsewhere while the job goes on.
    proc = _start(cluster.url, packaged, ws, "ingest", "spark.files_max_partition_bytes=65536")
    try:
        # The executors are decoding once the first task outputs appear in the staging folder.
        decoding = lambda: proc.poll() is not None or any((ws / "data").glob(".staging/**/part-*"))  # noqa: E731
        wait_for("ingest's first task outputs", decoding, 300, ws / "ingest.log", every=0.5)
        assert proc.poll() is None, (
            f"ingest ended before a worker was killed:\n{(ws / 'ingest.log').read_text()[-3000:]}"
        )
        cluster.kill("worker-2")
        code = proc.wait(900)
    finally:
        if proc.poll() is None:
            kill_group(proc)
        _start_worker(cluster, "worker-2")  # for tests that run after this one
    log = (ws / "ingest.log").read_text()
    assert code == 0, log[-5000:]
    assert "STAGE-OK" in log, log[-5000:]
    assert "lost" in log.lower()  # Spark noticed the executor and re-ran its tasks
    table = pq.read_table(ws / "data" / "ingest" / "images.parquet", columns=["image_id", "source_uri"])
    assert table.num_rows == 1200
    assert len(set(table["image_id"].to_pylist())) == 1200  # every image exactly once
    assert len(set(table["source_uri"].to_pylist())) == 1200
