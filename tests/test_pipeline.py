"""dvc.yaml, params.yaml and spark_jobs agree; `dvc repro` is incremental stage by stage."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml

from spark_jobs.params import load
from tests.factories import REPO, dvc_view
from tests.openlineage_events import of_job, problems, read_events
from tests.orchestration import browser


def _stages() -> dict:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


# Each pipeline: its dvc.yaml, the params file its stages read, and spark_jobs/ from its folder.
PIPELINES = {
    "dvc.yaml": ("params.yaml", ""),
    "grids/dvc.yaml": ("grids/params.yaml", "../"),
    "find/dvc.yaml": ("find/params.yaml", "../"),
}


def _expanded(dvcfile: str = "dvc.yaml") -> dict[str, tuple[str, dict]]:
    """``{stage name as DVC shows it: (module, definition)}`` as DVC reads ``dvcfile`` (``foreach``
    stages expanded as ``train@cnn``, every ``${...}`` filled in from its params.yaml)."""
    return {name: (name.partition("@")[0], stage) for name, stage in dvc_view(REPO, dvcfile).items()}


@pytest.mark.parametrize("dvcfile", sorted(PIPELINES))
def test_every_stage_is_a_module_with_a_params_section(dvcfile: str) -> None:
    params_file, prefix = PIPELINES[dvcfile]
    params = yaml.safe_load((REPO / params_file).read_text())
    for name, (module, stage) in _expanded(dvcfile).items():
        assert stage["cmd"].split(" --set ")[0] == f"python -m spark_jobs.{module}", name
        assert (REPO / "spark_jobs" / f"{module}.py").exists()
        assert f"{prefix}spark_jobs/{module}.py" in stage["deps"]
        assert module in params, f"{params_file} has no section for stage {module}"


@pytest.mark.parametrize("dvcfile", sorted(PIPELINES))
def test_every_stage_param_exists(dvcfile: str) -> None:
    params_file, _ = PIPELINES[dvcfile]
    tree = load(REPO / params_file).model_dump(mode="json")
    raw = yaml.safe_load((REPO / params_file).read_text())
    for name, (_, stage) in _expanded(dvcfile).items():
        for key in stage.get("params", []):
            node, written = tree, raw
            for part in key.split("."):
                assert part in node, f"stage {name} lists param {key}, which params.yaml does not define"
                # DVC reads the file itself: a tracked key must be written there, not a default
                assert part in written, f"stage {name} tracks {key}, which {params_file} does not write"
                node, written = node[part], written[part]


def _leaves(tree: dict, prefix: str = "") -> set[str]:
    out: set[str] = set()
    for key, value in tree.items():
        path = f"{prefix}{key}"
        out |= _leaves(value, path + ".") if isinstance(value, dict) and value else {path}
    return out


# The sections each stage's manifest records (spark_jobs/<stage>.py: run.manifest(cfg.section(...))).
MANIFEST_SECTIONS = {
    "ingest": ("ingest", "gate.raw", "data"),
    "features": ("features", "gate.features", "data"),
    "evaluate": ("evaluate", "gate.model", "data"),
    "score": ("score", "gate.predictions", "data"),
}


@pytest.mark.parametrize("dvcfile", sorted(PIPELINES))
def test_no_stage_lists_a_speed_only_param(dvcfile: str) -> None:
    from spark_jobs.core.config import SPEED_ONLY

    for name, (_, stage) in _expanded(dvcfile).items():
        for key in stage.get("params", []):
            hit = [s for s in SPEED_ONLY if s == key or s.startswith(key + ".")]
            assert not hit, f"stage {name} lists {key}, which holds speed-only {hit}: changing them would re-run it"


@pytest.mark.parametrize(("dvcfile", "stage"), [(f, s) for f in sorted(PIPELINES) for s in sorted(MANIFEST_SECTIONS)])
def test_a_manifest_records_exactly_the_params_dvc_tracks(dvcfile: str, stage: str) -> None:
    cfg = load(REPO / PIPELINES[dvcfile][0])
    recorded: set[str] = set()
    for section, tree in cfg.section(*MANIFEST_SECTIONS[stage]).items():
        recorded |= _leaves(tree, section + ".") if isinstance(tree, dict) else {section}
    tops = {section.split(".")[0] for section in MANIFEST_SECTIONS[stage]}
    tracked = [k for k in _expanded(dvcfile)[stage][1]["params"] if k.split(".")[0] in tops]
    uncovered = [leaf for leaf in recorded if not any(leaf == k or leaf.startswith(k + ".") for k in tracked)]
    assert not uncovered, f"{stage}'s manifest records {uncovered}, which dvc.yaml does not track"
    unrecorded = [k for k in tracked if not any(leaf == k or leaf.startswith(k + ".") for leaf in recorded)]
    assert not unrecorded, f"dvc.yaml tracks {unrecorded} for {stage}, which its manifest does not record"


@pytest.mark.parametrize("dvcfile", sorted(PIPELINES))
def test_stage_code_deps_exist(dvcfile: str) -> None:
    folder = (REPO / dvcfile).parent
    for _, stage in _expanded(dvcfile).values():
        for dep in stage["deps"]:
            if "spark_jobs/" in dep:
                assert (folder / dep).exists(), dep


@pytest.mark.parametrize("dvcfile", sorted(PIPELINES))
def test_train_stages_are_the_evaluated_models(dvcfile: str) -> None:
    from spark_jobs.ml.cards import TILE_KINDS

    stages = _expanded(dvcfile)
    params = load(REPO / PIPELINES[dvcfile][0])
    trained = {name.split("@")[1] for name in stages if name.startswith("train@")}
    assert trained == set(params.evaluate.models) | set(params.evaluate.baselines)
    for kind in trained:
        _, stage = stages[f"train@{kind}"]
        assert stage["cmd"] == f"python -m spark_jobs.train --set train.model={kind}"
        assert f"train.{'tiles' if kind in TILE_KINDS else kind}" in stage["params"]
        assert stage["outs"] == [f"{params.train.output}/{kind}"]
        assert f"{params.train.output}/{kind}" in stages["evaluate"][1]["deps"]
        reads = "features" if kind == "mllib" or kind in TILE_KINDS else "ingest"
        assert f"{params.data.root}/{reads}" in stage["deps"]


def test_features_depend_on_ingest_output_and_the_backbone_file() -> None:
    stages = _stages()
    assert "${data.root}/ingest" in stages["features"]["deps"]
    assert "${features.cnn.backbone}" in stages["features"]["deps"]
    assert "${data.root}/ingest" in stages["backbone"]["deps"]
    params = load(REPO / "params.yaml")
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


def _columns(doc: dict, prefix: str = "") -> dict:
    """A metrics file's values by dotted key, as ``dvc exp show`` makes columns of them."""
    out = {}
    for key, value in doc.items():
        if isinstance(value, dict):
            out.update(_columns(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.slow
def _lineage_of_the_run(workspace: Path, scored: Path, champion: str) -> None:
    """OpenLineage's file transport under data/lineage/: a START and a COMPLETE for every stage that
    ran, each COMPLETE naming its inputs and outputs, every event valid for the client's spec; and
    ``python -m spark_jobs.lineage`` of a scored image names the champion and the ingest run."""
    events = read_events(workspace / "data" / "lineage")
    assert [p for e in events for p in problems(e)] == []
    trained = {f"train.{kind}" for kind in ("mllib", "cnn", "autoencoder")}
    for job in {"sample", "ingest", "backbone", "features", "evaluate", "score"} | trained:
        assert [e["eventType"] for e in of_job(events, job)] == ["START", "COMPLETE"], job
        [complete] = of_job(events, job, "COMPLETE")
        assert complete["outputs"], job
        assert complete["inputs"] or job == "sample", job  # the sample is made, not read
    [evaluated] = of_job(events, "evaluate", "COMPLETE")  # the champions it promoted are its outputs too
    assert str(workspace / "models" / "champion" / "classifier") in {o["name"] for o in evaluated["outputs"]}
    image_id = pq.read_table(scored).column("image_id")[0].as_py()
    command = [sys.executable, "-m", "spark_jobs.lineage", image_id, "--json"]
    shown = subprocess.run(command, cwd=workspace, capture_output=True, text=True, check=True, timeout=120)
    links = {link["step"]: link for link in json.loads(shown.stdout)}
    assert [link["missing"] for link in links.values()] == [None] * len(links), shown.stdout
    assert links["model"]["facts"]["version"] == champion
    ingest = json.loads((workspace / "data" / "ingest" / "_manifest.json").read_text())
    assert links["ingest"]["facts"]["run_id"] == ingest["run_id"]


def test_dvc_repro_runs_the_pipeline_and_is_incremental(tmp_path: Path) -> None:
    """A fresh workspace: ``dvc repro`` runs sample -> ingest -> features -> train (3 models) ->
    evaluate with the default params and reaches the quality bars; a second run does nothing, and
    after a params change DVC's status names only the stages whose params changed."""
    workspace = tmp_path / "ws"
    workspace.mkdir()
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(REPO / name, workspace / name)
    shutil.copytree(REPO / "spark_jobs", workspace / "spark_jobs", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["spark"]["master"] = "local[2]"
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    _dvc(workspace, "init", "--no-scm", "-q")
    # As a clone's .dvc/: the offline plots page, named in its config.
    shutil.copy(REPO / ".dvc" / "offline-plots.html", workspace / ".dvc" / "offline-plots.html")
    _dvc(workspace, "config", "plots.html_template", "offline-plots.html")
    _dvc(workspace, "config", "core.analytics", "false")

    first = _dvc(workspace, "repro")
    for stage in ("sample", "ingest", "backbone", "features", "train@mllib", "train@cnn", "train@autoencoder"):
        assert f"Running stage '{stage}'" in first
    assert "Running stage 'evaluate'" in first
    assert "Running stage 'score'" in first
    made = yaml.safe_load((workspace / "data" / "features" / "_manifest.json").read_text())
    assert made["counts"]["rows"] == 1797
    assert made["counts"]["dim"] == params["features"]["classical"]["pca_k"]
    assert (workspace / "models" / "backbone" / "backbone.pt2").exists()

    # The issue's quality bars on the digits' test split (seed 0, default params).
    doc = json.loads((workspace / "reports" / "evaluation.json").read_text())
    figures = doc["models"]
    assert figures["cnn"]["accuracy"] >= 0.985, figures["cnn"]["accuracy"]
    assert figures["mllib"]["accuracy"] >= 0.96, figures["mllib"]["accuracy"]
    assert figures["autoencoder"]["auroc"] >= params["gate"]["model"]["min_auroc"]
    best = max(("mllib", "cnn"), key=lambda k: figures[k]["accuracy"])
    assert doc["champion"]["kind"] == best
    assert doc["accuracy"] == figures[best]["accuracy"]
    assert (workspace / "models" / "champion" / "classifier" / "promotion.json").exists()
    assert (workspace / "models" / "champion" / "anomaly" / "promotion.json").exists()
    shown = json.loads(_dvc(workspace, "metrics", "show", "--json"))
    headline = shown[""]["data"]["reports/metrics.json"]["data"]
    assert headline["accuracy"] == doc["accuracy"]
    flat = _columns(headline)  # what dvc exp show puts in columns: a few numbers, no version strings
    assert len(flat) <= 25, sorted(flat)
    assert all(v is None or isinstance(v, int | float) for v in flat.values()), flat
    _dvc(workspace, "plots", "show", "-o", str(tmp_path / "plots"))
    assert (tmp_path / "plots" / "index.html").exists()
    if browser.available() is None:  # the page renders offline: its scripts are inlined (.dvc/config)
        drawn = browser.open_offline(tmp_path / "plots" / "index.html", tmp_path / "plots.png")
        assert drawn["refused"] == [], drawn
        assert drawn["errors"] == [], drawn
        assert drawn["vega_views"] >= 4, drawn  # two confusion matrices, per-class F1, the ROC
        assert drawn["images"] == 2, drawn  # the two classifiers' confusion matrices as pictures
        assert drawn["broken"] == 0, drawn

    # The sample inbox, scored once by the champion; its two unusable files quarantined.
    runs = sorted((workspace / "data" / "predictions").glob("run_date=*/run_id=*"))
    assert len(runs) == 1
    scored = yaml.safe_load((runs[0] / "_manifest.json").read_text())
    assert scored["counts"]["scored"] == 120
    assert scored["counts"]["quarantined"] == 2
    assert scored["inputs"]["model"]["version"] == doc["champion"]["version"]
    _lineage_of_the_run(workspace, runs[0], doc["champion"]["version"])

    second = _dvc(workspace, "repro")
    assert "Running stage" not in second
    assert "Data and pipelines are up to date" in second

    # Params changes: DVC's own status names exactly the stages whose params changed (features for
    # its PCA size, ingest for its image size), not the sample or the models; that each stage
    # honours its params is tested with the stage itself (test_features, test_train_evaluate: the
    # vectors' and the mllib card's dim follow pca_k).
    # Speed-only knobs re-run nothing.
    params["ingest"]["fetch_threads"] = 3
    params["features"]["cnn"]["threads"] = 2
    params["score"]["batch_size"] = 7
    params["data"]["lock_wait_s"] = 5
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    assert json.loads(_dvc(workspace, "status", "--json")) == {}
    params["features"]["classical"]["pca_k"] = 24
    params["ingest"]["image_size"] = 16
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(_dvc(workspace, "status", "--json"))
    assert status == {
        "ingest": [{"changed deps": {"params.yaml": {"ingest.image_size": "modified"}}}],
        "features": [{"changed deps": {"params.yaml": {"features.classical": "modified"}}}],
    }

    # A failed run leaves the workspace as it found it, but for its own rejected output and report:
    # the stages' outputs are `persist` (DVC does not delete them first; the stage replaces them
    # atomically, or not at all), ignore files and dvc.lock untouched.
    # (This workspace has no git, so no ignore files: tests/spark_jobs/core/test_runner.py keeps those.)
    kept = [
        "data/ingest/_manifest.json",
        "data/ingest/_validation.json",
        "dvc.lock",
        "models/champion/classifier/promotion.json",
    ]
    before = {name: (workspace / name).read_bytes() for name in kept}
    params["gate"]["raw"]["min_per_class"] = 10**6
    (workspace / "params.yaml").write_text(yaml.safe_dump(params))
    failed = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "repro", "ingest"],
        cwd=workspace,
        env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"},
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert failed.returncode != 0, failed.stdout[-2000:]
    assert "gate 'ingest' failed: nothing published" in failed.stderr + failed.stdout
    assert {name: (workspace / name).read_bytes() for name in kept} == before
    assert "FAILED" in (workspace / "data" / "gates" / "ingest" / "report.html").read_text()
    assert list((workspace / "data" / "rejected").glob("ingest-*"))


@pytest.mark.parametrize("name", ["params.yaml", "grids/params.yaml", "find/params.yaml"])
def test_params_files_are_written_as_dvc_exp_run_set_param_writes_them(tmp_path: Path, name: str) -> None:
    """``dvc exp run -S key=value`` rewrites params.yaml (DVC's ``apply_overrides``: Hydra's override
    grammar, then DVC's YAML writer): a file in that writer's style comes back with only the value
    changed, so a one-value experiment is a one-line diff."""
    import difflib

    from dvc.utils.hydra import apply_overrides

    copy = tmp_path / "params.yaml"
    original = (REPO / name).read_text()
    copy.write_text(original)
    seed = yaml.safe_load(original)["train"]["seed"]
    apply_overrides(copy, [f"train.seed={seed}"])
    assert copy.read_text() == original
    apply_overrides(copy, [f"train.seed={seed + 1}"])
    changed = [
        line
        for line in difflib.unified_diff(original.splitlines(), copy.read_text().splitlines(), lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    assert changed == [f"-  seed: {seed}", f"+  seed: {seed + 1}"] or len(changed) == 2, changed
