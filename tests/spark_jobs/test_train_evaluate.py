"""The train and evaluate stages on real ingested images: every model kind, the cards, the model
gate (promote a good model, reject a bad one), metrics against scikit-learn's, a killed run resumed."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from sklearn import metrics as skm

from spark_jobs import evaluate, features, train
from spark_jobs.core.config import params_hash
from spark_jobs.ml import cards, drift, extractors, models, training
from spark_jobs.ml.mllib import TRANSFORM, mllib_classifier
from spark_jobs.params import Config
from tests.conftest import INGESTED_CLASSES
from tests.factories import REPO, SMALL_MODELS, link_ingest, with_overrides

pytestmark = pytest.mark.spark


def _card_json(folder: Path) -> dict:
    """A model's card as the JSON on disk (the stages read it typed, through spark_jobs.ml.cards)."""
    return json.loads((folder / cards.CARD).read_text())


def _config(ingested: Path, tmp_path: Path, *overrides: str) -> Config:
    where = [
        f"train.output={tmp_path / 'models'}",
        f"evaluate.reports={tmp_path / 'reports'}",
        f"evaluate.champion={tmp_path / 'models' / 'champion'}",
        f"evaluate.rejected={tmp_path / 'models' / 'rejected'}",
    ]
    return link_ingest(ingested, tmp_path, *SMALL_MODELS, *where, *overrides)


@pytest.fixture(scope="module")
def mllib_workspace(spark, ingested: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Config, Path]:
    """Features of the ingested fixture and an MLlib model trained on them."""
    tmp = tmp_path_factory.mktemp("mllib")
    cfg = _config(ingested, tmp, "train.model=mllib")
    features.run(cfg, spark)
    return cfg, train.run(cfg, spark)


def test_mllib_model_is_saved_with_its_transform_and_card(spark, mllib_workspace) -> None:
    _, folder = mllib_workspace
    card = _card_json(folder)
    assert card["kind"] == "mllib"
    assert card["task"] == "classifier"
    assert card["classes"] == [str(c) for c in range(INGESTED_CLASSES)]
    assert card["image_size"] == 32
    assert card["ingest_settings"]["image_size"] == 32
    assert card["feature_kind"] == "classical"
    assert card["arch"]["dim"] == 8
    assert card["val_accuracy"] > 0.8
    assert card["params"]["mllib"]["classifier"] == "logistic_regression"
    assert "cnn" not in card["params"]
    assert "autoencoder" not in card["params"]
    assert card["data"]["features_manifest_sha256"]
    assert card["data"]["ingest_manifest_sha256"]
    assert card["job_version"]
    assert card["timings"]["work_s"] > 0
    assert card["timings"]["total_s"] >= card["timings"]["read_s"] + card["timings"]["work_s"]
    assert card["spark"]["task_metrics"]["total"]["executor_run_time_ms"] > 0  # the fit's Spark jobs
    assert card["version"].startswith("mllib-")
    # MLlib's own format, and the features stage's transform it needs to score new images
    assert (folder / "classifier" / "metadata").is_dir()
    assert (folder / TRANSFORM).is_dir()
    assert (folder / extractors.EXTRACTOR).exists()
    assert mllib_classifier(folder).numClasses == INGESTED_CLASSES
    assert not list(folder.parent.glob(".*.tmp"))
    # the drift reference: the features table's PCA vectors of the train split, every class in it
    reference = cards.read_card(folder).reference
    vectors, labels = drift.read_reference(folder, reference)
    assert (reference.layer, vectors.shape[1]) == ("pca", 8)
    assert reference.per_class == {c: labels.count(c) for c in sorted(set(labels))}
    assert sorted(reference.per_class) == card["classes"]
    assert card["params"]["drift"] == {"reference_rows": 1000}


def test_class_weighting_reaches_the_mllib_estimator(spark, mllib_workspace, tmp_path: Path) -> None:
    cfg, folder = mllib_workspace
    counts = _card_json(folder)["class_counts"]
    expected = training.class_weights(counts, sorted(counts), "balanced", 1.5)
    weighted = train.run(with_overrides(cfg, "train.class_weighting=balanced", f"train.output={tmp_path}"), spark)
    card = _card_json(weighted)
    assert card["class_weights"] == pytest.approx(expected)
    assert card["params"]["class_weighting"] == "balanced"
    lr = mllib_classifier(weighted)
    assert lr.getOrDefault("weightCol") == "weight"
    unweighted = _card_json(folder)
    if max(counts.values()) <= 1.5 * min(counts.values()):  # auto: not skewed enough to weight
        assert unweighted["class_weights"] is None
        assert not mllib_classifier(folder).isSet("weightCol")


