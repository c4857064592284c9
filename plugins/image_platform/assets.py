"""The Airflow Assets the DAGs produce and consume: stable names, not file paths. Where a run's
products actually are (``data.root``, ``evaluate.champion``, as that run's params.yaml says) and
which versions it made go in each asset event's ``extra``, resolved when the task runs.

An event says something new exists, so a task sends one only when its run made something: the
tasks' outlets are asset aliases (:data:`CHAMPION_OUT`, :data:`PREDICTIONS_OUT`), and a run adds
the asset's event to its alias (:func:`add_event`) when its products are new: a champion promoted
by this run, a scoring run that published predictions. A run that changed nothing sends none, and
starts nothing downstream."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from airflow.sdk import Asset, AssetAlias

# Updated when a training run ends with a champion; image_batch_scoring runs on its updates.
CHAMPION = Asset(name="image_platform_champion_model", uri="image-platform://champion/")
# Updated when a run of the large-image pipeline (grids/) ends with a champion: its own, apart from
# the digits champion (nothing scores the digits inbox with it).
GRIDS_CHAMPION = Asset(name="image_platform_grids_champion_model", uri="image-platform://grids/champion/")
# The same for the find pipeline (find/): a tiles_attention champion that says where.
FIND_CHAMPION = Asset(name="image_platform_find_champion_model", uri="image-platform://find/champion/")
# Updated by every scoring run that published predictions.
PREDICTIONS = Asset(name="image_platform_predictions", uri="image-platform://predictions/")
# What the tasks declare as outlets: an event of the asset is added to them only when there is news.
CHAMPION_OUT = AssetAlias(name="image_platform_champion_promoted")
GRIDS_CHAMPION_OUT = AssetAlias(name="image_platform_grids_champion_promoted")
FIND_CHAMPION_OUT = AssetAlias(name="image_platform_find_champion_promoted")
PREDICTIONS_OUT = AssetAlias(name="image_platform_predictions_published")
ALIASED = {
    CHAMPION_OUT.name: CHAMPION,
    GRIDS_CHAMPION_OUT.name: GRIDS_CHAMPION,
    FIND_CHAMPION_OUT.name: FIND_CHAMPION,
    PREDICTIONS_OUT.name: PREDICTIONS,
}


def champion_extra(workspace: Path, since: datetime | None = None) -> dict[str, Any] | None:
    """The champion a training run left in ``workspace``: its folder and each task's promoted model
    (kind, version, when). ``since``: None unless a champion was promoted at or after it (by the run
    that started then)."""
    from spark_jobs.ml import cards
    from spark_jobs.params import load

    cfg = load(workspace / "params.yaml")
    folder = (workspace / cfg.evaluate.champion).resolve()
    extra: dict[str, Any] = {"workspace": str(workspace), "path": str(folder)}
    new = since is None
    for task in sorted(set(cards.TASKS.values())):
        promoted = cards.read_promotion(folder / task)  # what evaluate promoted there, if anything
        if promoted is not None:
            extra[task] = {"kind": promoted.kind, "version": promoted.version, "promoted_at": promoted.promoted_at}
            new = new or datetime.fromisoformat(promoted.promoted_at) >= since  # type: ignore[operator]
    return extra if new else None


def predictions_extra(workspace: Path, since: datetime | None = None) -> dict[str, Any] | None:
    """The scoring run that published predictions in ``workspace`` at or after ``since`` (the
    latest one when ``since`` is None): where, its run id and how many images it scored; None when
    no run published any."""
    from spark_jobs.core.manifest import read_json
    from spark_jobs.params import load
    from spark_jobs.scoring import tables

    cfg = load(workspace / "params.yaml")
    table = (workspace / cfg.data.root / tables.PREDICTIONS).resolve()
    for folder in reversed(tables.committed_runs(table)):  # the newest first
        manifest = read_json(folder)
        finished = datetime.fromisoformat(manifest["timings"]["finished_at"])
        if since is not None and finished < since:
            return None
        return {
            "workspace": str(workspace),
            "path": str(table),
            "run": str(folder),
            "run_id": manifest["run_id"],
            "rows": manifest["counts"]["scored"],
        }
    return None


def add_event(outlet_events: Any, alias: AssetAlias, workspace: Path, since: datetime) -> dict[str, Any] | None:
    """Add the event of ``alias``'s asset, with its ``extra``, when this run (started at ``since``)
    made something new in ``workspace``; returns the extra (None: no event)."""
    asset = ALIASED[alias.name]
    made = predictions_extra if asset is PREDICTIONS else champion_extra
    extra = made(workspace, since.replace(microsecond=0))  # the records' times are to the second
    if extra is not None:
        outlet_events[alias].add(asset, extra=extra)
    return extra
