"""The DAGs run for real, against scratch workspaces shaped like a user's clone (3 classes x 30
images, small models), spark-submitting the packaged jobs through ``spark_default`` (``local[2]``).

- Training as a user runs it: the session's shared run (``trained_pipeline``, see
  tests/orchestration/training_run.py): ``make airflow``'s server, the REST trigger the UI's form
  posts, the run's task states, products and DVC versioning.
- Batch scoring of an inbox with the champion that run produced, by ``dag.test()``, twice (the
  second run finds nothing new), and a gate failure (``dag.test()`` of the training DAG) that
  stops the run at ingest.
- The training DAG with the form untouched (``dag.test()`` with an empty conf) submits exactly
  ``dvc repro``'s commands and leaves params.yaml as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from image_platform import stages

from spark_jobs.core import lineage
from tests.factories import REPO, write_inbox
from tests.openlineage_events import of_job, problems, read_events
from tests.orchestration.airflow_setup import BIN, make_workspace
from tests.orchestration.training_run import TRAINING

pytestmark = pytest.mark.slow

HERE = Path(__file__).parent
TRAINING_STAGES = {"ingest", "backbone", "features", "train@mllib", "train@cnn", "train@autoencoder", "evaluate"}


def test_training_triggered_with_params_through_the_rest_api(trained_pipeline: dict) -> None:
    trained = trained_pipeline
    run, states = trained["run"], trained["states"]
    assert run["state"] == "success", (states, trained["log"].read_text()[-6000:])
    # build_package, choose_pipeline, the 7 stages and version ran; the grids and find pipelines'
    # stages and version tasks were skipped (the pipeline Param left empty: the digits)
    ran = {s for s, state in states.items() if state == "success"}
    assert ran == {"build_package", "choose_pipeline", "version", *(t.replace("@", "_") for t in TRAINING_STAGES)}
    assert {s for s, state in states.items() if state != "success"} == {
        "grids.ingest",
        "grids.features",
        "grids.train_tiles_mean",
        "grids.train_tiles_gru",
        "grids.evaluate",
        "version_grids",
        "find.ingest",
        "find.features",
        "find.train_tiles_mean",
        "find.train_tiles_gru",
        "find.train_tiles_attention",
        "find.evaluate",
        "version_find",
    }
    assert {state for s, state in states.items() if s not in ran} == {"skipped"}, states
    assert run["conf"] == trained["conf"]
    assert [(e["source_run_id"], e["uri"]) for e in trained["events"]] == [
        (run["dag_run_id"], "image-platform://champion/")
    ]
    # The asset is a stable name; where this run's champion is, and which model, is in the event.
    extra = trained["events"][0]["extra"]
    assert extra["path"] == f"{trained['workspace']}/models/champion"
    assert (
        extra["classifier"]["version"]
        == json.loads((trained["workspace"] / "models" / "champion" / "classifier" / "card.json").read_text())[
            "version"
        ]
    )


def test_the_ui_in_a_real_browser(trained_pipeline: dict) -> None:
    """Headless Chromium through the UI (tests/orchestration/browser.py): log in, trigger the
    training DAG from the form with one Param, watch the run succeed, read a task log's progress
    lines and report link, open the report pages with the network off but for 127.0.0.1. The
    screenshots stay in the session's temporary folder (``trained*/browser/``)."""
    ui = trained_pipeline["ui"]
    if "skipped" in ui:
        pytest.skip(ui["skipped"])
    walk = ui["walk"]
    assert walk.state == "success", walk
    assert walk.progress["ingest"], walk.progress  # e.g. "ingest: 90 / 90 files (100 %), 41 files/s, done in 2 s"
    assert any("done in" in line for line in walk.progress["ingest"])
    assert set(walk.reports) == {"ingest", "evaluate"}, walk
    for task, page in walk.reports.items():
        assert page.path.name == "report.html", task
        assert page.path.exists(), task
        assert page.broken == 0, (task, page)
        assert page.refused == [], (task, page)  # nothing on it needs the network
    assert walk.reports["evaluate"].images > 0  # the test images behind the model gate's verdict
    assert len(walk.screenshots) == 7  # login, form, run, and per task its log and its report
    assert all(p.stat().st_size > 10_000 for p in walk.screenshots)
    print(f"browser walk: {ui['seconds']:.0f} s, of which the run it triggered {walk.seconds:.0f} s")


