"""Evaluate: score the test split with every model of ``evaluate.models``, gate each, promote the champion.

For each candidate (``<train.output>/<model>/``):

- classifiers (``mllib`` on the features table, ``cnn`` on the ingested pixels): accuracy,
  macro precision/recall/F1, per-class precision/recall/F1 from a confusion matrix counted by
  Spark; plot data for ``dvc plots`` (``plots/<model>/confusion.csv``, one row per test image,
  and ``plots/<model>/classes.csv``), ``figures/confusion_<model>.png`` and every test image's
  prediction with its id and source (``plots/<model>/predictions.csv``, :mod:`spark_jobs.ml.exhibits`);
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
autoencoder to ``.../anomaly/``), which scoring reads. A failing candidate is not promoted: it is
copied to ``<evaluate.rejected>/<version>/`` with its metrics and gate summary, a warning names it,
and the stage still succeeds, with every report written: the gate decides the promotion, so an
experiment (``dvc exp run``) that trains a worse model is recorded with its figures and verdict.
The gate's page (``<data.root>/gates/evaluate/report.html``) shows each model's misclassified test
images.

``evaluate.baselines``: models evaluated and reported the same way (metrics, plots, figure), for
comparison only: never gated, never promoted (``metrics.json``: ``baselines``).

``<evaluate.reports>/metrics.json``: the headline figures (:func:`promotion.headline_metrics`:
numbers only, what ``dvc metrics`` and ``dvc exp show`` compare); ``evaluation.json``: every figure,
version and verdict.

    python -m spark_jobs.evaluate [--set evaluate.models=[cnn]]
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
from pydantic import Field, model_validator

from spark_jobs.core import launch, manifest, runner
from spark_jobs.core.config import DEFAULT_INBOX, ConfigError, LocalPath, Params, Section, SourcePath, View
from spark_jobs.core.jobs import exit_process, run_stage
from spark_jobs.core.store import SourceError
from spark_jobs.core.tables import published, read_features, read_images
from spark_jobs.core.verdict import GateResult
from spark_jobs.imaging import tiles
from spark_jobs.ml import exhibits, inference, metrics, plots, promotion
from spark_jobs.ml.cards import (
    CHAMPIONS,
    TASKS,
    TILE_KINDS,
    Kind,
    ModelCard,
    TrainedModels,
    model_dir,
    read_card,
    read_promotion,
)
from spark_jobs.ml.cascade import CascadeConfig, cascade_metrics
from spark_jobs.ml.mllib import mllib_classify
from spark_jobs.ml.promotion import PromotionConfig
from spark_jobs.quality import gate, suites
from spark_jobs.quality.thresholds import GateConfig
from spark_jobs.scoring import shadowing

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

log = logging.getLogger(__name__)

STAGE = "evaluate"
NOT_APPLICABLE = "n/a"  # pointing accuracy of a model without tile weights
METRICS = "metrics.json"  # the headline figures: what dvc metrics and dvc exp show compare
EVALUATION = "evaluation.json"  # every figure of every model, versions and the gate's verdict


class EvaluateConfig(Section):
    """``evaluate``."""

    models: tuple[Kind, ...] = ("mllib", "cnn", "autoencoder")
    baselines: tuple[Kind, ...] = ()
    reports: LocalPath = "reports"
    champion: LocalPath = CHAMPIONS
    rejected: LocalPath = "models/rejected"
    batch_size: int = Field(256, ge=1)
    threads: int = Field(1, ge=1, le=256)
    int8: bool = True
    # A file of the cell that decides each image's label (sample.kind find writes one): models
    # that attend get a pointing accuracy, the others "n/a".
    pointing: LocalPath | None = None
    promotion: PromotionConfig = PromotionConfig()

    @model_validator(mode="after")
    def _distinct_models(self) -> EvaluateConfig:
        if not self.models or len(set(self.models)) != len(self.models):
            raise ValueError(f"evaluate.models must list distinct models, got {list(self.models)}")
        if len(set(self.baselines)) != len(self.baselines) or set(self.baselines) & set(self.models):
            raise ValueError(
                f"evaluate.baselines must list distinct models that are not candidates, got {list(self.baselines)}"
            )
        return self


class CascadeView(View):
    """What evaluate reads of ``score``: the cascade it reports on (and the inbox it never writes)."""

    inbox: SourcePath = DEFAULT_INBOX
    cascade: CascadeConfig = CascadeConfig()


class EvaluateParams(Params):
    """What the evaluate stage reads: ``evaluate``, the model gate, where the trained models are,
    and ``score.cascade``."""

    evaluate: EvaluateConfig = EvaluateConfig()
    train: TrainedModels = TrainedModels()
    gate: GateConfig = GateConfig()
    score: CascadeView = CascadeView()  # type: ignore[assignment]


PARAMS = EvaluateParams  # what the stage reads of params.yaml


def outputs(cfg: EvaluateParams) -> list[Path]:
    """The reports, and the champions and rejected models it copies in through their parents' staging."""
    return [Path(cfg.evaluate.reports), Path(cfg.evaluate.champion), Path(cfg.evaluate.rejected)]


