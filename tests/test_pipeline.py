"""dvc.yaml, params.yaml and spark_jobs agree; `dvc repro` is incremental stage by stage."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from spark_jobs.config import load_config
from tests.factories import REPO


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_every_stage_is_a_module_with_a_params_section() -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in _stages().items():
        assert stage["cmd"] == f"python -m spark_jobs.{name}"
        assert (REPO / "spark_jobs" / f"{name}.py").exists()
        assert f"spark_jobs/{name}.py" in stage["deps"]
        assert name in params, f"params.yaml has no section for stage {name}"


def test_every_stage_param_exists() -> None:
    tree = load_config(REPO / "params.yaml").model_dump(mode="json")
    for name, stage in _stages().items():
        for key in stage.get("params", []):
            node = tree
            for part in key.split("."):
                assert part in node, f"stage {name} lists param {key}, which params.yaml does not define"
                node = node[part]


def test_stage_code_deps_exist() -> None:
    for stage in _stages().values():
        for dep in stage["deps"]:
            if dep.startswith("spark_jobs/"):
                assert (REPO / dep).exists(), dep


def test_features_depend_on_ingest_output_and_the_backbone_file() -> None:
    stages = _stages()
    assert "${data.root}/ingest" in stages["features"]["deps"]
    assert "${features.cnn.backbone}" in stages["features"]["deps"]
    assert "${data.root}/ingest" in stages["backbone"]["deps"]
    params = load_config(REPO / "params.yaml")
    # the default backbone file is what the backbone stage writes, so `dvc repro` can build it
    assert params.features.cnn.backbone.startswith(params.backbone.output + "/")
    assert params.features.kind == "classical"  # the default pipeline reads no backbone file


def _dvc(workspace: Path, *args: str) -> str:
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run(
        [str(Path(bin_dir) / "dvc"), *args], cwd=workspace, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_dvc_repro_is_incremental(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, workspace / name)
    shutil.copytree(REPO / "spark_jobs", workspace / "spark_jobs", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["spark"]["master"] = "local[2]"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc(workspace, "init", "--no-scm", "-q")
    _dvc(workspace, "config", "core.analytics", "false")

    first = _dvc(workspace, "repro")
    for stage in ("sample", "ingest", "backbone", "features"):
        assert f"Running stage '{stage}'" in first
    assert (workspace / "data" / "ingest" / "_manifest.json").exists()
    made = yaml.safe_load((workspace / "data" / "features" / "_manifest.json").read_text())
    assert made["counts"]["rows"] == 1797
    assert made["counts"]["dim"] == params["features"]["classical"]["pca_k"]
    assert (workspace / "models" / "backbone" / "backbone.pt2").exists()

    second = _dvc(workspace, "repro")
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second

    params["ingest"]["image_size"] = 16
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    third = _dvc(workspace, "repro")
    assert "Stage 'sample' didn't change, skipping" in third
    assert "Running stage 'ingest'" in third
    done = yaml.safe_load((workspace / "data" / "ingest" / "_manifest.json").read_text())
    assert done["params"]["ingest"]["image_size"] == 16
    assert done["counts"]["rows"] == 1797

    params["features"]["classical"]["pca_k"] = 24
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    fourth = _dvc(workspace, "repro")
    for stage in ("sample", "ingest", "backbone"):
        assert f"Stage '{stage}' didn't change, skipping" in fourth
    assert "Running stage 'features'" in fourth
    redone = yaml.safe_load((workspace / "data" / "features" / "_manifest.json").read_text())
    assert redone["counts"]["dim"] == 24