def test_a_second_run_on_an_up_to_date_workspace_skips_every_stage(trained_pipeline: dict) -> None:
    """The run the browser triggered set one Param to the value the first run recorded: DVC finds
    every stage up to date, so each is skipped, saying why, as ``dvc repro`` would; nothing was
    promoted, so no champion event."""
    second = trained_pipeline["second"]
    if second is None:
        pytest.skip(trained_pipeline["ui"].get("skipped", "the browser did not trigger a run"))
    states = second["states"]
    assert second["run"]["state"] == "success", states
    stages_ = {t.replace("@", "_") for t in TRAINING_STAGES}
    assert {states[t] for t in stages_} == {"skipped"}, states
    assert states["version"] == "success"
    assert "skipped, as dvc repro would" in second["logs"]["ingest"], second["logs"]["ingest"][-3000:]
    champion_events = [e for e in second["events"] if e["source_run_id"] == second["run"]["dag_run_id"]]
    assert champion_events == []


def test_make_airflow_starts_unpaused_and_stops_everything_on_sigterm(trained_pipeline: dict) -> None:
    assert trained_pipeline["paused_at_creation"] is False  # a trigger from the form runs at once
    stopped = trained_pipeline["stopped"]
    assert stopped["processes"] >= 4, stopped  # the script, airflow standalone and its components
    assert stopped["left"] == [], stopped
    assert stopped["seconds"] <= 30, stopped
    # Its private umask stays with AIRFLOW_HOME: what the runs made has the user's (022 here).
    card = trained_pipeline["workspace"] / "models" / "champion" / "classifier" / "card.json"
    assert card.stat().st_mode & 0o777 == 0o644


def test_the_airflow_home_is_private(trained_pipeline: dict) -> None:
    """scripts/airflow-local.sh closes AIRFLOW_HOME to other users: the metadata DB and the
    admin password file are 0600, the folder 0700 (the DB existed before the script ran)."""
    home = Path(trained_pipeline["env"]["AIRFLOW_HOME"])
    assert home.stat().st_mode & 0o777 == 0o700
    for name in ("airflow.db", "simple_auth_manager_passwords.json.generated"):
        assert (home / name).stat().st_mode & 0o777 == 0o600, name