def _sklearn_figures(confusion_csv: Path) -> dict:
    with confusion_csv.open() as f:
        rows = list(csv.DictReader(f))
    actual, predicted = [r["actual"] for r in rows], [r["predicted"] for r in rows]
    labels = sorted(set(actual))
    p, r, f1, support = skm.precision_recall_fscore_support(actual, predicted, labels=labels, zero_division=0)
    return {
        "accuracy": skm.accuracy_score(actual, predicted),
        "macro_f1": skm.f1_score(actual, predicted, labels=labels, average="macro", zero_division=0),
        "per_class": {c: (p[i], r[i], f1[i], support[i]) for i, c in enumerate(labels)},
        "rows": len(rows),
    }


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_evaluate_promotes_a_good_model_with_metrics_equal_to_sklearns(spark, mllib_workspace, tmp_path) -> None:
    cfg, _ = mllib_workspace
    cfg = with_overrides(cfg, "evaluate.models=[mllib]", f"evaluate.reports={tmp_path / 'reports'}")
    reports = evaluate.run(cfg, spark)

    doc = json.loads((reports / evaluate.EVALUATION).read_text())
    mllib = doc["models"]["mllib"]
    assert mllib["gate"] == "passed"
    assert mllib["promoted"]
    assert mllib["challenger"]
    assert doc["champion"]["kind"] == "mllib"
    assert doc["accuracy"] == mllib["accuracy"] >= cfg.gate.model.min_accuracy
    assert doc["gate"]["success"]

    expected = _sklearn_figures(reports / "plots" / "mllib" / "confusion.csv")
    assert expected["rows"] == mllib["test_rows"]
    assert mllib["accuracy"] == pytest.approx(expected["accuracy"])
    assert mllib["macro_f1"] == pytest.approx(expected["macro_f1"])
    for label, (p, r, f1, support) in expected["per_class"].items():
        got = mllib["per_class"][label]
        assert (got["precision"], got["recall"], got["f1"]) == pytest.approx((p, r, f1))
        assert got["support"] == support
    with (reports / "plots" / "mllib" / "classes.csv").open() as f:
        assert [r["class"] for r in csv.DictReader(f)] == sorted(expected["per_class"])
    png = reports / "figures" / "confusion_mllib.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    champion = Path(cfg.evaluate.champion) / "classifier"
    promotion = json.loads((champion / cards.PROMOTION).read_text())
    assert promotion["version"] == mllib["version"]
    assert promotion["kind"] == "mllib"
    assert _card_json(champion)["version"] == mllib["version"]
    assert mllib_classifier(champion).numClasses == INGESTED_CLASSES


