"""The DAGs run for real, against scratch workspaces shaped like a user's clone (3 classes x 30
images, small models), spark-submitting the packaged jobs through ``spark_default`` (``local[2]``).

- Training as a user runs it: ``scripts/airflow-local.sh`` (``make airflow``: ``airflow standalone``
  with the API server, scheduler, DAG processor and triggerer; LocalExecutor, SQLite) on a free
  port of 127.0.0.1; log in with the credentials it prints, unpause ``image_training_pipeline``,
  trigger it through the REST API with the body the UI's trigger form posts, wait for success.
  The server is stopped (its whole process group) as soon as the run is over.
- Batch scoring of an inbox with the champion that run produced, by ``dag.test()``, twice (the
  second run finds nothing new), and a gate failure (``dag.test()`` of the training DAG) that
  stops the run at ingest.

One training run serves every assertion on the pipeline's products: each run costs ~5 minutes
here (8 spark-submits, each ~25 s of JVM and torch start-up), and the group should stay short."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
import yaml

from tests.factories import REPO, free_port, write_inbox
from tests.orchestration.airflow_setup import BIN, make_workspace
from tests.processes import stop_group, wait_for

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TRAINING = "image_training_pipeline"
TRAINING_STAGES = {"ingest", "backbone", "features", "train@mllib", "train@cnn", "train@autoencoder", "evaluate"}


@pytest.fixture(scope="module")
def airflow_server(airflow_db: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """``scripts/airflow-local.sh`` on a free port, with a scratch workspace; stopped afterwards."""
    ws = make_workspace(tmp_path_factory.mktemp("trained") / "ws", 30)
    log = ws.parent / "airflow.log"
    port = free_port()
    env = {**airflow_db, "AIRFLOW_PORT": str(port), "IMAGE_PLATFORM_WORKSPACE": str(ws)}
    env.pop("PYTHONPATH")  # as a user starts it: Airflow itself puts plugins/ on sys.path
    # The components' log servers on free ports too: never collide with an Airflow already running.
    env["AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT"] = str(free_port())
    env["AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT"] = str(free_port())
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["bash", str(REPO / "scripts" / "airflow-local.sh")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    url = f"http://127.0.0.1:{port}"

    def healthy() -> bool:
        try:
            health = requests.get(f"{url}/api/v2/monitor/health", timeout=5).json()
        except (requests.RequestException, ValueError):
            return False
        return all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler"))

    try:
        wait_for("the API server and scheduler", healthy, 240, log)
        banner = re.search(r"Log in as:\s+(\S+) / (\S+)", log.read_text())
        assert banner, log.read_text()[-3000:]
        yield {
            "url": url,
            "user": banner.group(1),
            "password": banner.group(2),
            "workspace": ws,
            "log": log,
            "stop": lambda: stop_group(proc),
        }
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def trained(airflow_server: dict) -> dict:
    """``image_training_pipeline`` triggered with Params through the REST API, as the UI does,
    and waited for: the run, its task states and the champion Asset's events, as the API reports
    them."""
    url, ws, log = airflow_server["url"], airflow_server["workspace"], airflow_server["log"]
    login = requests.post(
        f"{url}/auth/token",
        json={"username": airflow_server["user"], "password": airflow_server["password"]},
        timeout=10,
    )
    assert login.status_code in (200, 201), login.text
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {login.json()['access_token']}"
    # Once the DAG processor has parsed it: it starts paused (Airflow's default), so unpause it.
    wait_for(TRAINING, lambda: api.get(f"{url}/api/v2/dags/{TRAINING}", timeout=10).ok, 180, log)
    assert api.patch(f"{url}/api/v2/dags/{TRAINING}", json={"is_paused": False}, timeout=10).ok
    # What the trigger form posts: the Params as conf, no logical date.
    conf = {"source": str(ws / "src"), "epochs": 15, "seed": 1}
    body = {"conf": conf, "logical_date": None, "data_interval_start": None, "data_interval_end": None}
    triggered = api.post(f"{url}/api/v2/dags/{TRAINING}/dagRuns", json=body, timeout=10)
    assert triggered.status_code == 200, triggered.text
    run_id = triggered.json()["dag_run_id"]
    started = time.monotonic()

    def finished() -> dict | None:
        run = api.get(f"{url}/api/v2/dags/{TRAINING}/dagRuns/{run_id}", timeout=10).json()
        return run if run["state"] in ("success", "failed") else None

    run = wait_for(f"run {run_id}", finished, 900, log, every=5)
    tasks = api.get(f"{url}/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances", timeout=10).json()
    events = api.get(f"{url}/api/v2/assets/events", params={"source_dag_id": TRAINING}, timeout=10).json()
    # Stopped now, not at the module's end: the other tests' ``dag.test()`` runs share its metadata
    # DB, and a live scheduler takes their queued tasks and runs them itself (with the server's
    # workspace and log), which ``dag.test()`` then only sees as "failed".
    airflow_server["stop"]()
    return {
        "workspace": ws,
        "conf": conf,
        "run": run,
        "seconds": time.monotonic() - started,
        "states": {t["task_id"]: t["state"] for t in tasks["task_instances"]},
        "events": events["asset_events"],
        "log": log,
    }


def test_training_triggered_with_params_through_the_rest_api(trained: dict) -> None:
    run, states = trained["run"], trained["states"]
    assert run["state"] == "success", (states, trained["log"].read_text()[-6000:])
    assert len(states) == 9, states  # build_package, the 7 stages, version
    assert set(states.values()) == {"success"}, states
    assert run["conf"] == trained["conf"]
    assert [(e["source_run_id"], e["uri"]) for e in trained["events"]] == [
        (run["dag_run_id"], f"file://{trained['workspace']}/models/champion")
    ]


def test_training_produced_and_versioned_the_models(trained: dict) -> None:
    ws = trained["workspace"]
    # The stages ran the packaged code with the trigger's Params.
    ingest = json.loads((ws / "data" / "ingest" / "_manifest.json").read_text())
    assert ingest["counts"]["rows"] == 90
    assert ingest["params"]["ingest"]["source"] == str(ws / "src")
    packaged = ingest["job_version"]["content_sha256_16"]
    assert any(packaged in p.name for p in (ws / "dist").glob("spark_jobs-*.zip"))
    for output in ("data/features", "models/cnn"):
        manifest = ws / output / ("card.json" if output.startswith("models") else "_manifest.json")
        assert json.loads(manifest.read_text())["job_version"]["content_sha256_16"] == packaged, output
    card = json.loads((ws / "models" / "cnn" / "card.json").read_text())
    assert card["training"]["epochs"] == 15  # the epochs Param reached the cnn
    metrics = json.loads((ws / "reports" / "metrics.json").read_text())
    assert set(metrics["models"]) == {"mllib", "cnn", "autoencoder"}
    assert metrics["models"]["cnn"]["accuracy"] >= 0.8  # the workspace's model gate
    champion = json.loads((ws / "models" / "champion" / "classifier" / "card.json").read_text())
    assert champion["version"] in {metrics["models"][m]["version"] for m in ("mllib", "cnn")}
    # Versioned with DVC: the Params in params.yaml (comments kept), the outputs in dvc.lock.
    text = (ws / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert params["ingest"]["source"] == str(ws / "src")
    assert (params["train"]["cnn"]["epochs"], params["train"]["seed"]) == (15, 1)
    assert "# Stable interface" in text
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(lock) >= TRAINING_STAGES
    status = subprocess.run(
        [str(BIN / "dvc"), "status", *TRAINING_STAGES], cwd=ws, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout, status.stdout


def _dag_test(env: dict[str, str], workspace: Path, dag_id: str, conf: dict) -> dict:
    """``dag.test()`` of ``dag_id`` in a subprocess (see run_dag.py): the run's and tasks' states."""
    out = workspace / f"{dag_id}-result.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), str(REPO / "dags"), dag_id, json.dumps(conf), str(out)],
        env={**env, "IMAGE_PLATFORM_WORKSPACE": str(workspace)},
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    (workspace / f"{dag_id}.log").write_text(log)
    assert out.exists(), log[-8000:]
    return {**json.loads(out.read_text()), "log": log}


def test_batch_scoring_scores_new_images_exactly_once(airflow_db: dict[str, str], trained: dict) -> None:
    ws = trained["workspace"]
    write_inbox(ws / "inbox", 200, 5)
    first = _dag_test(airflow_db, ws, "image_batch_scoring", {})
    assert first["state"] == "success", first["log"][-6000:]
    assert set(first["tasks"].values()) == {"success"}, first["tasks"]
    runs = sorted((ws / "data" / "predictions").glob("run_date=*/run_id=*"))
    assert len(runs) == 1
    manifest = json.loads((runs[0] / "_manifest.json").read_text())
    assert manifest["counts"]["scored"] == 15
    champion = json.loads((ws / "models" / "champion" / "classifier" / "card.json").read_text())
    assert manifest["inputs"]["model"]["version"] == champion["version"]
    # Nothing new arrived: the second run scores nothing and publishes no predictions.
    second = _dag_test(airflow_db, ws, "image_batch_scoring", {})
    assert second["state"] == "success", second["log"][-6000:]
    assert sorted((ws / "data" / "predictions").glob("run_date=*/run_id=*")) == runs
    assert "15 already scored" in second["log"]
    assert "score" in yaml.safe_load((ws / "dvc.lock").read_text())["stages"]


def test_a_gate_failure_stops_the_run_at_its_stage(airflow_db: dict[str, str], tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", 3)  # 3 images per class: below gate.raw.min_per_class
    run = _dag_test(airflow_db, ws, TRAINING, {"source": str(ws / "src")})
    assert run["state"] == "failed"
    assert run["tasks"]["build_package"] == "success"
    assert run["tasks"]["ingest"] == "failed"  # at once: a gate verdict is not retried
    downstream = set(run["tasks"]) - {"build_package", "ingest"}
    assert {run["tasks"][t] for t in downstream} == {"upstream_failed"}
    problems = [line for line in run["log"].splitlines() if "ERROR" in line or "stopped" in line]
    assert any("stage ingest stopped: its gate failed" in line for line in problems), problems
    assert any(f"gate 'ingest' failed: nothing published. Report: {ws}/data/gates/ingest" in p for p in problems)
    assert not (ws / "data" / "ingest").exists()
