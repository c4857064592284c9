"""What evaluate shows a person of each model: every test image's prediction in a file
(``plots/<model>/predictions.csv``, beside ``confusion.csv``: any image can be found by its id or
source), and on the model gate's report page the misclassified test images and the least confident
correct ones as thumbnails, with true label, predicted label and probability (for an anomaly model:
its false alarms and missed anomalies, with their scores).

Pure functions pick the rows (:func:`picks`) and build the galleries from the images' pixels;
only :func:`write_predictions` writes. :func:`quarantine_galleries` (ingest's, by reason) and
:func:`quarantine_gallery` (scoring's) show the files they could not use; :func:`cluster_galleries`
and :func:`flag_galleries` show ingest's near-duplicate clusters and quality flags."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core import store
from spark_jobs.imaging.images import pixels_thumbnail, thumbnail
from spark_jobs.quality.report import MAX_THUMBS, Gallery, Thumb, short_name

if TYPE_CHECKING:
    import pandas as pd

LEAST_CONFIDENT = 12  # correct predictions shown, the least confident first
MAX_THUMB_BYTES = 64 * 2**20  # a quarantined file larger than this is named, not read again for a picture
MAX_THUMB_PIXELS = 64_000_000  # ... nor drawn when larger than this (a decompression bomb stays one)
PREDICTIONS = "predictions.csv"


def labelled(predictions: pd.DataFrame, classes: list[str], task: str, threshold: float | None) -> pd.DataFrame:
    """The collected test predictions with readable columns: ``predicted`` (a class name) and
    ``correct``; an anomaly model's rows get ``flagged`` (score above its threshold) and ``correct``
    (flagged exactly when the image is of a held-out class, given as ``is_anomaly``)."""
    out = predictions.copy()
    if task == "anomaly":
        out["flagged"] = out["score"] > (threshold if threshold is not None else float("inf"))
        out["correct"] = out["flagged"] == out["is_anomaly"]
        return out
    out["predicted"] = [classes[int(p)] if 0 <= int(p) < len(classes) else None for p in out["prediction"]]
    out["correct"] = out["predicted"] == out["label"].astype(str)
    return out


def write_predictions(reports: Path, kind: str, rows: pd.DataFrame, uris: Mapping[str, str]) -> Path:
    """``plots/<kind>/predictions.csv``: one row per test image, its id, source, label and what the
    model said (sorted by source, so the file diffs cleanly between runs); for a model that
    attends, ``top_tile``: its most-weighted tile's box ``x0 y0 x1 y1`` and weight."""
    folder = reports / "plots" / kind
    folder.mkdir(parents=True, exist_ok=True)
    said = ["score", "flagged", "is_anomaly"] if "score" in rows else ["predicted", "probability"]
    frame = rows.assign(source_uri=[uris.get(i, "") for i in rows["image_id"]])
    if "top_tiles" in rows:  # a model that attends: where it looked, its heaviest tile's box
        said.append("top_tile")
        frame["top_tile"] = [_box(tops[0]) for tops in rows["top_tiles"]]
    frame = frame[["image_id", "source_uri", "label", *said, "correct"]].sort_values(["source_uri", "image_id"])
    path = folder / PREDICTIONS
    frame.to_csv(path, index=False, float_format="%.6g")
    return path


def _box(tile: Mapping[str, Any]) -> str:
    """A tile of ``top_tiles`` as ``x0 y0 x1 y1 (weight)``."""
    corners = (tile[f"box_{k}"] for k in ("x0", "y0", "x1", "y1"))
    return " ".join(map(str, corners)) + f" ({tile['weight']:.3f})"


