"""A shadow challenger beside the champion (``score.shadow``): its prediction rows, made in the
same scan from the same decoded pixels (:class:`spark_jobs.scoring.heads.Paired`) and kept in a
shadow table, never in the predictions; what a run's manifest records of the two
(:class:`~spark_jobs.core.manifest.ShadowRecord`: agreement, mean confidence, class mix) and the
report's pictures of the images on which they disagree. Evaluate reads the records back
(:func:`recent_agreements`) when a promotion must wait for the shadow runs to agree."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from spark_jobs.core import manifest
from spark_jobs.core.manifest import ModelSays, ShadowRecord
from spark_jobs.ml.exhibits import file_thumbnail
from spark_jobs.quality.report import Gallery, Thumb, short_name

SAID = ("image_id", "source_uri", "predicted_label", "probability")  # what the comparison reads of a table
MAX_DISAGREEMENTS = 12  # thumbnails of the images the two models disagree on


def read_said(folder: Path) -> pa.Table:
    """The :data:`SAID` columns of a Parquet folder or file (an empty table when there is none)."""
    import pyarrow.dataset as ds

    parts = [folder] if folder.is_file() else sorted(folder.glob("*.parquet")) if folder.is_dir() else []
    if not parts:
        return pa.table({c: pa.array([], pa.float32() if c == "probability" else pa.string()) for c in SAID})
    return ds.dataset([str(p) for p in parts], format="parquet").to_table(columns=list(SAID))


def says(version: str, kind: str, rows: pa.Table) -> ModelSays:
    """What one model said of ``rows``: its mean confidence and its class mix."""
    labels = rows.column("predicted_label").to_pylist()
    probabilities = [p for p in rows.column("probability").to_pylist() if p is not None]
    mix: dict[str, float] = {}
    for label in labels:
        mix[str(label)] = mix.get(str(label), 0) + 1
    confidence = round(sum(probabilities) / len(probabilities), 6) if probabilities else None
    return ModelSays(
        version=version,
        kind=kind,
        mean_confidence=confidence,
        class_mix={k: round(v / len(labels), 6) for k, v in sorted(mix.items())},
    )


def joined(champion: pa.Table, shadow: pa.Table) -> pa.Table:
    """The images both models scored, one row each: the champion's :data:`SAID` columns and the
    shadow's label and probability (``shadow_label``, ``shadow_probability``)."""
    theirs = shadow.select(["image_id", "predicted_label", "probability"]).rename_columns(
        ["image_id", "shadow_label", "shadow_probability"]
    )
    return champion.select(list(SAID)).join(theirs, "image_id", join_type="inner").sort_by("image_id")


def compared(champion: pa.Table, shadow: pa.Table, ours: tuple[str, str], theirs: tuple[str, str]) -> ShadowRecord:
    """The shadow record of one run: ``ours`` and ``theirs`` are each model's (version, kind); the
    agreement is the share of the images both scored given the same label."""
    both = joined(champion, shadow)
    labels = zip(both["predicted_label"].to_pylist(), both["shadow_label"].to_pylist(), strict=True)
    agree = sum(a == b for a, b in labels)
    return ShadowRecord(
        rows=both.num_rows,
        agreement=round(agree / both.num_rows, 6) if both.num_rows else None,
        champion=says(*ours, champion),
        shadow=says(*theirs, shadow),
    )


def disagreements(champion: pa.Table, shadow: pa.Table, total_rows: int) -> Gallery:
    """The first :data:`MAX_DISAGREEMENTS` images (by id) on which the models disagree, read back
    from their files, each with what each model said."""
    both = joined(champion, shadow).to_pylist()
    differ = [r for r in both if r["predicted_label"] != r["shadow_label"]]
    thumbs = tuple(
        Thumb(
            (
                short_name(r["source_uri"]),
                f"champion {r['predicted_label']} ({_p(r['probability'])})",
                f"shadow {r['shadow_label']} ({_p(r['shadow_probability'])})",
            ),
            file_thumbnail(r["source_uri"]),
        )
        for r in differ[:MAX_DISAGREEMENTS]
    )
    note = f"of {total_rows} images both models scored; every row is in the run's shadow table"
    return Gallery("Champion and shadow disagree", thumbs, len(differ), note)


def _p(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def recent_agreements(manifests: Iterable[Path], version: str, runs: int) -> list[tuple[float, int]]:
    """``(agreement, images)`` of the last ``runs`` scoring runs (batch runs or micro-batches, by
    the time they finished) in which ``version`` was the shadow, newest first; runs without a
    shadow record, or whose manifest this version cannot read, are skipped."""
    found = []
    for path in manifests:
        try:
            doc = manifest.read_record(path, manifest.Manifest, "scoring manifest", "")
        except (OSError, manifest.RecordError):  # gone since it was listed, or older
            continue
        s = doc.shadow
        if s is not None and s.shadow.version == version and s.agreement is not None:
            finished = doc.timings.finished_at if doc.timings else ""
            found.append((finished, s.agreement, s.rows))
    return [(agreement, rows) for _, agreement, rows in sorted(found, reverse=True)[:runs]]


def scoring_manifests(root: Path) -> list[Path]:
    """Every batch run's and micro-batch's manifest under ``data.root``."""
    batch = root.glob("predictions/run_date=*/run_id=*/_manifest.json")
    stream = root.glob("stream/predictions/hour=*/_manifest-*.json")
    return sorted([*batch, *stream])