def places(cfg: EvaluateParams) -> promotion.Places:
    return promotion.Places(Path(cfg.train.output), Path(cfg.evaluate.champion), Path(cfg.evaluate.rejected))


def features_test_split(spark: SparkSession, cfg: EvaluateParams, card: ModelCard) -> DataFrame:
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


def mllib_predictions(spark: SparkSession, cfg: EvaluateParams, folder: Path, card: ModelCard) -> DataFrame:
    """``image_id, label, prediction (class index), probability, probabilities`` for the features
    table's test rows."""
    return mllib_classify(folder, features_test_split(spark, cfg, card), card.classes, ("image_id", "label"))


def tiles_predictions(spark: SparkSession, cfg: EvaluateParams, folder: Path, card: ModelCard) -> DataFrame:
    """A ``tiles_*`` model's outputs and ``tile_count`` for each test image, from its tiles' rows
    of the features table: grouped by image (one shuffle), each image's tiles in raster order."""
    model = inference.TorchModel.from_card(folder, card)
    boxes = tiles.BOX if model.attends else ()
    test = features_test_split(spark, cfg, card).select("image_id", "label", "tile_y", "tile_x", *boxes, "features")
    grouped = test.repartition(cfg.spark.shuffle_partitions, "image_id").sortWithinPartitions(
        "image_id", "tile_y", "tile_x"
    )
    predictor = inference.Predictor(model, cfg.evaluate.batch_size, cfg.evaluate.threads)
    return grouped.mapInArrow(lambda it: inference.predict_tiles(it, predictor), inference.tiles_schema(predictor))


