"""Evaluate: score the test split with every model of ``evaluate.models``, gate each, promote the champion.

For each candidate (``<train.output>/<model>/``):

- classifiers (``mllib`` on the features table, ``cnn`` on the ingested pixels): accuracy,
  macro precision/recall/F1, per-class precision/recall/F1 from a confusion matrix counted by
  Spark; plot data for ``dvc plots`` (``plots/<model>/confusion.csv``, one row per test image,
  and ``plots/<model>/classes.csv``) and ``figures/confusion_<model>.png``;
- ``tiles_*`` (an image as its tiles' features, :func:`tiles_predictions`): as classifiers, one
  prediction per test image from its tiles' rows in the features table;
- the ``autoencoder``: AUROC of its reconstruction error for normal test images vs the held-out
  class (MLlib's ``BinaryClassificationEvaluator``), the share flagged at its threshold, and
  ``plots/autoencoder/roc.csv``.

**Model gate** (Great Expectations, thresholds from ``gate.model``): every candidate must reach
``min_accuracy`` and ``min_macro_f1`` (``min_auroc`` for the autoencoder). The best candidate of
each task (accuracy, then macro-F1; AUROC for anomaly models) is the challenger: it must also be
at most ``max_regression`` below the current champion of its task, and when it passes it becomes
the champion: copied with a ``promotion.json`` to ``<evaluate.champion>/classifier/`` (the
autoencoder to ``.../anomaly/``), which scoring reads. A failing candidate is copied to
``<evaluate.rejected>/<version>/`` with its metrics and gate summary, and the stage exits with the
gate's code after writing every report.

``evaluate.baselines``: models evaluated and reported the same way (metrics, plots, figure), for
comparison only: never gated, never promoted (``metrics.json``: ``baselines``).

``<evaluate.reports>/metrics.json``: top-level ``accuracy`` and ``macro_f1`` are the champion's;
``models`` holds every candidate's figures.

    python -m spark_jobs.evaluate [--set evaluate.models=[cnn]]
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from spark_jobs.core import atomic, launch, manifest, runner
from spark_jobs.core.config import TILE_KINDS, Config
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import published, read_features, read_images
from spark_jobs.core.verdict import GateFailed, GateResult
from spark_jobs.ml import inference, metrics
from spark_jobs.ml.cards import CARD, PROMOTION, TASKS, ModelCard, Promotion, model_dir, read_card, read_promotion
from spark_jobs.ml.mllib import mllib_classify
from spark_jobs.quality import gate, suites

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "evaluate"
METRICS = "metrics.json"


def features_test_split(spark: SparkSession, cfg: Config, card: ModelCard) -> DataFrame:
    """The features table's test rows, checked to be of the kind and size ``card``'s model reads."""
    from pyspark.sql import functions as F

    features_dir = published(cfg.data.root, "features")
    trained_on = card.data.features_manifest_sha256
    if trained_on != manifest.file_hash(features_dir / manifest.MANIFEST):
        extractor = json.loads((features_dir / "extractor.json").read_text())
        if extractor.get("dim") != card.feature_dim or extractor.get("kind") != card.feature_kind:
            raise SourceError(
                f"model {card.version} was trained on {card.feature_kind} features of dim "
                f"{card.feature_dim}; {features_dir} now holds {extractor.get('kind')} features of dim "
                f"{extractor.get('dim')}: retrain it (python -m spark_jobs.train --set train.model={card.kind})"
            )
        log.warning("model %s was trained on another features table than %s", card.version, features_dir)
    return read_features(spark, features_dir).where(F.col("split") == "test")


def mllib_predictions(spark: SparkSession, cfg: Config, folder: Path, card: ModelCard) -> DataFrame:
    """``image_id, label, prediction (class index), probability, probabilities`` for the features
    table's test rows."""
    return mllib_classify(folder, features_test_split(spark, cfg, card), card.classes, ("image_id", "label"))


def tiles_predictions(spark: SparkSession, cfg: Config, folder: Path, card: ModelCard) -> DataFrame:
    """A ``tiles_*`` model's outputs and ``tile_count`` for each test image, from its tiles' rows
    of the features table: grouped by image (one shuffle), each image's tiles in raster order."""
    test = features_test_split(spark, cfg, card).select("image_id", "label", "tile_y", "tile_x", "features")
    grouped = test.repartition(cfg.spark.shuffle_partitions, "image_id").sortWithinPartitions(
        "image_id", "tile_y", "tile_x"
    )
    model = inference.TorchModel.from_card(folder, card)
    predictor = inference.Predictor(model, cfg.evaluate.batch_size, cfg.evaluate.threads)
    return grouped.mapInArrow(lambda it: inference.predict_tiles(it, predictor), inference.tiles_schema(predictor))


