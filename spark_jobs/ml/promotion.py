"""Champions: which candidate of a task challenges the champion, the model gate's table of every
candidate, and what the verdict does: the passing challenger promoted (copied with its
``promotion.json`` into ``<evaluate.champion>/<task>/``), every failed model kept aside with its
figures, and ``metrics.json``, the figures ``dvc metrics`` shows. Pure functions return new
records; only :func:`promote`, :func:`reject` and :func:`settle` write."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import Field

from spark_jobs.core import atomic, manifest
from spark_jobs.core.config import Section
from spark_jobs.core.runner import STAGING
from spark_jobs.core.verdict import GateResult
from spark_jobs.ml.cards import (
    CARD,
    PROMOTION,
    TASKS,
    ModelCard,
    Promotion,
    candidate_folder,
    model_dir,
    read_card,
    read_promotion,
)


class PromotionConfig(Section):
    """``evaluate.promotion``: what a challenger needs, besides passing its gate, to be promoted.
    With ``min_shadow_agreement`` set, it must have run as the champion's shadow
    (``score.shadow``) in at least ``shadow_runs`` scoring runs, and agreed with the champion on
    at least that share of the images of its last ``shadow_runs`` such runs, pooled."""

    min_shadow_agreement: float | None = Field(None, ge=0.0, le=1.0)
    shadow_runs: int = Field(3, ge=1)


def shadow_hold(runs: list[tuple[float, int]], cfg: PromotionConfig) -> str | None:
    """Why a challenger waits (``runs``: its last shadow runs' ``(agreement, images)``, newest
    first), or None: no requirement, or it is met."""
    need = cfg.min_shadow_agreement
    if need is None:
        return None
    if len(runs) < cfg.shadow_runs:
        return f"{len(runs)} shadow run(s) of it; evaluate.promotion.shadow_runs asks for {cfg.shadow_runs}"
    last = runs[: cfg.shadow_runs]
    images = sum(n for _, n in last)
    pooled = sum(a * n for a, n in last) / images if images else 0.0
    if pooled < need:
        said = f"it agreed with the champion on {pooled:.3f} of {images} images in its last {len(last)} shadow runs"
        return f"{said}, below evaluate.promotion.min_shadow_agreement ({need})"
    return None


@dataclass(frozen=True)
class Places:
    """Where the models are (``train.output``), the champions go (``evaluate.champion``) and
    rejected challengers are kept (``evaluate.rejected``)."""

    models: Path
    champions: Path
    rejected: Path


def headline(task: str, result: dict[str, Any]) -> float | None:
    """The figure a task's champion is judged by: accuracy, or AUROC for anomaly models."""
    return result.get("auroc") if task == "anomaly" else result.get("accuracy")


def challenger(results: dict[str, dict[str, Any]], task: str) -> str | None:
    """The candidate of ``task`` with the best headline figure (then macro-F1), or None."""
    kinds = [k for k, r in results.items() if r["task"] == task]
    if not kinds:
        return None
    return max(kinds, key=lambda k: (headline(task, results[k]) or 0.0, results[k].get("macro_f1") or 0.0))


def challengers(results: dict[str, dict[str, Any]]) -> dict[str, str | None]:
    """Each task's challenger."""
    return {task: challenger(results, task) for task in sorted(set(TASKS.values()))}


def standing(
    results: dict[str, dict[str, Any]], champions: dict[str, Promotion | None], chosen: dict[str, str | None]
) -> dict[str, dict[str, Any]]:
    """Each candidate's results with how it stands: ``vs_champion`` (the champion's version and the
    gap of the headline figure to it) and whether it is its task's ``challenger``."""
    out = {}
    for kind, result in results.items():
        task = result["task"]
        champion = champions[task]
        value, best = headline(task, result), headline(task, champion.metrics if champion else {})
        gap = None if champion is None or value is None or best is None else round(best - value, 6)
        vs = {"version": champion.version, "gap": gap} if champion else None
        out[kind] = {**result, "vs_champion": vs, "challenger": chosen[task] == kind}
    return out