def torch_predictions(
    spark: SparkSession, cfg: EvaluateParams, folder: Path, card: ModelCard, quantize: str = "none"
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


def predictions_of(spark: SparkSession, cfg: EvaluateParams, kind: str, card: ModelCard) -> DataFrame:
    """A candidate's predictions on the test split, by the way its kind reads an image."""
    folder = model_dir(cfg.train.output, kind)
    if kind == "mllib":
        return mllib_predictions(spark, cfg, folder, card)
    if kind in TILE_KINDS:
        return tiles_predictions(spark, cfg, folder, card)
    return torch_predictions(spark, cfg, folder, card)


def evaluate_model(
    spark: SparkSession, cfg: EvaluateParams, kind: str, card: ModelCard, reports: Path
) -> tuple[dict[str, Any], pd.DataFrame]:
    """``(metrics, test predictions on the driver)`` of one candidate; writes its plots and picture."""
    frame = predictions_of(spark, cfg, kind, card)
    if card.task == "anomaly":
        predictions = collect(frame, ("image_id", "label", "score"))
        result, pairs = metrics.anomaly_metrics(predictions, card)
        plots.write_roc(reports, kind, pairs)
        predictions["is_anomaly"] = predictions["label"].isin(card.exclude_classes)
    else:
        attends = "top_tiles" in frame.columns
        predictions = collect(frame, ("image_id", "label", "prediction", "probability", *(("top_tiles",) * attends)))
        result, matrix = metrics.classifier_metrics(predictions, card.classes)
        if cfg.evaluate.pointing is not None:
            result |= pointing(cfg, kind, predictions if attends else None)
        plots.write_classifier_plots(reports, kind, predictions, result, card.classes)
        title = f"{kind} {card.version}: accuracy {result['accuracy']:.4f} on {result['test_rows']} test images"
        plots.confusion_png(reports / "figures" / f"confusion_{kind}.png", matrix, list(result["per_class"]), title)
    if kind == "cnn" and cfg.evaluate.int8:
        result["int8"] = int8_metrics(spark, cfg, card, result)
    rows = exhibits.labelled(predictions, card.classes, card.task, card.threshold)
    return {"version": card.version, "task": card.task, **result}, rows


def pointing(cfg: EvaluateParams, kind: str, predictions: pd.DataFrame | None) -> dict[str, Any]:
    """``pointing_accuracy`` of a model that attends against ``evaluate.pointing``'s cells
    (:func:`metrics.pointing_accuracy`); ``"n/a"`` for one that does not (it has no tile weights)."""
    if predictions is None:
        return {"pointing_accuracy": NOT_APPLICABLE}
    result = metrics.pointing_accuracy(predictions, read_cells(str(cfg.evaluate.pointing)))
    if result["pointing_unknown"]:
        log.warning("%s: %d test images are not in %s", kind, result["pointing_unknown"], cfg.evaluate.pointing)
    return result


def read_cells(path: str) -> pd.DataFrame:
    """``evaluate.pointing``'s file: ``image_id`` and the deciding cell's box (:data:`metrics.CELLS`)
    of each image; :class:`ConfigError` in one line when it cannot be read or lacks a column."""
    try:
        cells = pd.read_csv(path, dtype={"image_id": str})
    except (OSError, ValueError) as exc:
        raise ConfigError(f"evaluate.pointing {path}: cannot read it ({exc})") from None
    missing = [c for c in ("image_id", *metrics.CELLS) if c not in cells.columns]
    if missing:
        raise ConfigError(
            f"evaluate.pointing {path} has no {', '.join(missing)} column: it needs image_id and "
            f"{', '.join(metrics.CELLS)} (as sample.kind find writes)"
        )
    return cells


def int8_metrics(
    spark: SparkSession, cfg: EvaluateParams, card: ModelCard, fp32: dict[str, Any]
) -> dict[str, Any] | None:
    """Accuracy and macro-F1 of the cnn's INT8 copy on the test split, and its accuracy cost."""
    if card.files.calibration is None:
        log.warning("%s has no calibration images (trained before INT8 support): no INT8 figures", card.version)
        return None
    frame = torch_predictions(spark, cfg, model_dir(cfg.train.output, "cnn"), card, "int8")
    result, _ = metrics.classifier_metrics(collect(frame, ("label", "prediction")), card.classes)
    return {
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "accuracy_drop": round(fp32["accuracy"] - result["accuracy"], 6),
    }


def read_candidates(cfg: EvaluateParams) -> dict[str, ModelCard]:
    """The card of every candidate and baseline, each checked to be of its kind."""
    cards = {
        kind: read_card(model_dir(cfg.train.output, kind)) for kind in (*cfg.evaluate.models, *cfg.evaluate.baselines)
    }
    for kind, card in cards.items():
        if card.kind != kind:
            raise SourceError(f"{model_dir(cfg.train.output, kind)} holds a {card.kind} model, not {kind}")
    return cards


def evaluate_all(
    spark: SparkSession, cfg: EvaluateParams, cards: dict[str, ModelCard], reports: Path
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, Any] | None, dict[str, pd.DataFrame]]:
    """``(the candidates' results, the baselines', the cascade's, every model's labelled test
    predictions)`` on the test split."""
    results, predictions = {}, {}
    for kind, card in cards.items():
        results[kind], predictions[kind] = evaluate_model(spark, cfg, kind, card, reports)
    cascade = None
    if {"mllib", "cnn"} <= set(results) and cards["mllib"].classes == cards["cnn"].classes:
        confidence = cfg.score.cascade.confidence
        cascade = cascade_metrics(predictions["mllib"], predictions["cnn"], cards["cnn"].classes, confidence)
    baselines = {kind: results.pop(kind) | {"baseline": True} for kind in cfg.evaluate.baselines}
    return results, baselines, cascade, predictions


