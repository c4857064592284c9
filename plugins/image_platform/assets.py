"""The Airflow Assets the DAGs produce and consume."""

from __future__ import annotations

from airflow.sdk import Asset

from image_platform.stages import workspace

# Updated when a training run ends with a champion; image_batch_scoring runs on its updates.
CHAMPION = Asset(name="image_platform_champion_model", uri=f"file://{workspace() / 'models' / 'champion'}")
# Updated by every scoring run.
PREDICTIONS = Asset(name="image_platform_predictions", uri=f"file://{workspace() / 'data' / 'predictions'}")
