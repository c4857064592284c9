"""What the orchestration tests share: the environment an Airflow process runs with (a scratch
AIRFLOW_HOME, this repository's DAGs and plugins, ``spark_default`` on ``local[2]``, this
environment's ``bin/`` on PATH for ``spark-submit``, ``dvc`` and ``airflow``), a scratch DVC
workspace shaped like a user's clone, sized for small class trees, and one stage task run as an
Airflow worker runs it (run_stage.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from image_platform import versioning

from tests.factories import REPO, SMALL_MODELS, write_class_tree

BIN = Path(sys.executable).parent
RUN_STAGE = Path(__file__).with_name("run_stage.py")
# Small models and gates sized for 3 classes x 30 images (the tests' usual class tree).
WORKSPACE_PARAMS = (
    "spark.master=local[2]",
    "spark.shuffle_partitions=2",
    "gate.raw.min_per_class=5",
    "gate.raw.split_tolerance=0.2",
    "score.inbox=inbox",
    "gate.model.min_accuracy=0.8",
    "gate.model.min_macro_f1=0.8",
    "data.progress_s=1",  # a progress line a second: these small stages finish within seconds
    *SMALL_MODELS,
)


def airflow_environment(home: Path) -> dict[str, str]:
    """The variables an Airflow process of these tests runs with (as ``scripts/airflow-local.sh``)."""
    return {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW_CONN_SPARK_DEFAULT": json.dumps({"conn_type": "spark", "host": "local[2]"}),
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO / "plugins"),
        "PYSPARK_PYTHON": sys.executable,
        "DVC_NO_ANALYTICS": "1",
    }


def make_workspace(root: Path, per_class: int, *params: str, scm: bool = False) -> Path:
    """A DVC workspace like a user's clone (dvc.yaml, params.yaml with :data:`WORKSPACE_PARAMS`
    and then ``params``) with a 3-class tree of ``per_class`` images each in ``root/src``; under
    git when ``scm`` (as a clone is), else DVC alone (``--no-scm``)."""
    root.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", "params.yaml"):
        shutil.copy(REPO / name, root / name)
    # The stages' code dependencies, as in a clone (the code that runs is the packaged zip).
    shutil.copytree(REPO / "spark_jobs", root / "spark_jobs", ignore=shutil.ignore_patterns("__pycache__"))
    versioning.record_params(root, [*WORKSPACE_PARAMS, *params])
    write_class_tree(root / "src", 3, per_class)
    if scm:
        git(root, "init", "-q")
    subprocess.run([str(BIN / "dvc"), "init", "-q", *([] if scm else ["--no-scm"])], cwd=root, check=True)
    return root


def git(repo: Path, *args: str) -> None:
    """``git`` in ``repo`` with a committer identity of its own."""
    subprocess.run(
        ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def _stage_command(stage: str, py_files: Path, overrides: Sequence[str]) -> list[str]:
    return [sys.executable, str(RUN_STAGE), stage, str(py_files), json.dumps(list(overrides))]


def run_stage(
    env: dict[str, str], stage: str, py_files: Path, *overrides: str, timeout: float
) -> subprocess.CompletedProcess:
    """The stage task of ``stage`` (see run_stage.py) run to its end: its output captured."""
    cmd = _stage_command(stage, py_files, overrides)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def start_stage(env: dict[str, str], stage: str, py_files: Path, *overrides: str, log: Path) -> subprocess.Popen:
    """The stage task of ``stage`` (see run_stage.py) started in a process group of its own (stop it
    with spark-submit and the driver by :func:`tests.processes.stop_group`), its output to ``log``."""
    with log.open("w") as out:
        cmd = _stage_command(stage, py_files, overrides)
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=out, start_new_session=True)
