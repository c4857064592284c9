"""The one trained pipeline the slow tests share (``trained_pipeline`` in tests/conftest.py): the
training DAG run as a user runs it, on a scratch workspace shaped like a user's clone (under git,
3 classes x 30 images, small models, a DVC remote on the loopback S3 server).

``scripts/airflow-local.sh`` (``make airflow``: ``airflow standalone`` with the API server,
scheduler, DAG processor and triggerer; LocalExecutor, SQLite) on a free port of 127.0.0.1; log in
with the credentials it prints, unpause ``image_training_pipeline``, trigger it through the REST
API with the body the UI's trigger form posts, wait for it, and stop the server (its whole process
group) as soon as the run is over. Its products then serve: the REST run's own assertions, the
scoring DAG runs, the Spark cluster's comparison with ``local[2]``, and DVC's push to S3 and pull
into a fresh clone. One run costs ~4 minutes here (7 spark-submits); the tests must stay short."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import boto3
import requests
from image_platform import versioning
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from tests.factories import REPO, free_port
from tests.orchestration import browser
from tests.orchestration.airflow_setup import make_workspace
from tests.processes import descendants, stop_group, wait_for

TRAINING = "image_training_pipeline"
PER_CLASS = 30
REMOTE_BUCKET = "dvc-remote"
REMOTE = f"s3://{REMOTE_BUCKET}/image-platform"


# What the trigger form sets besides the source folder (non-default: they must reach the stages;
# the other Params stay empty, so params.yaml's values hold, the cnn's 15 epochs among them), and
# the same as --set overrides, for a workspace that must match the run (the cluster's).
AUTOENCODER_EPOCHS, SEED = 15, 1
PARAMS = (f"train.seed={SEED}", f"train.autoencoder.epochs={AUTOENCODER_EPOCHS}")


def conf(ws: Path) -> dict[str, Any]:
    """The trigger form's Params for the shared run."""
    return {"source": str(ws / "src"), "autoencoder_epochs": AUTOENCODER_EPOCHS, "seed": SEED}


def _server(env: dict[str, str], ws: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**env, "AIRFLOW_PORT": str(port), "IMAGE_PLATFORM_WORKSPACE": str(ws)}
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
            umask=0o022,  # a user's usual: the script must keep its private umask to AIRFLOW_HOME
        )
    return proc, f"http://127.0.0.1:{port}"


def train(root: Path, env: dict[str, str], s3_endpoint: str) -> dict[str, Any]:
    """The training DAG run through the REST API on a fresh workspace under ``root``: the run, its
    task states, the champion Asset's events and the version task's result, as the API reports them."""
    ws = make_workspace(root / "ws", PER_CLASS, scm=True)
    boto3.client("s3").create_bucket(Bucket=REMOTE_BUCKET)
    versioning.dvc(ws, "remote", "add", "--default", "s3store", REMOTE)
    versioning.dvc(ws, "remote", "modify", "s3store", "endpointurl", s3_endpoint)
    log = root / "airflow.log"
    proc, url = _server(env, ws, log)
    try:

        def healthy() -> bool:
            try:
                health = requests.get(f"{url}/api/v2/monitor/health", timeout=5).json()
            except (requests.RequestException, ValueError):
                return False
            return all(health.get(c, {}).get("status") == "healthy" for c in ("metadatabase", "scheduler"))

        wait_for("the API server and scheduler", healthy, 240, log)
        banner = re.search(r"Log in as:\s+(\S+) / (\S+)", log.read_text())
        assert banner, log.read_text()[-3000:]
        login = requests.post(
            f"{url}/auth/token", json={"username": banner.group(1), "password": banner.group(2)}, timeout=10
        )
        assert login.status_code in (200, 201), login.text
        api = _session(login.json()["access_token"], log)
        # Once the DAG processor has parsed it: `make airflow` creates the project's DAGs unpaused.
        wait_for(TRAINING, lambda: api.get(f"{url}/api/v2/dags/{TRAINING}", timeout=10).ok, 180, log)
        paused = api.get(f"{url}/api/v2/dags/{TRAINING}", timeout=10).json()["is_paused"]
        # What the trigger form posts: the Params as conf, no logical date; and a run id of its own,
        # so that a POST tried again after a locked database (see _session) cannot start two runs.
        params = conf(ws)
        body = {"conf": params, "logical_date": None, "data_interval_start": None, "data_interval_end": None}
        body["dag_run_id"] = f"manual__tests_{time.strftime('%Y%m%dT%H%M%S')}_{os.getpid()}"
        triggered = api.post(f"{url}/api/v2/dags/{TRAINING}/dagRuns", json=body, timeout=10)
        assert triggered.status_code == 200, triggered.text
        run_id = triggered.json()["dag_run_id"]
        started = time.monotonic()

        def finished() -> dict | None:
            run = api.get(f"{url}/api/v2/dags/{TRAINING}/dagRuns/{run_id}", timeout=10).json()
            return run if run["state"] in ("success", "failed") else None

        run = wait_for(f"run {run_id}", finished, 900, log, every=5)
        where = f"{url}/api/v2/dags/{TRAINING}/dagRuns/{run_id}/taskInstances"
        tasks = api.get(where, timeout=10).json()
        version = api.get(f"{where}/version/xcomEntries/return_value", timeout=10)
        events = api.get(f"{url}/api/v2/assets/events", params={"source_dag_id": TRAINING}, timeout=10).json()
        # The UI in a real browser: a second run triggered from the form with one Param, as the
        # first run recorded it in params.yaml, so DVC finds every stage up to date.
        ui = _browse(url, banner.group(1), banner.group(2), run_id, root / "browser")
        second = _second_run(api, url, ui.get("walk"))
    finally:
        # Stopped now: the other tests' ``dag.test()`` runs share its metadata DB, and a live
        # scheduler takes their queued tasks and runs them itself, which ``dag.test()`` then only
        # sees as "failed". First as a user stops it (SIGTERM to the script alone), timed.
        stopped = _stop_as_a_user(proc)
        stop_group(proc)
    return {
        "paused_at_creation": paused,
        "ui": ui,
        "second": second,
        "stopped": stopped,
        "workspace": ws,
        "conf": params,
        "run": run,
        "seconds": time.monotonic() - started,
        "states": {t["task_id"]: t["state"] for t in tasks["task_instances"]},
        "version": version.json().get("value") if version.ok else None,
        "events": events["asset_events"],
        "log": log,
        "env": env,
    }