def show(spark: SparkSession, cfg: EvaluateParams, run: runner.StageRun, rows: dict[str, pd.DataFrame]) -> None:
    """Each model's per-image predictions file, and the pictures on the model gate's page: the
    test images it got wrong and the least confident right ones (one Spark job reads their pixels)."""
    from pyspark.sql import functions as F

    test = read_images(spark, published(cfg.data.root, "ingest")).where(F.col("split") == "test")
    uris = {r.image_id: r.source_uri for r in test.select("image_id", "source_uri").collect()}
    wanted = sorted({i for kind_rows in rows.values() for i in exhibits.shown_ids(kind_rows)})
    pixels = {}
    if wanted:
        chosen = test.where(F.col("image_id").isin(wanted)).select("image_id", "height", "width", "pixels")
        pixels = {r.image_id: r.asDict() for r in chosen.collect()}
    for kind, kind_rows in rows.items():
        exhibits.write_predictions(run.staging, kind, kind_rows, uris)
        run.exhibits.galleries.extend(exhibits.galleries(kind, kind_rows, pixels, uris))
    run.exhibits.counts = {"test images": len(uris), "models": ", ".join(rows)}


def model_gate(run: runner.StageRun, cfg: EvaluateParams, standings: dict[str, dict[str, Any]]) -> GateResult:
    """The model gate: each candidate's row of the gate table against its task's thresholds."""
    table = promotion.gate_table(standings)
    checks = [
        gate.Batch(
            kind,
            table[table["model"] == kind].reset_index(drop=True),
            suites.model_expectations(result["task"], cfg.gate.model, bool(result.get("holdout_classes"))),
        )
        for kind, result in standings.items()
    ]
    return run.validate(checks)


def shadow_holds(
    cfg: EvaluateParams, cards: dict[str, ModelCard], chosen: dict[str, str | None], champions: dict[str, Any]
) -> dict[str, str]:
    """Each task whose challenger must wait before it replaces the champion, and why
    (``evaluate.promotion.min_shadow_agreement``: read from the scoring runs' manifests under
    ``data.root``). A task's first champion has nothing to shadow, and waits for nothing."""
    need = cfg.evaluate.promotion
    if need.min_shadow_agreement is None:
        return {}
    manifests = shadowing.scoring_manifests(Path(cfg.data.root))
    held = {}
    for task, kind in chosen.items():
        champion = champions.get(task)
        if kind is None or champion is None or champion.version == cards[kind].version:
            continue
        runs = shadowing.recent_agreements(manifests, cards[kind].version, need.shadow_runs)
        if (why := promotion.shadow_hold(runs, need)) is not None:
            held[task] = why
    return held