def torch_predictions(
    spark: SparkSession, cfg: Config, folder: Path, card: ModelCard, quantize: str = "none"
) -> DataFrame:
    """``image_id, label`` and the model's outputs (:class:`inference.Predictor`) for each image of
    the test split; ``quantize="int8"``: of the cnn's static INT8 copy."""
    from pyspark.sql import functions as F

    ingest_dir = published(cfg.data.root, "ingest")
    if card.data.ingest_manifest_sha256 != manifest.file_hash(ingest_dir / manifest.MANIFEST):
        log.warning("model %s was trained on another ingest table than %s", card.version, ingest_dir)
    test = read_images(spark, ingest_dir).where(F.col("split") == "test")
    test = test.select("image_id", "label", "height", "width", "pixels")
    model = inference.TorchModel.from_card(folder, card, quantize)
    predictor = inference.Predictor(model, cfg.evaluate.batch_size, cfg.evaluate.threads)
    return test.mapInArrow(lambda it: inference.predict_batches(it, predictor), inference.predicted_schema(predictor))


def collect(predictions: DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """A model's test predictions on the driver (one Spark job; the test split's labels and
    predictions only, a few numbers an image: every metric and plot is computed from them)."""
    return predictions.select(*columns).toPandas()


def classifier_metrics(predictions: pd.DataFrame, classes: list[str]) -> tuple[dict[str, Any], np.ndarray]:
    """The classification report (:func:`metrics.report`) and confusion matrix of collected
    ``label``/``prediction`` rows; labels the model does not know count as wrong, in an extra
    ``(unknown)`` row."""
    actual, labels = metrics.encoded(predictions["label"].tolist(), classes)
    predicted = predictions["prediction"].to_numpy(dtype=np.int64)
    return metrics.report(actual, predicted, labels), metrics.confusion(actual, predicted, len(labels))


def anomaly_metrics(scored: pd.DataFrame, card: ModelCard) -> tuple[dict[str, Any], list[tuple[float, int]]]:
    """AUROC of normal vs held-out class, share flagged at the card's threshold; and the
    ``(score, is_anomaly)`` pairs for the ROC plot."""
    from sklearn.metrics import roc_auc_score

    holdout = card.exclude_classes
    is_anomaly = scored["label"].isin(holdout).to_numpy()
    score = scored["score"].to_numpy(dtype=float)
    threshold = card.threshold
    n, anomalies = len(scored), int(is_anomaly.sum())
    flagged = score > threshold
    auroc = float(roc_auc_score(is_anomaly, score)) if 0 < anomalies < n else None
    normal = n - anomalies
    return {
        "auroc": auroc,
        "holdout_classes": holdout,
        "threshold": threshold,
        "test_rows": n,
        "anomalies": anomalies,
        "false_alarm_rate": int((flagged & ~is_anomaly).sum()) / normal if normal else None,
        "detection_rate": int((flagged & is_anomaly).sum()) / anomalies if anomalies else None,
    }, list(zip(score.tolist(), is_anomaly.astype(int).tolist(), strict=True))


def write_classifier_plots(
    reports: Path, kind: str, predictions: pd.DataFrame, result: dict, classes: list[str]
) -> None:
    """``plots/<kind>/confusion.csv`` (actual, predicted per test row) and ``classes.csv``."""
    folder = reports / "plots" / kind
    folder.mkdir(parents=True, exist_ok=True)
    rows = predictions[["label", "prediction"]].sort_values(["label", "prediction"], kind="stable")
    with (folder / "confusion.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["actual", "predicted"])
        out.writerows([label, classes[p]] for label, p in rows.itertuples(index=False))
    with (folder / "classes.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["class", "precision", "recall", "f1", "support"])
        for c, m in result["per_class"].items():
            out.writerow([c, round(m["precision"], 6), round(m["recall"], 6), round(m["f1"], 6), m["support"]])


def write_roc(reports: Path, kind: str, pairs: list[tuple[float, int]]) -> None:
    from sklearn.metrics import roc_curve

    folder = reports / "plots" / kind
    folder.mkdir(parents=True, exist_ok=True)
    labels = [p[1] for p in pairs]
    if len(set(labels)) < 2:
        return
    fpr, tpr, _ = roc_curve(labels, [p[0] for p in pairs])
    with (folder / "roc.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["fpr", "tpr"])
        out.writerows(zip(fpr.round(6), tpr.round(6), strict=True))


def confusion_png(path: Path, matrix: np.ndarray, labels: list[str], title: str) -> Path:
    """A confusion-matrix picture (scikit-learn's display, drawn by matplotlib off-screen)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    size = max(4.0, 0.55 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    try:
        ConfusionMatrixDisplay(matrix, display_labels=labels).plot(ax=ax, cmap="Blues", colorbar=False)
        ax.set_title(title)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    finally:
        plt.close(fig)
    return path


def headline(task: str, result: dict[str, Any]) -> float | None:
    """The figure a task's champion is judged by: accuracy, or AUROC for anomaly models."""
    return result.get("auroc") if task == "anomaly" else result.get("accuracy")


def challenger(results: dict[str, dict[str, Any]], task: str) -> str | None:
    """The candidate of ``task`` with the best headline figure (then macro-F1), or None."""
    kinds = [k for k, r in results.items() if r["task"] == task]
    if not kinds:
        return None
    return max(kinds, key=lambda k: (headline(task, results[k]) or 0.0, results[k].get("macro_f1") or 0.0))


def read_champion(cfg: Config, task: str) -> Promotion | None:
    return read_promotion(Path(cfg.evaluate.champion) / task)


def promote(cfg: Config, task: str, kind: str, card: ModelCard, result: dict[str, Any]) -> Promotion:
    """Make a candidate its task's champion; returns the ``promotion.json`` written with it."""
    previous = read_champion(cfg, task)
    target = Path(cfg.evaluate.champion) / task
    if previous and previous.version == card.version and (target / CARD).exists():
        return previous  # already the champion: left as it is, so what depends on it does not rerun
    record = Promotion(
        task=task,
        kind=kind,
        version=card.version,
        metrics={k: v for k, v in result.items() if k != "per_class"},
        promoted_at=manifest.now(),
        replaced=previous.version if previous else None,
        job_version=manifest.job_version(),
    )
    # Staged beside the champions' folder, not inside it (it is a DVC output).
    atomic.copy_dir(model_dir(cfg, kind), target, target.parent.parent / runner.STAGING, {PROMOTION: record})
    return record


def reject(cfg: Config, kind: str, card: ModelCard, result: dict[str, Any], summary: str) -> Path:
    """Keep a failed challenger, with its metrics and gate summary, under ``evaluate.rejected``."""
    target = Path(cfg.evaluate.rejected) / card.version
    extra = {"metrics.json": result, "gate_summary.txt": summary + "\n"}
    return atomic.copy_dir(model_dir(cfg, kind), target, target.parent.parent / runner.STAGING, extra)


def evaluate_model(
    spark: SparkSession, cfg: Config, kind: str, card: ModelCard, reports: Path
) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(metrics, test predictions on the driver)`` of one candidate; writes its plots and picture."""
    folder = model_dir(cfg, kind)
    if kind == "mllib":
        frame = mllib_predictions(spark, cfg, folder, card)
    elif kind in TILE_KINDS:
        frame = tiles_predictions(spark, cfg, folder, card)
    else:
        frame = torch_predictions(spark, cfg, folder, card)
    if card.task == "anomaly":
        predictions = collect(frame, ("image_id", "label", "score"))
        result, pairs = anomaly_metrics(predictions, card)
        write_roc(reports, kind, pairs)
    else:
        predictions = collect(frame, ("image_id", "label", "prediction", "probability"))
        result, matrix = classifier_metrics(predictions, card.classes)
        write_classifier_plots(reports, kind, predictions, result, card.classes)
        labels = list(result["per_class"])
        title = f"{kind} {card.version}: accuracy {result['accuracy']:.4f} on {result['test_rows']} test images"
        confusion_png(reports / "figures" / f"confusion_{kind}.png", matrix, labels, title)
    if kind == "cnn" and cfg.evaluate.int8:
        result["int8"] = int8_metrics(spark, cfg, folder, card, result)
    return {"version": card.version, "task": card.task, **result}, predictions


def cascade_metrics(light: pd.DataFrame, heavy: pd.DataFrame, classes: list[str], confidence: float) -> dict[str, Any]:
    """The ``score.cascade`` on the test split: the mllib prediction where its probability reaches
    ``confidence``, the cnn's elsewhere; accuracy, macro-F1 and the share that reached the cnn."""
    joined = light.merge(heavy[["image_id", "prediction"]], on="image_id", suffixes=("_light", "_heavy"))
    unsure = joined["probability"] < confidence
    decided = pd.DataFrame(
        {"label": joined["label"], "prediction": joined["prediction_heavy"].where(unsure, joined["prediction_light"])}
    )
    result, _ = classifier_metrics(decided, classes)
    return {
        "confidence": confidence,
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "heavy_fraction": round(float(unsure.mean()), 6) if len(unsure) else None,
        "test_rows": result["test_rows"],
    }


def int8_metrics(
    spark: SparkSession, cfg: Config, folder: Path, card: ModelCard, fp32: dict[str, Any]
) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of the cnn's INT8 copy on the test split, and its accuracy cost."""
    if card.files.calibration is None:
        log.warning("%s has no calibration images (trained before INT8 support): no INT8 figures", card.version)
        return None
    frame = torch_predictions(spark, cfg, folder, card, "int8")
    result, _ = classifier_metrics(collect(frame, ("label", "prediction")), card.classes)
    return {
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "accuracy_drop": round(fp32["accuracy"] - result["accuracy"], 6),
    }


def gate_table(
    results: dict[str, dict[str, Any]], champions: dict[str, Promotion | None], challengers: dict[str, Any]
) -> pd.DataFrame:
    """One row per candidate: its figures and, for its task's challenger, the regression vs the
    champion (null otherwise, and when there is no champion yet: GX skips nulls)."""
    rows = []
    for kind, result in results.items():
        task = result["task"]
        champion = champions[task]
        value, best = headline(task, result), headline(task, champion.metrics if champion else {})
        gap = None if champion is None or value is None or best is None else round(best - value, 6)
        result["vs_champion"] = {"version": champion.version, "gap": gap} if champion else None
        result["challenger"] = challengers[task] == kind
        # Only the run's best model of a task challenges the champion; the others are judged on
        # the absolute thresholds alone (they are reported, and not promoted).
        rows.append(
            {
                "model": kind,
                **{k: result.get(k) for k in ("accuracy", "macro_f1", "auroc", "threshold")},
                "regression": gap if result["challenger"] else None,
            }
        )
    return pd.DataFrame(rows).astype(
        {c: "float64" for c in ("accuracy", "macro_f1", "auroc", "threshold", "regression")}
    )


def settle(
    cfg: Config,
    cards: dict[str, ModelCard],
    results: dict[str, dict[str, Any]],
    challengers: dict[str, str | None],
    gate_result: GateResult,
) -> dict[str, Path]:
    """Promote each task's challenger that passed its gate, keep every failed model aside with
    its gate summary, and mark each result ``gate`` passed/failed and ``promoted``; returns where
    the failed ones were kept."""
    failed = {c["batch"] for c in gate_result.failures}
    promoted: dict[str, Promotion] = {}
    for task, kind in challengers.items():
        if kind is not None and kind not in failed:
            promoted[task] = promote(cfg, task, kind, cards[kind], results[kind])
    rejected = {}
    for kind, result in results.items():
        result["gate"] = "failed" if kind in failed else "passed"
        winner = promoted.get(result["task"])
        result["promoted"] = winner is not None and winner.version == result["version"]
        if kind in failed:
            summary = gate_result.summary().splitlines()
            lines = [line for line in summary if kind in line.split(":")[0] or line.startswith("gate")]
            rejected[kind] = reject(cfg, kind, cards[kind], result, "\n".join(lines))
    return rejected


def run(cfg: Config, spark: SparkSession) -> Path:
    """Evaluate every candidate, gate them, promote the champions, write the reports; returns the reports folder."""
    root = Path(cfg.data.root)
    with runner.StageRun(
        STAGE, root, spark, Path(cfg.evaluate.reports), lock_wait=cfg.data.lock_wait_s, gate=gate.validate
    ) as run:
        with run.phase("read"):
            every = (*cfg.evaluate.models, *cfg.evaluate.baselines)
            cards = {kind: read_card(model_dir(cfg, kind)) for kind in every}
            for kind, card in cards.items():
                if card.kind != kind:
                    raise SourceError(f"{model_dir(cfg, kind)} holds a {card.kind} model, not {kind}")
            champions = {task: read_champion(cfg, task) for task in set(TASKS.values())}
        results, predictions = {}, {}
        with run.phase("work"):
            for kind, card in cards.items():
                results[kind], predictions[kind] = evaluate_model(spark, cfg, kind, card, run.staging)
            cascade = None
            if {"mllib", "cnn"} <= set(results) and cards["mllib"].classes == cards["cnn"].classes:
                confidence = cfg.score.cascade.confidence
                cascade = cascade_metrics(predictions["mllib"], predictions["cnn"], cards["cnn"].classes, confidence)
            baselines = {kind: results.pop(kind) | {"baseline": True} for kind in cfg.evaluate.baselines}
        with run.phase("gate"):
            challengers = {task: challenger(results, task) for task in set(TASKS.values())}
            table = gate_table(results, champions, challengers)
            checks = [
                gate.Batch(
                    kind,
                    table[table["model"] == kind].reset_index(drop=True),
                    suites.model_expectations(result["task"], cfg.gate.model, bool(result.get("holdout_classes"))),
                )
                for kind, result in results.items()
            ]
            gate_result = run.validate(checks)
        with run.phase("publish"):
            rejected = settle(cfg, cards, results, challengers, gate_result)
            # In the order evaluate.models lists the candidates (what dvc metrics show lists).
            document = metrics_document(cfg, results, baselines, cascade, gate_result)
            manifest.write(run.staging, document, METRICS, sort_keys=False)
        inputs = {kind: {"folder": str(model_dir(cfg, kind)), "version": card.version} for kind, card in cards.items()}
        counts = {kind: {"test_rows": r.get("test_rows")} for kind, r in (results | baselines).items()}
        params = cfg.section("evaluate", "gate.model", "data")
        reports = run.finish(gate_result, run.manifest(params, inputs, counts, gate_result), blocking=False)
    for kind, result in results.items():
        figure = result.get("accuracy") if result["task"] == "classifier" else result.get("auroc")
        log.info(
            "%s %s: %s %s, gate %s%s",
            kind,
            result["version"],
            "accuracy" if result["task"] == "classifier" else "auroc",
            figure,
            result["gate"],
            ", promoted" if result["promoted"] else "",
        )
    if rejected:  # every model that failed its gate, kept aside
        kinds = ", ".join(sorted(rejected))
        where = "; ".join(f"{k} -> {p}" for k, p in sorted(rejected.items()))
        raise GateFailed(
            STAGE,
            gate_result.docs or reports / METRICS,
            Path(cfg.evaluate.rejected),
            f"{gate_result.summary()}\nrejected challengers ({kinds}): {where}",
        )
    return reports


def metrics_document(
    cfg: Config,
    results: dict[str, dict[str, Any]],
    baselines: dict[str, dict[str, Any]],
    cascade: dict[str, Any] | None,
    gate_result: GateResult,
) -> dict[str, Any]:
    """``metrics.json``: the champions' headline figures (after this run's promotions), every
    candidate's figures and, when ``evaluate.baselines`` names any, theirs (not gated)."""
    classifier = read_champion(cfg, "classifier")
    anomaly = read_champion(cfg, "anomaly")
    return {
        "accuracy": classifier.figure("accuracy") if classifier else None,
        "macro_f1": classifier.figure("macro_f1") if classifier else None,
        "champion": {"kind": classifier.kind, "version": classifier.version} if classifier else None,
        "anomaly_champion": (
            {"kind": anomaly.kind, "version": anomaly.version, "auroc": anomaly.figure("auroc")} if anomaly else None
        ),
        "models": results,
        **({"baselines": baselines} if baselines else {}),
        "cascade": cascade,
        "gate": gate_result.for_manifest(),
    }


def _precheck(cfg: Config) -> None:
    for kind in (*cfg.evaluate.models, *cfg.evaluate.baselines):
        read_card(model_dir(cfg, kind))


def main(argv: list[str] | None = None) -> int:
    return run_stage(STAGE, argv, run, description=__doc__, precheck=_precheck, preload=launch.GATE)


if __name__ == "__main__":
    exit_process(main())