def gate_table(standings: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """The model gate's table: one row per candidate, its figures and, for its task's challenger,
    the regression vs the champion (null otherwise, and when there is no champion yet: GX skips
    nulls). Only the run's best model of a task challenges the champion; the others are judged on
    the absolute thresholds alone (they are reported, and not promoted)."""
    rows = [
        {
            "model": kind,
            **{k: result.get(k) for k in ("accuracy", "macro_f1", "auroc", "threshold")},
            "regression": (result["vs_champion"] or {}).get("gap") if result["challenger"] else None,
        }
        for kind, result in standings.items()
    ]
    columns = ("accuracy", "macro_f1", "auroc", "threshold", "regression")
    return pd.DataFrame(rows).astype(dict.fromkeys(columns, "float64"))


def promote(places: Places, task: str, kind: str, card: ModelCard, result: dict[str, Any]) -> Promotion:
    """Make a candidate its task's champion; returns the ``promotion.json`` written with it."""
    previous = read_promotion(places.champions / task)
    target = places.champions / task
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
    atomic.copy_dir(model_dir(places.models, kind), target, target.parent.parent / STAGING, {PROMOTION: record})
    return record


def keep_candidate(places: Places, task: str, kind: str, card: ModelCard) -> Path:
    """Keep a model that passed its gate and was not promoted as ``task``'s candidate (what
    ``score.shadow: candidate`` scores beside the champion), replacing the last one."""
    target = candidate_folder(places.champions, task)
    if (target / CARD).exists() and read_card(target).version == card.version:
        return target
    return atomic.copy_dir(model_dir(places.models, kind), target, places.champions.parent / STAGING, {})


def candidates(settled: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Each task's best model (by its headline figure) that passed its gate and was not promoted."""
    passed = {k: r for k, r in settled.items() if r["gate"] == "passed" and not r["promoted"]}
    return {task: kind for task in {r["task"] for r in passed.values()} if (kind := challenger(passed, task))}


def reject(places: Places, kind: str, card: ModelCard, result: dict[str, Any], summary: str) -> Path:
    """Keep a failed challenger, with its metrics and gate summary, under ``evaluate.rejected``."""
    target = places.rejected / card.version
    extra = {"metrics.json": result, "gate_summary.txt": summary + "\n"}
    return atomic.copy_dir(model_dir(places.models, kind), target, target.parent.parent / STAGING, extra)


def _summary_of(kind: str, gate_result: GateResult) -> str:
    """The lines of the gate's summary about ``kind`` (and the verdict line)."""
    lines = gate_result.summary().splitlines()
    return "\n".join(line for line in lines if kind in line.split(":")[0] or line.startswith("gate"))


def settle(
    places: Places,
    cards: dict[str, ModelCard],
    standings: dict[str, dict[str, Any]],
    chosen: dict[str, str | None],
    gate_result: GateResult,
    held: dict[str, str] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, Path]]:
    """Promote each task's challenger that passed its gate (and is not ``held`` back: task -> why)
    and keep every failed model aside with its gate summary; returns ``(each result with its gate
    verdict, whether it was promoted and why it was held, where the failed ones were kept)``."""
    failed = {c["batch"] for c in gate_result.failures}
    held = held or {}
    promoted: dict[str, Promotion] = {}
    for task, kind in chosen.items():
        if kind is not None and kind not in failed and task not in held:
            promoted[task] = promote(places, task, kind, cards[kind], standings[kind])
    settled, rejected = {}, {}
    for kind, result in standings.items():
        winner = promoted.get(result["task"])
        settled[kind] = {
            **result,
            "gate": "failed" if kind in failed else "passed",
            "promoted": winner is not None and winner.version == result["version"],
            "held": held.get(result["task"]) if chosen.get(result["task"]) == kind else None,
        }
        if kind in failed:
            rejected[kind] = reject(places, kind, cards[kind], settled[kind], _summary_of(kind, gate_result))
    for task, kind in candidates(settled).items():
        keep_candidate(places, task, kind, cards[kind])
    return settled, rejected


def metrics_document(
    champions: Path,
    results: dict[str, dict[str, Any]],
    baselines: dict[str, dict[str, Any]],
    cascade: dict[str, Any] | None,
    gate_result: GateResult,
) -> dict[str, Any]:
    """``metrics.json``: the champions' headline figures (after this run's promotions), every
    candidate's figures and, when ``evaluate.baselines`` names any, theirs (not gated)."""
    classifier = read_promotion(champions / "classifier")
    anomaly = read_promotion(champions / "anomaly")
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


# The figures of each task's models that metrics.json keeps (every other one is in evaluation.json).
# A classifier's pointing_accuracy is there when evaluate.pointing is set: a share, or "n/a".
HEADLINE_FIGURES = {
    "classifier": ("accuracy", "macro_f1", "pointing_accuracy"),
    "anomaly": ("auroc", "false_alarm_rate", "detection_rate"),
}


def _figures(result: dict[str, Any]) -> dict[str, Any]:
    return {k: result[k] for k in HEADLINE_FIGURES[result["task"]] if result.get(k) is not None}


def headline_metrics(document: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json``: what ``dvc metrics`` and ``dvc exp show`` compare, numbers and booleans
    (and ``"n/a"``, the pointing accuracy of a tile model without attention) only (about 15 keys
    for three models, short names: ``dvc exp show --only-changed`` of a
    one-parameter experiment stays within 200 columns): the champions' figures after this run,
    each candidate's headline figures under its kind and whether it ``passed`` its gate, each
    baseline's figures and the cascade's. Versions, promotions, INT8 figures, per-class figures
    and the gate's detail are in :func:`metrics_document`'s ``evaluation.json``; per-class figures
    also in ``plots/<model>/classes.csv``."""
    out: dict[str, Any] = {
        "accuracy": document["accuracy"],
        "macro_f1": document["macro_f1"],
        "auroc": (document["anomaly_champion"] or {}).get("auroc"),
    }
    for kind, r in document["models"].items():
        out[kind] = {**_figures(r), "passed": r["gate"] == "passed"}
    for kind, r in (document.get("baselines") or {}).items():
        out[kind] = _figures(r)
    cascade = document.get("cascade")
    if cascade:
        out["cascade"] = {"accuracy": cascade["accuracy"], "heavy_fraction": cascade["heavy_fraction"]}
    rows = [r.get("test_rows") for r in document["models"].values() if r.get("test_rows") is not None]
    out["test_rows"] = max(rows, default=0)
    return out