def picks(rows: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(the wrong predictions, most confident first; the least confident right ones)`` of
    :func:`labelled` rows (an anomaly model: its errors, the most extreme score first, and no
    second set)."""
    wrong = rows[~rows["correct"]]
    if "score" in rows:
        # A false alarm's score above the threshold and a miss's below it: the farthest first.
        order = (wrong["score"] * wrong["flagged"].map({True: -1, False: 1})).argsort(kind="stable")
        return wrong.iloc[order.to_numpy()], rows.iloc[0:0]
    right = rows[rows["correct"]].sort_values(["probability", "image_id"], kind="stable")
    return wrong.sort_values(["probability", "image_id"], ascending=[False, True], kind="stable"), right.head(
        LEAST_CONFIDENT
    )


def caption(row: Any, uris: Mapping[str, str]) -> tuple[str, ...]:
    """What a thumbnail says: the file, true label and what the model said of it."""
    name = short_name(uris.get(row.image_id, row.image_id))
    if hasattr(row, "score"):
        said = "flagged as an anomaly" if row.flagged else "not flagged"
        kind = "held-out class" if row.is_anomaly else "normal"
        return (name, f"label {row.label} ({kind})", f"{said}: score {row.score:.4g}")
    return (name, f"true {row.label} → predicted {row.predicted}", f"probability {row.probability:.3f}")


def gallery(title: str, rows: pd.DataFrame, pixels: Mapping[str, Any], uris: Mapping[str, str], note: str) -> Gallery:
    """The first :data:`MAX_THUMBS` of ``rows`` as thumbnails (``pixels``: image id -> a row with
    ``height``, ``width`` and ``pixels``)."""
    thumbs = []
    for row in rows.head(MAX_THUMBS).itertuples(index=False):
        image = pixels.get(row.image_id)
        png = None if image is None else pixels_thumbnail(image["pixels"], image["height"], image["width"])
        thumbs.append(Thumb(caption(row, uris), png))
    return Gallery(title, tuple(thumbs), len(rows), note)


def galleries(kind: str, rows: pd.DataFrame, pixels: Mapping[str, Any], uris: Mapping[str, str]) -> list[Gallery]:
    """A model's galleries for the gate's page."""
    wrong, unsure = picks(rows)
    where = f"Every test image's prediction: plots/{kind}/{PREDICTIONS} in the reports folder."
    if "score" in rows:
        return [gallery(f"{kind}: false alarms and missed anomalies (test split)", wrong, pixels, uris, where)]
    return [
        gallery(f"{kind}: misclassified test images", wrong, pixels, uris, where),
        gallery(f"{kind}: the least confident correct predictions", unsure, pixels, uris, ""),
    ]


def shown_ids(rows: pd.DataFrame) -> list[str]:
    """The image ids a model's galleries show (whose pixels evaluate reads)."""
    wrong, unsure = picks(rows)
    return [*wrong["image_id"].head(MAX_THUMBS), *unsure["image_id"].head(MAX_THUMBS)]


def quarantine_galleries(
    records: Sequence[Mapping[str, Any]], totals: Mapping[str, int], max_bytes: int = MAX_THUMB_BYTES
) -> list[Gallery]:
    """The quarantined files of a run grouped by reason, one gallery each (``records``: a sample
    per reason; ``totals``: the files per reason), most common reason first."""
    by_reason: dict[str, list[Mapping[str, Any]]] = {}
    for r in records:
        by_reason.setdefault(str(r["reason"]), []).append(r)
    order = sorted(totals, key=lambda reason: (-totals[reason], reason))
    return [
        quarantine_gallery(by_reason.get(reason, []), totals[reason], max_bytes, f"Quarantined: {reason}")
        for reason in order
    ] or [quarantine_gallery([], 0, max_bytes)]


def file_thumbnail(uri: str, max_bytes: int = MAX_THUMB_BYTES) -> bytes | None:
    """A thumbnail of the file at ``uri`` read again, or None when it is gone, unreadable, larger
    than ``max_bytes`` or does not decode (a video): the caption names it without a picture."""
    try:
        return thumbnail(store.fetch(uri, max_bytes), MAX_THUMB_PIXELS)
    except Exception:  # gone, unreadable or too large since
        return None


def quarantine_gallery(
    records: Sequence[Mapping[str, Any]], total: int, max_bytes: int = MAX_THUMB_BYTES, title: str = "Quarantined files"
) -> Gallery:
    """The quarantined files of a run (the first :data:`MAX_THUMBS` of ``records``: ``source_uri``,
    ``reason``, ``detail``), each as a thumbnail when its bytes can still be read and decode at all
    (files over ``max_bytes`` are named, not read)."""
    thumbs = []
    for r in records[:MAX_THUMBS]:
        detail = str(r.get("detail") or "")
        caption = (short_name(str(r["source_uri"])), str(r["reason"]), detail[:160])
        thumbs.append(Thumb(tuple(line for line in caption if line), file_thumbnail(str(r["source_uri"]), max_bytes)))
    note = "Every quarantined file, with its full source URI, is in the run's quarantine table."
    return Gallery(title, tuple(thumbs), total, note)


MAX_CLUSTERS = 8  # near-duplicate clusters shown on ingest's page, the largest first
MAX_FLAGGED = 12  # images shown per quality flag


def cluster_galleries(members: Sequence[Mapping[str, Any]], clusters: int, images_in_clusters: int) -> list[Gallery]:
    """One gallery per near-duplicate cluster, its images side by side with their splits (``members``:
    rows with ``cluster_id``, ``source_uri``, ``split``, ``score`` (the best match score of the
    image's pairs, 1.0 for the cluster's own id), ``pixels``, ``height``, ``width``), the largest
    clusters first; ``clusters`` and ``images_in_clusters`` say how many there are in all."""
    by_cluster: dict[str, list[Mapping[str, Any]]] = {}
    for m in members:
        by_cluster.setdefault(str(m["cluster_id"]), []).append(m)
    ordered = sorted(by_cluster.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:MAX_CLUSTERS]
    out = []
    for n, (cluster, rows) in enumerate(ordered, 1):
        splits = sorted({str(r["split"]) for r in rows})
        thumbs = tuple(
            Thumb(
                (short_name(str(r["source_uri"])), f"split {r['split']}", f"match {float(r['score']):.3f}"),
                pixels_thumbnail(r["pixels"], r["height"], r["width"]),
            )
            for r in sorted(rows, key=lambda r: str(r["source_uri"]))[:MAX_THUMBS]
        )
        note = f"cluster {cluster[:12]}, in {', '.join(splits)}"
        if n == 1:
            note += f" ({clusters} clusters hold {images_in_clusters} images; every pair: near_duplicates.parquet)"
        out.append(Gallery(f"Near-duplicate cluster {n} of {clusters}", thumbs, len(rows), note))
    return out


def flag_galleries(flagged: Sequence[Mapping[str, Any]], totals: Mapping[str, int]) -> list[Gallery]:
    """One gallery per quality flag raised (``flagged``: rows with ``flag``, ``source_uri``,
    ``label``, the figure behind the flag as ``figure``, ``pixels``, ``height``, ``width``; up to
    :data:`MAX_FLAGGED` each), ``totals`` the images carrying each flag."""
    by_flag: dict[str, list[Mapping[str, Any]]] = {}
    for r in flagged:
        by_flag.setdefault(str(r["flag"]), []).append(r)
    out = []
    for flag, rows in sorted(by_flag.items()):
        thumbs = tuple(
            Thumb(
                (short_name(str(r["source_uri"])), str(r["label"]), f"{r['figure_name']} {float(r['figure']):.3g}"),
                pixels_thumbnail(r["pixels"], r["height"], r["width"]),
            )
            for r in rows[:MAX_FLAGGED]
        )
        out.append(Gallery(f"Flagged {flag}", thumbs, int(totals.get(flag, len(rows))), "flags quarantine nothing"))
    return out
