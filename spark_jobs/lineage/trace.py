"""The chain behind a prediction, or down from a model, read from the platform's own records.

    python -m spark_jobs.lineage IMAGE_ID           # an image's sha256 (its image_id)
    python -m spark_jobs.lineage path/to/file.png   # a file: hashed first
    python -m spark_jobs.lineage --model VERSION    # a model version, down to its data
    ... [--json] [--params params.yaml] [--set key=value ...]

Each link is read from the record that made it, never guessed:

1. the prediction: its row in ``data.root/predictions/`` (batch runs) or ``stream/predictions/``
   (micro-batches), and that run's manifest (run id, time, code, gate, OpenLineage run, Airflow);
2. the model: the card of the version that scored it (the copy the run pinned, else the
   champion, candidate or trained folder that holds that version) and its promotion;
3. the training run: the card's run id, params hash, code and OpenLineage run;
4. the features run and 5. the ingest run: the published manifest whose sha256 the card records,
   with the source listing the ingest read and each gate's verdict and report.

A link that cannot be followed (a model trained elsewhere, a run since replaced or deleted) is
reported as missing, with which record was looked for and why it does not match.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from spark_jobs.core import lineage, manifest
from spark_jobs.core.config import ConfigError, Params, load_config, params_hash
from spark_jobs.core.manifest import MANIFEST, Manifest, RecordError
from spark_jobs.core.store import SourceError
from spark_jobs.ml.cards import (
    CANDIDATES,
    CARD,
    Champions,
    ModelCard,
    Promotion,
    TrainedModels,
    read_card,
    read_promotion,
)
from spark_jobs.scoring import tables

SHA256 = 64


@dataclass
class Link:
    """One step of the chain: what it is, what its record says, or why it cannot be followed."""

    step: str
    facts: dict[str, Any] = field(default_factory=dict)
    missing: str | None = None  # why this link cannot be followed (None: found)
    record: str | None = None  # the file the facts come from


@dataclass
class Found:
    """A prediction row of the image and the manifest of the run that wrote it."""

    row: dict[str, Any]
    kind: str  # "batch run" or "micro-batch"
    manifest_path: Path


def image_id_of(text: str) -> str:
    """The image id ``text`` names: a sha256 as given, or an existing file's sha256;
    :class:`SourceError` for anything else."""
    candidate = text.strip().lower()
    if len(candidate) == SHA256 and all(c in "0123456789abcdef" for c in candidate):
        return candidate
    path = Path(text)
    if path.is_file():
        digest = hashlib.sha256()
        with path.open("rb") as source:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
        return digest.hexdigest()
    raise SourceError(f"{text!r} is neither an image's sha256 (64 hex digits) nor a file")


def predictions_of(root: Path, image_id: str) -> list[Found]:
    """Every prediction row of ``image_id`` in the batch and stream tables, newest first."""
    import pyarrow.dataset as ds

    found: list[Found] = []
    places = (
        (tables.predictions_dir(root), "batch run"),
        (tables.stream_dir(root) / tables.PREDICTIONS, "micro-batch"),
    )
    for table, kind in places:
        files = lineage.parquet_parts(table)
        if not files:
            continue
        dataset = ds.dataset([str(p) for p in files], format="parquet", schema=_schema(files[0]))
        rows = dataset.to_table(filter=ds.field("image_id") == image_id, columns=[*_COLUMNS, "__filename"])
        for row in rows.to_pylist():
            found.append(Found(row, kind, _manifest_beside(Path(row.pop("__filename")), kind)))
    return sorted(found, key=lambda f: str(f.row.get("scored_at")), reverse=True)


_COLUMNS = ("image_id", "source_uri", "predicted_label", "probability", "anomaly_score", "model_version", "scored_at")


def _schema(path: Path) -> Any:
    import pyarrow.parquet as pq

    return pq.read_schema(path)


def _manifest_beside(part: Path, kind: str) -> Path:
    """The manifest of the run that wrote ``part``: a batch run's folder holds it; a micro-batch's
    sits beside its part (``part-<run>.parquet`` -> ``_manifest-<run>.json``)."""
    if kind == "batch run":
        return part.parent / MANIFEST
    run_id = part.name.removeprefix("part-").removesuffix(".parquet")
    return part.with_name(f"_manifest-{run_id}.json")


def _read(path: Path) -> Manifest | str:
    """The manifest at ``path``, or why it cannot be read."""
    if not path.exists():
        return f"{path} does not exist (the run was deleted or replaced)"
    try:
        return manifest.read_record(path, Manifest, "manifest", "run its stage again")
    except RecordError as exc:
        return str(exc)


def run_facts(doc: Manifest, root: Path) -> dict[str, Any]:
    """What every run's link shows: its run id and time, code, params hash, gate and report,
    and its OpenLineage run with the Airflow task and DAG run that started it."""
    facts: dict[str, Any] = {
        "run_id": doc.run_id,
        "finished_at": doc.timings.finished_at if doc.timings else None,
        "code": doc.job_version.label(),
        "params_hash": doc.params_hash,
        "gate": "PASSED" if doc.gate.success else "FAILED",
        "gate_checks": doc.gate.expectations,
        "gate_failed": list(doc.gate.failed),
    }
    report = root / "gates" / doc.stage / "report.html"
    if report.exists():  # the stage's newest gate report (a later run of the stage replaces it)
        facts["last_gate_report"] = str(report)
    return facts | lineage_facts(doc.lineage)


def lineage_facts(record: Any) -> dict[str, Any]:
    """The OpenLineage run of a record, and the Airflow runs above it ({} when it has none)."""
    if record is None:
        return {}
    facts = {"openlineage_run": f"{record.namespace}/{record.job}/{record.run_id}"}
    if record.parent is not None:
        facts["airflow_task_run"] = record.parent.label()
    if record.root is not None:
        facts["airflow_dag_run"] = record.root.label()
    return facts


def prediction_link(root: Path, image_id: str) -> tuple[Link, Manifest | None]:
    """The newest prediction of ``image_id`` and its run's manifest."""
    found = predictions_of(root, image_id)
    if not found:
        places = f"{tables.predictions_dir(root)} and {tables.stream_dir(root) / tables.PREDICTIONS}"
        return Link("prediction", missing=f"image {image_id} was never scored: no row of it in {places}"), None
    newest = found[0]
    row = {k: (v.isoformat() if hasattr(v, "isoformat") else v) for k, v in newest.row.items() if v is not None}
    facts = {"kind": newest.kind, **row, "predictions": len(found)}
    doc = _read(newest.manifest_path)
    if isinstance(doc, str):
        return Link("prediction", facts, missing=f"its run's manifest: {doc}", record=str(newest.manifest_path)), None
    facts |= run_facts(doc, root)
    return Link("prediction", facts, record=str(newest.manifest_path)), doc