def run(cfg: EvaluateParams, spark: SparkSession) -> Path:
    """Evaluate every candidate, gate them, promote the champions that passed, write the reports;
    returns the reports folder. A model the gate rejects is not promoted, and kept aside: the run
    itself succeeds, so its figures are recorded (``dvc exp run``, ``dvc repro``) beside the
    verdict (:data:`METRICS` ``<model>.passed``)."""
    root, where = Path(cfg.data.root), places(cfg)
    target = Path(cfg.evaluate.reports)
    params = cfg.section("evaluate", "gate.model", "data")
    with runner.StageRun(
        STAGE, root, spark, target, lock_wait=cfg.data.lock_wait_s, gate=gate.validate, params=params
    ) as run:
        with run.phase("read"):
            cards = read_candidates(cfg)
            run.lineage.reads(*(model_dir(cfg.train.output, kind) for kind in cards))
            champions = {task: read_promotion(where.champions / task) for task in set(TASKS.values())}
        with run.phase("work"):
            results, baselines, cascade, predictions = evaluate_all(spark, cfg, cards, run.staging)
        with run.phase("gate"):
            show(spark, cfg, run, predictions)
            run.exhibits.links, run.exhibits.rejected = {"the run's figures": target / EVALUATION}, None
            chosen = promotion.challengers(results)
            standings = promotion.standing(results, champions, chosen)
            gate_result = model_gate(run, cfg, standings)
            held = shadow_holds(cfg, cards, chosen, champions)
        with run.phase("publish"):
            settled, rejected = promotion.settle(where, cards, standings, chosen, gate_result, held)
            promoted = {r["task"] for r in settled.values() if r["promoted"]}
            run.lineage.writes(*(where.champions / task for task in sorted(promoted)))
            # In the order evaluate.models lists the candidates (what dvc metrics show lists).
            document = promotion.metrics_document(where.champions, settled, baselines, cascade, gate_result)
            manifest.write(run.staging, document, EVALUATION, sort_keys=False)
            manifest.write(run.staging, promotion.headline_metrics(document), METRICS, sort_keys=False)
        inputs = {
            kind: {"folder": str(model_dir(cfg.train.output, kind)), "version": c.version} for kind, c in cards.items()
        }
        counts = {kind: {"test_rows": r.get("test_rows")} for kind, r in (settled | baselines).items()}
        doc = run.manifest(params, inputs, counts, gate_result)
        reports = run.finish(gate_result, doc, blocking=False)
    _report(settled, champions, rejected)
    return reports


def _report(
    settled: dict[str, dict[str, Any]],
    before: dict[str, Any],
    rejected: dict[str, Path],
) -> None:
    """One line per model: its figure and what the gate did with it; then each task's champion."""
    for kind, result in settled.items():
        figure = promotion.headline(result["task"], result)
        name = "accuracy" if result["task"] == "classifier" else "auroc"
        if kind in rejected:
            log.warning(
                "%s %s: %s %s, rejected by the model gate: not promoted, kept in %s",
                kind,
                result["version"],
                name,
                figure,
                rejected[kind],
            )
            continue
        previous = before.get(result["task"])
        if result["promoted"]:
            kept = previous is not None and previous.version == result["version"]
            verdict = "passed, already the champion" if kept else "passed, promoted"
        elif result.get("held"):
            verdict = f"passed, not promoted yet: {result['held']}"
        else:
            verdict = "passed, not promoted (not its task's best)"
        log.info("%s %s: %s %s, %s", kind, result["version"], name, figure, verdict)
    for task, previous in sorted(before.items()):
        promoted = [r for r in settled.values() if r["task"] == task and r["promoted"]]
        now = promoted[0]["version"] if promoted else (previous.version if previous else None)
        changed = previous is None or now != previous.version
        log.info("%s champion: %s%s", task, now or "none", " (new)" if changed and now else " (unchanged)")


def _precheck(cfg: EvaluateParams) -> None:
    for kind in (*cfg.evaluate.models, *cfg.evaluate.baselines):
        read_card(model_dir(cfg.train.output, kind))
    if cfg.evaluate.pointing is not None:
        read_cells(str(cfg.evaluate.pointing))


def main(argv: list[str] | None = None) -> int:
    return run_stage(
        STAGE,
        argv,
        run,
        params=PARAMS,
        outputs=outputs,
        description=__doc__,
        precheck=_precheck,
        preload=launch.GATE,
    )


if __name__ == "__main__":
    exit_process(main())