def test_training_produced_and_versioned_the_models(trained_pipeline: dict) -> None:
    ws, version = trained_pipeline["workspace"], trained_pipeline["version"]
    # The stages ran the packaged code with the trigger's Params.
    ingest = json.loads((ws / "data" / "ingest" / "_manifest.json").read_text())
    assert ingest["counts"]["rows"] == 90
    assert ingest["params"]["ingest"]["source"] == str(ws / "src")
    packaged = ingest["job_version"]["content_sha256_16"]
    assert any(packaged in p.name for p in (ws / "dist").glob("spark_jobs-*.zip"))
    for output in ("data/features", "models/cnn"):
        manifest = ws / output / ("card.json" if output.startswith("models") else "_manifest.json")
        assert json.loads(manifest.read_text())["job_version"]["content_sha256_16"] == packaged, output
    # The autoencoder_epochs Param reached the autoencoder (params.yaml says 6); the cnn's Param
    # was left empty, so its 15 epochs are params.yaml's own.
    for model, epochs in (("autoencoder", 15), ("cnn", 15)):
        card = json.loads((ws / "models" / model / "card.json").read_text())
        assert card["training"]["epochs"] == epochs, model
    metrics = json.loads((ws / "reports" / "evaluation.json").read_text())
    assert set(metrics["models"]) == {"mllib", "cnn", "autoencoder"}
    assert metrics["models"]["cnn"]["accuracy"] >= 0.8  # the workspace's model gate
    champion = json.loads((ws / "models" / "champion" / "classifier" / "card.json").read_text())
    assert champion["version"] in {metrics["models"][m]["version"] for m in ("mllib", "cnn")}
    # Versioned with DVC: the Params in params.yaml (comments kept), the outputs in dvc.lock.
    text = (ws / "params.yaml").read_text()
    params = yaml.safe_load(text)
    assert params["ingest"]["source"] == str(ws / "src")
    assert (params["train"]["autoencoder"]["epochs"], params["train"]["seed"]) == (15, 1)
    assert version["params_changed"] == {
        "ingest.source": str(ws / "src"),
        "train.autoencoder.epochs": 15,
        "train.seed": 1,
    }  # only the Params the run set
    assert "# Stable interface" in text
    lock = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    assert set(lock) >= TRAINING_STAGES
    status = subprocess.run(
        [str(BIN / "dvc"), "status", *TRAINING_STAGES], cwd=ws, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout, status.stdout


def test_each_stage_run_names_its_airflow_task_run_as_its_lineage_parent(trained_pipeline: dict) -> None:
    """OpenLineage as ``make airflow`` configures it: the provider's events of the run's tasks and
    the stages' own in one transport (the workspace's data/lineage/); a stage's COMPLETE names the
    Airflow task run that submitted it as its parent (and the DAG run as its root), and the
    provider's own events of that very task run are there too."""
    events = read_events(trained_pipeline["workspace"] / "data" / "lineage")
    submitted = [e for e in of_job(events, "ingest", "COMPLETE") if "parent" in e["run"]["facets"]]
    assert submitted, sorted({e["job"]["name"] for e in events})
    parent = submitted[0]["run"]["facets"]["parent"]
    task = f"{TRAINING}.{stages.task_id('ingest')}"
    assert (parent["job"]["namespace"], parent["job"]["name"]) == ("image-platform", task)
    task_run = [e for e in events if e["job"]["name"] == task and e["run"]["runId"] == parent["run"]["runId"]]
    assert {e["eventType"] for e in task_run} >= {"START", "COMPLETE"}, [e["eventType"] for e in task_run]
    assert parent["root"]["job"]["name"] == TRAINING
    assert any(e["job"]["name"] == TRAINING and e["run"]["runId"] == parent["root"]["run"]["runId"] for e in events)
    ours = [
        e for e in events if e["producer"] == lineage.PRODUCER
    ]  # the stages' (the provider's have facets of its own)
    assert {e["job"]["name"] for e in ours} >= {"ingest", "features", "train.cnn", "evaluate"}
    assert [p for e in ours for p in problems(e)] == []


def _dag_test(env: dict[str, str], workspace: Path, dag_id: str, conf: dict) -> dict:
    """``dag.test()`` of ``dag_id`` in a subprocess (see run_dag.py): the run's and tasks' states."""
    out = workspace / f"{dag_id}-result.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, str(HERE / "run_dag.py"), str(REPO / "dags"), dag_id, json.dumps(conf), str(out)],
        # Each run re-serializes the DAG as parsed for its workspace (the champion Asset's URI is
        # the workspace's): Airflow otherwise keeps a serialized DAG younger than 30 s, and a run
        # right after another one's would use that run's Assets.
        env={
            **env,
            "IMAGE_PLATFORM_WORKSPACE": str(workspace),
            "AIRFLOW__CORE__MIN_SERIALIZED_DAG_UPDATE_INTERVAL": "0",
        },
        capture_output=True,
        text=True,
        timeout=900,
    )
    log = proc.stdout + proc.stderr
    (workspace / f"{dag_id}.log").write_text(log)
    assert out.exists(), log[-8000:]
    return {**json.loads(out.read_text()), "log": log}


def test_batch_scoring_scores_new_images_exactly_once(airflow_db: dict[str, str], trained_pipeline: dict) -> None:
    ws = trained_pipeline["workspace"]
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
    assert "score" in yaml.safe_load((ws / "dvc.lock").read_text())["stages"]
    # Nothing new arrived: DVC finds the score stage up to date (inbox, champion and params as the
    # first run's dvc.lock records them), so the second run skips it, as dvc repro would.
    second = _dag_test(airflow_db, ws, "image_batch_scoring", {})
    assert second["state"] == "success", second["log"][-6000:]
    assert second["tasks"]["score"] == "skipped", second["tasks"]
    assert "stage score skipped, as dvc repro would" in second["log"]
    assert sorted((ws / "data" / "predictions").glob("run_date=*/run_id=*")) == runs
    # A file the champion already scored, under a new name: the inbox changed, the stage runs, and
    # the score stage itself skips the known content (exactly once per image and model version).
    shutil.copy(next((ws / "inbox").rglob("*.png")), ws / "inbox" / "again.png")
    third = _dag_test(airflow_db, ws, "image_batch_scoring", {})
    assert third["state"] == "success", third["log"][-6000:]
    assert third["tasks"]["score"] == "success", third["tasks"]
    assert "16 already scored" in third["log"], third["log"][-3000:]
    assert sorted((ws / "data" / "predictions").glob("run_date=*/run_id=*")) == runs