def _session(token: str, log: Path) -> requests.Session:
    """The REST API as the tests call it. The local server keeps its metadata in SQLite, where a
    request can meet a writer's lock under load (the scheduler starting the hourly scoring DAG's
    run, say): one that answers 5xx is tried again (three times, 1-4 s apart; the trigger's POST
    names its run, so a retry cannot start a second one), and one that still does fails with the
    server's last traceback, not a JSON error."""
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {token}"
    retry = Retry(
        3, backoff_factor=1, status_forcelist=(500, 502, 503, 504), allowed_methods=None, raise_on_status=False
    )
    api.mount("http://", HTTPAdapter(max_retries=retry))
    api.hooks["response"].append(lambda got, *args, **kwargs: _no_server_error(got, log))
    return api


def _no_server_error(got: requests.Response, log: Path) -> None:
    if got.status_code >= 500:
        text = log.read_text(errors="replace")
        trace = text[text.rfind("Traceback") :][-6000:] if "Traceback" in text else text[-3000:]
        raise AssertionError(f"{got.request.method} {got.url}: {got.status_code} {got.text[:300]}\n{trace}")


def _browse(url: str, user: str, password: str, first_run: str, shots: Path) -> dict[str, Any]:
    """The browser's walk through the UI (tests/orchestration/browser.py), or why it could not run."""
    missing = browser.available()
    if missing is not None:
        return {"skipped": missing}
    started = time.monotonic()
    walk = browser.walk(url, user, password, ("seed", str(SEED)), first_run, ("ingest", "evaluate"), shots)
    return {"walk": walk, "seconds": time.monotonic() - started}


def _second_run(api: requests.Session, url: str, walk: browser.Walk | None) -> dict[str, Any] | None:
    """The states of the run the browser triggered, and the champion events after it."""
    if walk is None or walk.run_id is None:
        return None
    where = f"{url}/api/v2/dags/{TRAINING}/dagRuns/{walk.run_id}"
    tasks = api.get(f"{where}/taskInstances", timeout=10).json()["task_instances"]
    events = api.get(f"{url}/api/v2/assets/events", params={"source_dag_id": TRAINING}, timeout=10).json()
    return {
        "run": api.get(where, timeout=10).json(),
        "states": {t["task_id"]: t["state"] for t in tasks},
        "events": events["asset_events"],
        "logs": {t["task_id"]: _task_log(api, where, t["task_id"]) for t in tasks if t["task_id"] == "ingest"},
    }


def _task_log(api: requests.Session, run: str, task_id: str) -> str:
    """A task's log (first try), its events' text one per line."""
    got = api.get(
        f"{run}/taskInstances/{task_id}/logs/1",
        params={"full_content": True},
        headers={"Accept": "application/x-ndjson"},
        timeout=10,
    )
    events = []
    for line in got.text.splitlines():  # one JSON document per line, each a list of events or an event
        with contextlib.suppress(ValueError):
            doc = json.loads(line)
            for event in doc.get("content", [doc]) if isinstance(doc, dict) else doc:
                events.append(str(event.get("event", "")) if isinstance(event, dict) else str(event))
    return "\n".join(events) or got.text


def _stop_as_a_user(proc: subprocess.Popen) -> dict[str, Any]:
    """SIGTERM to ``make airflow``'s script alone (as Ctrl-C or a service manager sends it): how long
    until the script and every process it started are gone, and which were left after 30 s."""
    if proc.poll() is not None:
        return {"already_exited": True}
    started = descendants(proc.pid)
    began = time.monotonic()
    os.kill(proc.pid, signal.SIGTERM)
    deadline = began + 30
    while time.monotonic() < deadline and (proc.poll() is None or any(_alive(p) for p in started)):
        time.sleep(0.5)
    return {
        "processes": len(started),
        "seconds": round(time.monotonic() - began, 1),
        "left": sorted(p for p in started if _alive(p)),
    }


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"
