"""The DAGs as Airflow parses them (in a subprocess with a scratch AIRFLOW_HOME): they load with no
import errors or warnings, quickly, and run exactly the stages and commands of dvc.yaml."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from image_platform import stages

from tests.factories import REPO, dvc_view

HERE = Path(__file__).parent


def describe(dags: Path, env: dict[str, str], result: Path) -> dict:
    """What ``describe_dags.py`` reports of parsing the ``dags`` folder (in a subprocess)."""
    subprocess.run(
        [sys.executable, str(HERE / "describe_dags.py"), str(dags), str(result)],
        env=env,
        capture_output=True,
        timeout=300,
        check=True,
    )
    return json.loads(result.read_text())


@pytest.fixture(scope="module")
def parsed(airflow_env: dict[str, str]) -> dict:
    return describe(REPO / "dags", airflow_env, Path(airflow_env["AIRFLOW_HOME"]) / "dags.json")


def _submitted(cmd: str) -> list[str]:
    """What a DAG's spark-submit must pass the launcher for a dvc.yaml command
    (``python -m spark_jobs.train --set train.model=cnn`` -> ``train --set train.model=cnn``)."""
    words = shlex.split(cmd)
    assert words[:2] == ["python", "-m"], cmd
    assert words[2].startswith("spark_jobs."), cmd
    return [words[2].removeprefix("spark_jobs."), *words[3:]]


def test_dags_load_cleanly_and_fast(parsed: dict) -> None:
    assert parsed["import_errors"] == {}
    assert parsed["warnings"] == []
    assert set(parsed["dags"]) == {"image_training_pipeline", "image_batch_scoring"}
    assert set(parsed["parse_seconds"]) == {"image_training_pipeline.py", "image_batch_scoring.py"}
    assert all(seconds < 2.0 for seconds in parsed["parse_seconds"].values()), parsed["parse_seconds"]


def test_parsing_queries_no_database_and_opens_no_connection(parsed: dict) -> None:
    """Airflow's own test of its example DAGs: building the DAGs reads no state (no Variable, no
    Connection, no metadata-DB query, no socket) (STYLE.md #15)."""
    assert parsed["parse_io"] == {"queries": [], "sockets": [], "connections": []}


BAD_DAG = """
from datetime import UTC, datetime

from airflow.models import Variable
from airflow.sdk import DAG, BaseHook

Variable.get("cron", default_var="@daily")
try:
    BaseHook.get_connection("spark_default")
except Exception:
    pass

with DAG(dag_id="reads_state_at_parse_time", schedule=None, start_date=datetime(2026, 1, 1, tzinfo=UTC)):
    pass
"""


def test_the_parse_watch_sees_a_variable_and_a_connection(airflow_env: dict[str, str], tmp_path: Path) -> None:
    """The check above can fail: a DAG file reading a Variable and a Connection at parse time is caught."""
    (tmp_path / "dags").mkdir()
    (tmp_path / "dags" / "bad.py").write_text(BAD_DAG)
    seen = describe(tmp_path / "dags", airflow_env, tmp_path / "dags.json")["parse_io"]
    assert any("FROM variable" in q for q in seen["queries"]), seen
    assert seen["connections"] == ["spark_default"]


def test_dags_are_documented_and_tz_aware(parsed: dict) -> None:
    for dag_id, dag in parsed["dags"].items():
        assert dag["start_date_tz"] == "UTC", dag_id
        assert dag["doc_md"], dag_id
        assert dag_id in dag["doc_md"].splitlines()[0], dag_id  # the module docstring, shown in the UI


def test_dag_files_import_nothing_heavy() -> None:
    """Parse time stays low because DAG files and plugins never import Spark, torch or GX."""
    code = (
        "import sys, runpy; sys.path[:0] = [sys.argv[1]]; "
        "[runpy.run_path(p) for p in sys.argv[2:]]; "
        "print(sorted(m for m in ('pyspark', 'torch', 'great_expectations', 'spark_jobs') if m in sys.modules))"
    )
    dags = sorted(str(p) for p in (REPO / "dags").glob("*.py"))
    env = {**os.environ, "AIRFLOW__CORE__LOAD_EXAMPLES": "False"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(REPO / "plugins"), *dags], env=env, capture_output=True, text=True, check=True
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"


TRAINING = {
    "digits": {"ingest", "backbone", "features", "train@mllib", "train@cnn", "train@autoencoder", "evaluate"},
    "grids": {"ingest", "features", "train@tiles_mean", "train@tiles_gru", "evaluate"},
    "find": {"ingest", "features", "train@tiles_mean", "train@tiles_gru", "train@tiles_attention", "evaluate"},
}


def test_training_dag_runs_one_pipeline_chosen_by_a_param(parsed: dict) -> None:
    """A branch after the package picks the digits (dvc.yaml), grids (grids/dvc.yaml) or find
    (find/dvc.yaml) tasks; each pipeline ends in its own version task and champion asset."""
    dag = parsed["dags"]["image_training_pipeline"]
    tasks = dag["tasks"]
    ids = {
        pipeline: {("" if pipeline == "digits" else f"{pipeline}.") + stages.task_id(n) for n in names}
        for pipeline, names in TRAINING.items()
    }
    versions = {"version", "version_grids", "version_find"}
    assert set(tasks) == {"build_package", "choose_pipeline", *versions, *ids["digits"], *ids["grids"], *ids["find"]}
    assert tasks["build_package"]["downstream"] == ["choose_pipeline"]
    assert tasks["choose_pipeline"]["type"] == "_BranchPythonDecoratedOperator"
    # The branch precedes every task of both pipelines: it skips all of the other one's itself.
    assert tasks["choose_pipeline"]["downstream"] == sorted(set(tasks) - {"build_package", "choose_pipeline"})
    assert dag["params"]["pipeline"]["enum"] == [None, "grids", "find"]
    for pipeline in ("grids", "find"):
        assert tasks[f"{pipeline}.evaluate"]["downstream"] == [f"version_{pipeline}"]
        assert tasks[f"version_{pipeline}"]["outlets"] == [f"image_platform_{pipeline}_champion_promoted"]  # the alias
        assert tasks[f"version_{pipeline}"]["pool"] == "dvc"
        for task_id in ids[pipeline]:  # run in the pipeline's workspace: its params.yaml, data and models
            assert tasks[task_id]["workdir"] == str(REPO / pipeline), task_id
    for task_id in ids["digits"]:
        assert tasks[task_id]["workdir"] == str(REPO), task_id


@pytest.mark.parametrize("pipeline", sorted(TRAINING))
def test_training_dag_is_dvc_yaml_from_ingest_to_evaluate(parsed: dict, pipeline: str) -> None:
    """Same stages, same commands, same dependencies as ``dvc repro`` (sample and score aside)."""
    dag = parsed["dags"]["image_training_pipeline"]
    assert dag["schedule"].startswith("<airflow.sdk.definitions.timetables.simple.NullTimetable")
    tasks = dag["tasks"]
    view = dvc_view(REPO, stages.PIPELINES[pipeline])  # DVC's own reading of the pipeline's dvc.yaml
    graph = {n: stage["needs"] for n, stage in view.items() if n not in ("sample", "score")}
    assert set(graph) == TRAINING[pipeline]
    prefix = "" if pipeline == "digits" else f"{pipeline}."

    def tid(name: str) -> str:
        return prefix + stages.task_id(name)

    dvc = {n: _submitted(stage["cmd"]) for n, stage in view.items()}
    params = {k for k in dag["params"] if k != "pipeline"}  # the others override params.yaml keys
    for name, needs in graph.items():
        task = tasks[tid(name)]
        args = task["application_args"]
        assert args[: len(dvc[name])] == dvc[name], name
        for upstream in needs & set(graph):
            assert tid(name) in tasks[tid(upstream)]["downstream"], (upstream, name)
        assert task["type"] == "StageSubmitOperator"
        assert task["conn_id"] == "spark_default"
        assert task["application"] == str(REPO / stages.LAUNCHER)
        assert task["py_files"] == "{{ ti.xcom_pull(task_ids='build_package') }}"
        assert task["retries"] > 0
        # Every Param can reach every stage, as a --set override when a run sets it, and none is
        # on the command line beforehand: a run with the form untouched is `dvc repro`.
        assert set(task["param_keys"]) == params, name
        assert args == dvc[name], name
    version = "version" if pipeline == "digits" else f"version_{pipeline}"
    assert tasks[tid("evaluate")]["downstream"] == [version]
    assert tasks[version]["pool"] == "dvc"  # DVC commands one at a time
    # Aliases: the champion asset's event is added only when the run promoted one.
    champion = {
        "digits": "image_platform_champion_promoted",
        "grids": "image_platform_grids_champion_promoted",
        "find": "image_platform_find_champion_promoted",
    }
    assert tasks[version]["outlets"] == [champion[pipeline]]
    # A stage skipped as up to date (dvc repro's semantics) does not skip what follows it.
    assert {tasks[tid(n)]["trigger_rule"] for n in graph} | {tasks[version]["trigger_rule"]} == {"none_failed"}


def test_params_default_to_params_yaml_and_each_names_a_key(parsed: dict) -> None:
    """Every Param starts empty (null: "as in params.yaml"), so no default ever overrides the file,
    and each names a params.yaml key (a typo would fail every run that sets it)."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    dag = parsed["dags"]["image_training_pipeline"]
    assert set(dag["param_defaults"].values()) == {None}, dag["param_defaults"]
    assert all("null" in schema["type"] for schema in dag["params"].values()), dag["params"]
    # The form shows no literal "null": an empty drop-down choice has a label saying what it means.
    for name, schema in dag["params"].items():
        if "enum" in schema:
            assert schema["values_display"].get("null", "").startswith("("), name  # JSON's key for None
    keys = dag["tasks"]["ingest"]["param_keys"]
    assert set(keys) == set(dag["params"]) - {"pipeline"}  # the one Param that is not a params.yaml key
    assert keys["cnn_epochs"] == "train.cnn.epochs"
    assert keys["autoencoder_epochs"] == "train.autoencoder.epochs"  # separate: 30 in params.yaml, not the cnn's
    for key in keys.values():
        node = params
        for part in key.split("."):
            assert part in node, key
            node = node[part]


def test_scoring_dag_is_scheduled_and_follows_the_champion(parsed: dict) -> None:
    dag = parsed["dags"]["image_batch_scoring"]
    assert "AssetOrTimeSchedule" in dag["schedule"]
    assert "image_platform_champion_model" in dag["schedule"]
    assert "0 * * * *" in dag["schedule"]
    assert dag["catchup"] is False
    assert dag["max_active_runs"] == 1
    score = dag["tasks"]["score"]
    assert score["application_args"] == _submitted(dvc_view()["score"]["cmd"]) == ["score"]
    assert score["outlets"] == ["image_platform_predictions_published"]  # an alias: no event when nothing new
    assert score["downstream"] == ["version"]
    assert dag["tasks"]["version"]["pool"] == "dvc"