def model_places(models: Path, champions: Path, version: str, kind: str | None) -> list[Path]:
    """Where a card of ``version`` may be: each champion and candidate folder, the trained folders."""
    places = [p.parent for p in sorted(champions.glob(f"*/{CARD}"))]
    places += [p.parent for p in sorted((champions / CANDIDATES).glob(f"*/{CARD}"))]
    kinds = [kind] if kind else sorted(p.parent.name for p in models.glob(f"*/{CARD}"))
    return places + [models / k for k in kinds]


def model_link(version: str, places: list[Path]) -> tuple[Link, ModelCard | None]:
    """The card of ``version`` in the first of ``places`` that holds it, and its promotion."""
    for folder in places:
        if not (folder / CARD).exists():
            continue
        try:
            card = read_card(folder)
        except SourceError:
            continue
        if card.version != version:
            continue
        promotion = read_promotion(folder)
        facts = {"version": version, "kind": card.kind, "task": card.task, "card": str(folder / CARD)}
        facts |= _promoted(promotion, version)
        return Link("model", facts, record=str(folder / CARD)), card
    looked = ", ".join(str(p) for p in places) or "nowhere"
    why = f"no card of version {version} in {looked}: trained elsewhere, or since replaced by a newer model"
    return Link("model", {"version": version}, missing=why), None


def _promoted(promotion: Promotion | None, version: str) -> dict[str, Any]:
    if promotion is None or promotion.version != version:
        return {"champion": False}
    figures = {k: promotion.figure(k) for k in ("accuracy", "auroc") if promotion.figure(k) is not None}
    return {"champion": True, "promoted_at": promotion.promoted_at, "replaced": promotion.replaced, **figures}


def training_link(card: ModelCard) -> Link:
    facts = {
        "run_id": card.run_id,
        "finished_at": card.timings.finished_at if card.timings else None,
        "code": card.job_version.label(),
        "params_hash": params_hash(card.params),
    }
    return Link("training", facts | lineage_facts(card.lineage))