def test_a_gate_failure_stops_the_run_at_its_stage(airflow_db: dict[str, str], tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws", 3)  # 3 images per class: below gate.raw.min_per_class
    run = _dag_test(airflow_db, ws, TRAINING, {"source": str(ws / "src")})
    assert run["state"] == "failed"
    assert run["tasks"]["build_package"] == "success"
    assert run["tasks"]["ingest"] == "failed"  # at once: a gate verdict is not retried
    grids = {t for t in run["tasks"] if t.startswith(("grids.", "find."))} | {"version_grids", "version_find"}
    assert {run["tasks"][t] for t in grids} == {"skipped"}  # the other pipelines'
    assert run["tasks"]["choose_pipeline"] == "success"
    downstream = set(run["tasks"]) - {"build_package", "choose_pipeline", "ingest"} - grids
    assert {run["tasks"][t] for t in downstream} == {"upstream_failed"}
    problems = [line for line in run["log"].splitlines() if "ERROR" in line or "stopped" in line]
    assert any("stage ingest stopped: its gate failed" in line for line in problems), problems
    assert any(f"gate 'ingest' failed: nothing published. Report: {ws}/data/gates/ingest" in p for p in problems)
    assert not (ws / "data" / "ingest").exists()


def _recording_spark_submit(folder: Path, record: Path) -> Path:
    """A ``spark-submit`` that appends its command line to ``record`` (one JSON list per line) and
    succeeds: the stages' real runs are the shared run's, so this test costs no second training."""
    folder.mkdir()
    stub = folder / "spark-submit"
    stub.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"with open({str(record)!r}, 'a') as out:\n    out.write(json.dumps(sys.argv[1:]) + '\\n')\n"
    )
    stub.chmod(0o755)
    return folder


def test_a_run_with_the_form_untouched_is_dvc_repro(
    airflow_db: dict[str, str], trained_pipeline: dict, tmp_path: Path
) -> None:
    """An empty conf overrides nothing. On the shared trained workspace, whose params.yaml holds
    values the Params' old defaults would have overwritten (15 epochs each, seed 1, its own
    source), every stage is submitted with exactly its dvc.yaml arguments (no ``--set``), and the
    version task commits the outputs and leaves params.yaml byte-identical. (The same workspace,
    not a copy: the champion Asset is the workspace's, and this Airflow DB already knows it.)"""
    ws = trained_pipeline["workspace"]
    params = yaml.safe_load((ws / "params.yaml").read_text())
    assert (params["train"]["cnn"]["epochs"], params["train"]["autoencoder"]["epochs"]) == (15, 15)
    before = (ws / "params.yaml").read_bytes()
    # Every stage made out of date for DVC (no dvc.lock: nothing recorded), so each is submitted;
    # the version task writes dvc.lock anew.
    (ws / "dvc.lock").unlink()
    record = tmp_path / "submitted.jsonl"
    stub = _recording_spark_submit(tmp_path / "bin", record)
    env = {**airflow_db, "PATH": f"{stub}{os.pathsep}{airflow_db['PATH']}"}
    run = _dag_test(env, ws, TRAINING, {})
    assert run["state"] == "success", run["log"][-6000:]
    grids = {t for t in run["tasks"] if t.startswith(("grids.", "find."))} | {"version_grids", "version_find"}
    assert {state for t, state in run["tasks"].items() if t not in grids} == {"success"}, run["tasks"]
    assert {run["tasks"][t] for t in grids} == {"skipped"}  # the pipeline Param left empty: the digits
    launcher = str(REPO / stages.LAUNCHER)
    submitted = [json.loads(line) for line in record.read_text().splitlines()]
    args = sorted(argv[argv.index(launcher) + 1 :] for argv in submitted)
    dvc = stages.dvc_commands()
    assert args == sorted([dvc[name].stage, *dvc[name].args] for name in TRAINING_STAGES)
    assert (ws / "params.yaml").read_bytes() == before
    status = subprocess.run(
        [str(BIN / "dvc"), "status", *TRAINING_STAGES], cwd=ws, capture_output=True, text=True, check=True
    )
    assert "up to date" in status.stdout, status.stdout