def test_cnn_trains_across_ranks_and_a_zero_epoch_model_is_rejected(spark, mllib_workspace, tmp_path) -> None:
    cfg, _ = mllib_workspace
    # Two ranks as Spark barrier tasks on the executors (local[2] has two slots), as on a cluster.
    cfg = with_overrides(cfg, "train.model=cnn", "train.local_mode=false", f"evaluate.reports={tmp_path / 'reports'}")
    assert cfg.train.num_processes == 2
    folder = train.run(cfg, spark)
    card = _card_json(folder)
    assert card["kind"] == "cnn"
    assert card["architecture"] == "small_cnn_classifier"
    assert card["training"]["world_size"] == 2
    assert card["training"]["local_mode"] is False
    assert card["training"]["train_rows"] > 0
    assert card["training"]["val_rows"] > 0
    assert len(card["training"]["history"]) == 15
    losses = [h["train_loss"] for h in card["training"]["history"]]
    assert losses[-1] < losses[0]
    assert card["training"]["best_val"] > 0.8  # chance is 1/3
    weights = torch.load(folder / cards.WEIGHTS, weights_only=True)  # a state dict, not a pickled object
    net = models.build(card["architecture"], card["arch"])
    net.load_state_dict(weights)
    # its drift reference: the backbone's output (what the head reads) for a class-stratified
    # sample of the train split, at most drift.reference_rows, seeded
    reference = cards.read_card(folder).reference
    vectors, labels = drift.read_reference(folder, reference)
    assert reference.layer == "backbone"
    assert vectors.shape == (card["training"]["train_rows"], net[2].in_features)  # fewer than 1,000: all
    assert reference.per_class == card["class_counts"] == {c: labels.count(c) for c in card["classes"]}
    assert not list(Path(cfg.data.root).glob(".checkpoints/cnn-*"))  # cleared once finished

    good = evaluate.run(with_overrides(cfg, "evaluate.models=[mllib,cnn]"), spark)
    doc = json.loads((good / evaluate.EVALUATION).read_text())
    assert {m["gate"] for m in doc["models"].values()} == {"passed"}
    int8 = doc["models"]["cnn"]["int8"]  # the INT8 copy's accuracy, next to FP32's
    assert int8["accuracy"] == pytest.approx(doc["models"]["cnn"]["accuracy"] - int8["accuracy_drop"])
    assert int8["accuracy"] > 0.8
    cascade = doc["cascade"]
    assert cascade["test_rows"] == doc["models"]["cnn"]["test_rows"]
    assert 0.0 <= cascade["heavy_fraction"] <= 1.0
    assert cascade["confidence"] == cfg.score.cascade.confidence
    best = max(doc["models"], key=lambda k: doc["models"][k]["accuracy"])
    assert doc["champion"]["kind"] == best
    assert doc["accuracy"] == doc["models"][best]["accuracy"]
    champion_before = json.loads((Path(cfg.evaluate.champion) / "classifier" / cards.PROMOTION).read_text())

    untrained = train.run(with_overrides(cfg, "train.cnn.epochs=0"), spark)
    assert _card_json(untrained)["training"]["history"] == []
    bad = with_overrides(cfg, "evaluate.models=[cnn]", f"evaluate.reports={tmp_path / 'bad'}")
    # The gate decides the promotion only: the run succeeds, its figures and verdict recorded.
    assert evaluate.run(bad, spark) == tmp_path / "bad"
    doc = json.loads((tmp_path / "bad" / evaluate.EVALUATION).read_text())
    assert doc["models"]["cnn"]["gate"] == "failed"
    headline = json.loads((tmp_path / "bad" / evaluate.METRICS).read_text())
    assert headline["cnn"]["passed"] is False  # the headline figures say so, and no version string
    assert headline["accuracy"] == champion_before["metrics"]["accuracy"]  # the champion's, unchanged
    # The gate's page shows the images behind the verdict; the predictions file names every one.
    page = (Path(cfg.data.root) / "gates" / "evaluate" / "report.html").read_text()
    assert "cnn: misclassified test images" in page
    wrong = sum(1 for r in _rows(tmp_path / "bad" / "plots" / "cnn" / "predictions.csv") if r["correct"] == "False")
    assert wrong > 0
    assert page.count("data:image/png;base64,") >= min(wrong, 48)
    assert "FAILED" in page
    assert not doc["models"]["cnn"]["promoted"]
    assert doc["champion"]["version"] == champion_before["version"]
    after = json.loads((Path(cfg.evaluate.champion) / "classifier" / cards.PROMOTION).read_text())
    assert after == champion_before
    kept = Path(cfg.evaluate.rejected) / _card_json(untrained)["version"]
    assert (kept / cards.WEIGHTS).exists()
    assert json.loads((kept / "metrics.json").read_text())["gate"] == "failed"
    assert "FAILED cnn" in (kept / "gate_summary.txt").read_text()


def test_autoencoder_scores_the_held_out_class_as_anomalous(spark, mllib_workspace, tmp_path) -> None:
    cfg, _ = mllib_workspace
    cfg = with_overrides(
        cfg,
        "train.model=autoencoder",
        "train.num_processes=1",
        "train.local_mode=true",
        "train.autoencoder.epochs=15",
        f"train.output={tmp_path / 'models'}",
        f"evaluate.reports={tmp_path / 'reports'}",
        f"evaluate.champion={tmp_path / 'champion'}",
        "evaluate.models=[autoencoder]",
        "gate.model.min_auroc=0.0",
    )
    folder = train.run(cfg, spark)
    card = _card_json(folder)
    assert card["task"] == "anomaly"
    assert card["exclude_classes"] == ["2"]
    assert card["threshold"] > 0
    assert card["threshold_percentile"] == 95
    reference = card["reference"]  # the bottleneck of what it trained on: never the held-out class
    assert (reference["layer"], reference["dim"]) == ("latent", card["arch"]["latent"])
    assert sorted(reference["per_class"]) == ["0", "1"]

    reports = evaluate.run(cfg, spark)
    result = json.loads((reports / evaluate.EVALUATION).read_text())["models"]["autoencoder"]
    with (reports / "plots" / "autoencoder" / "roc.csv").open() as f:
        roc = [(float(r["fpr"]), float(r["tpr"])) for r in csv.DictReader(f)]
    assert result["auroc"] == pytest.approx(skm.auc([p[0] for p in roc], [p[1] for p in roc]), abs=1e-6)
    assert result["auroc"] > 0.5  # the held-out bar position reconstructs worse than the trained ones
    assert 0 <= result["false_alarm_rate"] <= 1
    assert result["anomalies"] > 0
    promotion = json.loads((Path(cfg.evaluate.champion) / "anomaly" / cards.PROMOTION).read_text())
    assert promotion["kind"] == "autoencoder"