def data_link(step: str, root: Path, wanted: str | None, recorded: str | None) -> tuple[Link, Manifest | None]:
    """The published ``step`` run (``features`` or ``ingest``) whose manifest's sha256 is ``wanted``:
    at ``recorded`` (where the card says it was), else under ``data.root``."""
    if wanted is None:
        return Link(step, {"used": False}), None
    path = Path(recorded) if recorded else root / step / MANIFEST
    if not path.exists():
        return Link(step, {"manifest_sha256": wanted}, missing=f"no published {step} run at {path.parent}"), None
    have = manifest.file_hash(path)
    if have != wanted:
        why = f"the model was trained on {step} run {wanted[:12]}, no longer published ({path} is {have[:12]})"
        return Link(step, {"manifest_sha256": wanted}, missing=why, record=str(path)), None
    doc = _read(path)
    if isinstance(doc, str):
        return Link(step, {"manifest_sha256": wanted}, missing=doc, record=str(path)), None
    facts = {"manifest_sha256": wanted, **run_facts(doc, path.parent.parent)}  # data.root of that run
    if step == "ingest":
        facts["source"] = doc.inputs.get("source")
    return Link(step, facts, record=str(path)), doc


def chain_of_model(root: Path, version: str, places: list[Path]) -> list[Link]:
    """The chain down from a model version: its card, training run, features and ingest runs."""
    model, card = model_link(version, places)
    if card is None:
        return [model]
    data = card.data
    features, _ = data_link("features", root, data.features_manifest_sha256, data.features_manifest)
    ingest, _ = data_link("ingest", root, data.ingest_manifest_sha256, data.ingest_manifest)
    return [model, training_link(card), features, ingest]


def chain_of_image(root: Path, image_id: str, models: Path, champions: Path) -> list[Link]:
    """The chain behind the newest prediction of ``image_id``."""
    prediction, doc = prediction_link(root, image_id)
    if "model_version" not in prediction.facts:
        return [prediction]
    version = prediction.facts["model_version"]
    said = doc.inputs.get("model", {}) if doc is not None else {}
    pinned = [Path(said["pinned"])] if said.get("pinned") and said.get("version") == version else []
    places = pinned + model_places(models, champions, version, said.get("kind"))
    return [prediction, *chain_of_model(root, version, places)]


def as_json(links: list[Link]) -> str:
    return json.dumps([asdict(link) for link in links], indent=2, default=str)


def as_text(links: list[Link]) -> str:
    """One block per link: its step, then ``key: value`` lines (or MISSING and why)."""
    lines = []
    for link in links:
        lines.append(f"{link.step}{'  (' + link.record + ')' if link.record else ''}")
        for key, value in link.facts.items():
            if value not in (None, [], {}):
                lines.append(f"    {key}: {_shown(value)}")
        if link.missing:
            lines.append(f"    MISSING: {link.missing}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, dict | list) else str(value)


class TraceParams(Params):
    """What the trace reads of params.yaml: ``data.root``, ``train.output``, ``evaluate.champion``."""

    train: TrainedModels = TrainedModels()
    evaluate: Champions = Champions()


def main(argv: list[str] | None = None) -> int:
    """The command line (the module's doc); 0 with a chain printed (missing links included), 2
    when there is nothing to trace (bad params, not an image id or file, a version never seen)."""
    import logging
    import sys

    from spark_jobs.core.config import arg_parser

    parser = arg_parser("lineage", __doc__)
    parser.prog = "python -m spark_jobs.lineage"
    parser.add_argument("image", nargs="?", help="an image's sha256, or a file (hashed)")
    parser.add_argument("--model", help="a model version: the chain down from it")
    parser.add_argument("--json", action="store_true", help="print the chain as JSON")
    args = parser.parse_args(argv)
    if (args.image is None) == (args.model is None):
        parser.error("give an image (its sha256 or a file) or --model VERSION")
    try:
        cfg = load_config(args.params, args.overrides, TraceParams)
        root, models, champions = Path(cfg.data.root), Path(cfg.train.output), Path(cfg.evaluate.champion)
        if args.model:
            links = chain_of_model(root, args.model, model_places(models, champions, args.model, None))
        else:
            links = chain_of_image(root, image_id_of(args.image), models, champions)
    except (ConfigError, SourceError) as exc:
        logging.basicConfig(format="%(message)s")
        logging.getLogger("spark_jobs.lineage").error("lineage: %s", str(exc).splitlines()[0])
        return 2
    print(as_json(links) if args.json else as_text(links), file=sys.stdout)
    return 0 if links[0].missing is None else 2