def _producing_spark_submit(folder: Path, record: Path, outs: dict[str, list[str]]) -> Path:
    """A ``spark-submit`` that records its command line and working folder (the task's
    ``IMAGE_PLATFORM_WORKDIR``) and creates the DVC outputs ``outs`` names for its stage arguments
    (empty, as placeholders): the DAG's wiring and DVC versioning without Spark's cost."""
    folder.mkdir()
    stub = folder / "spark-submit"
    stub.write_text(
        f"#!{sys.executable}\nimport json, os, sys\nfrom pathlib import Path\n"
        f"outs = json.loads({json.dumps(json.dumps(outs))})\n"
        f"argv = sys.argv[1:]\nwhere = os.environ['IMAGE_PLATFORM_WORKDIR']\n"
        f"with open({str(record)!r}, 'a') as out:\n    out.write(json.dumps([where, *argv]) + '\\n')\n"
        "launched = argv[argv.index(" + repr(str(REPO / stages.LAUNCHER)) + ") + 1 :]\n"
        "for path in outs[' '.join(launched)]:\n"
        "    target = Path(where) / path\n"
        "    if target.suffix == '.json':\n"
        "        target.parent.mkdir(parents=True, exist_ok=True)\n"
        "        target.write_text('{}')\n"
        "    else:\n"
        "        target.mkdir(parents=True, exist_ok=True)\n"
        "        (target / 'placeholder').write_text(' '.join(launched))\n"
    )
    stub.chmod(0o755)
    return folder


def test_the_pipeline_param_runs_the_grids_pipeline_in_its_workspace(
    airflow_db: dict[str, str], tmp_path: Path
) -> None:
    """``{"pipeline": "grids"}``: the branch skips the digits tasks and runs grids/dvc.yaml's, each
    submitted from the grids workspace with its dvc.yaml arguments; ``version_grids`` commits their
    outputs to that workspace's dvc.lock. (Spark is a stand-in here; the same operator's real
    spark-submits run in the shared REST run, and the grids stages themselves in
    tests/spark_jobs/test_tiles_models.py.)"""
    ws = make_workspace(tmp_path / "ws", 3, scm=True)
    (ws / "grids").mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(REPO / "grids" / name, ws / "grids" / name)
    (ws / "grids" / "data" / "sample" / "grids" / "ascending").mkdir(parents=True)  # ingest.source
    (ws / "grids" / "data" / "sample" / "grids" / "ascending" / "0.png").write_bytes(b"stand-in")
    (ws / "models" / "backbone").mkdir(parents=True)  # the digits backbone the features read
    (ws / "models" / "backbone" / "backbone.pt2").write_bytes(b"stand-in")
    view = stages.pipeline(dvcfile="grids/dvc.yaml")
    trained = [n for n in view if n.partition("@")[0] not in ("sample", "score")]
    outs = {" ".join([view[n].command.stage, *view[n].command.args]): list(view[n].outs) for n in trained}
    record = tmp_path / "submitted.jsonl"
    stub = _producing_spark_submit(tmp_path / "bin", record, outs)
    env = {**airflow_db, "PATH": f"{stub}{os.pathsep}{airflow_db['PATH']}"}
    run = _dag_test(env, ws, TRAINING, {"pipeline": "grids"})
    assert run["state"] == "success", run["log"][-6000:]
    ran = {t for t, state in run["tasks"].items() if state == "success"}
    grid_tasks = {f"grids.{stages.task_id(n)}" for n in trained}
    assert ran == {"build_package", "choose_pipeline", "version_grids", *grid_tasks}, run["tasks"]
    assert {state for t, state in run["tasks"].items() if t not in ran} == {"skipped"}, run["tasks"]
    submitted = [json.loads(line) for line in record.read_text().splitlines()]
    assert {where for where, *_ in submitted} == {str(ws / "grids")}
    launcher = str(REPO / stages.LAUNCHER)
    assert sorted(" ".join(argv[argv.index(launcher) + 1 :]) for _, *argv in submitted) == sorted(outs)
    lock = yaml.safe_load((ws / "grids" / "dvc.lock").read_text())["stages"]
    assert set(lock) == set(trained)
    assert not (ws / "dvc.lock").exists()  # the digits workspace was not touched