def _descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@pytest.mark.slow
def test_a_killed_training_run_resumes_from_its_checkpoint(spark, mllib_workspace, tmp_path: Path) -> None:
    """SIGKILL to the whole job (driver, JVM, Python workers, torch ranks) after its second
    checkpoint; the same command again resumes there and ends with every epoch. The run fine-tunes
    a backbone (train.cnn.init, one frozen epoch): the plain cnn's loop with a starting point."""
    cfg, _ = mllib_workspace
    epochs = 8
    init = tmp_path / "backbone.pt"
    torch.manual_seed(1)
    torch.save(models.small_cnn(16).state_dict(), init)
    args = [
        sys.executable,
        "-m",
        "spark_jobs.train",
        *[f"--set={o}" for o in SMALL_MODELS],
        f"--set=data.root={cfg.data.root}",
        "--set=spark.master=local[2]",
        "--set=train.model=cnn",
        f"--set=train.cnn.epochs={epochs}",
        f"--set=train.cnn.init={init}",
        "--set=train.cnn.init_architecture=small_cnn",
        "--set=train.cnn.freeze_epochs=1",
        f"--set=train.output={tmp_path / 'models'}",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable}
    checkpoints = Path(cfg.data.root) / ".checkpoints"
    proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        state = None
        while time.monotonic() < deadline and proc.poll() is None:
            found = list(checkpoints.glob(f"cnn-*/{training.STATE}"))
            if found and torch.load(found[0], weights_only=True)["epoch"] >= 2:
                state = found[0]
                break
            time.sleep(0.2)
        assert state is not None, f"no checkpoint of epoch 2 (rc {proc.poll()}): {proc.stderr.read()[-3000:]}"
        victims = [proc, *_descendants(proc.pid)]
        for p in victims:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    killed_at = torch.load(state, weights_only=True)["epoch"]
    assert 2 <= killed_at < epochs
    assert not (tmp_path / "models" / "cnn").exists()  # nothing half-trained was published

    done = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resuming from the checkpoint" in done.stderr
    card = _card_json(tmp_path / "models" / "cnn")
    assert card["training"]["resumed_from_epoch"] >= killed_at
    assert [h["epoch"] for h in card["training"]["history"]] == list(range(1, epochs + 1))
    assert card["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert (card["architecture"], card["arch"]["width"]) == ("small_cnn_classifier", 16)
    assert not state.parent.exists()  # a finished run clears its checkpoints


def test_checkpoint_folder_follows_the_params(ingested: Path, tmp_path: Path) -> None:
    cfg = _config(ingested, tmp_path, "train.model=cnn")
    spec = train.torch_spec(cfg, "cnn", ["0", "1", "2"], None, ingested, ingested)
    same = train.torch_spec(cfg, "cnn", ["0", "1", "2"], None, ingested, ingested)
    longer = with_overrides(cfg, "train.cnn.epochs=7")
    other = train.torch_spec(longer, "cnn", ["0", "1", "2"], None, ingested, ingested)
    assert training.checkpoint_dir(cfg.data.root, spec) == training.checkpoint_dir(cfg.data.root, same)
    assert training.checkpoint_dir(cfg.data.root, spec) != training.checkpoint_dir(cfg.data.root, other)
    assert params_hash(spec.model_dump(mode="json")) != params_hash(other.model_dump(mode="json"))


def test_the_pointing_file_is_checked_in_one_line(tmp_path: Path) -> None:
    from spark_jobs.core.config import ConfigError

    with pytest.raises(ConfigError, match="cannot read it"):
        evaluate.read_cells(str(tmp_path / "missing.csv"))
    (tmp_path / "cells.csv").write_text("image_id,label\nabc,0\n")
    with pytest.raises(ConfigError, match="has no cell_x0, cell_y0, cell_x1, cell_y1 column"):
        evaluate.read_cells(str(tmp_path / "cells.csv"))
    (tmp_path / "cells.csv").write_text("image_id,label,cell_x0,cell_y0,cell_x1,cell_y1\n007,0,0,0,32,32\n")
    assert evaluate.read_cells(str(tmp_path / "cells.csv"))["image_id"].tolist() == ["007"]  # ids stay text
