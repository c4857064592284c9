"""The Airflow Assets the DAGs produce and consume: stable names, not file paths. Where a run's
products actually are (``data.root``, ``evaluate.champion``, as that run's params.yaml says) and
which versions it made go in each asset event's ``extra``, resolved when the task runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import Asset

# Updated when a training run ends with a champion; image_batch_scoring runs on its updates.
CHAMPION = Asset(name="image_platform_champion_model", uri="image-platform://champion/")
# Updated when a run of the large-image pipeline (grids/) ends with a champion: its own, apart from
# the digits champion (nothing scores the digits inbox with it).
GRIDS_CHAMPION = Asset(name="image_platform_grids_champion_model", uri="image-platform://grids/champion/")
# Updated by every scoring run.
PREDICTIONS = Asset(name="image_platform_predictions", uri="image-platform://predictions/")


def champion_extra(workspace: Path) -> dict[str, Any]:
    """The champion a training run left in ``workspace``: its folder and the promoted model."""
    from spark_jobs.ml import cards
    from spark_jobs.params import load

    cfg = load(workspace / "params.yaml")
    folder = (workspace / cfg.evaluate.champion).resolve()
    extra: dict[str, Any] = {"workspace": str(workspace), "path": str(folder)}
    for task in sorted(set(cards.TASKS.values())):
        promoted = cards.read_promotion(folder / task)  # what evaluate promoted there, if anything
        if promoted is not None:
            extra[task] = {"kind": promoted.kind, "version": promoted.version}
    return extra


def predictions_extra(workspace: Path) -> dict[str, Any]:
    """Where a scoring run in ``workspace`` appended its predictions."""
    from spark_jobs.params import load

    cfg = load(workspace / "params.yaml")
    return {"workspace": str(workspace), "path": str((workspace / cfg.data.root / "predictions").resolve())}


def event_extra(asset: object, workspace: Path) -> dict[str, Any] | None:
    """The ``extra`` of an event of one of the project's assets produced in ``workspace``."""
    extras = {CHAMPION.name: champion_extra, GRIDS_CHAMPION.name: champion_extra, PREDICTIONS.name: predictions_extra}
    made = extras.get(getattr(asset, "name", ""))
    return made(workspace) if made else None
