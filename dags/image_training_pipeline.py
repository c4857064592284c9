"""image_training_pipeline: ingest -> features -> train -> evaluate, triggered from the UI or the
REST API with Params (each one a ``--set`` override of params.yaml). Orchestration only: the
stages are dvc.yaml's, submitted by spark-submit with the packaged ``spark_jobs`` (see
``plugins/image_platform``)."""

from __future__ import annotations

import sys
from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task
from image_platform import package, stages
from image_platform.assets import CHAMPION

# Every Param as a --set override of params.yaml, given to every stage (each reads its sections).
OVERRIDES = [
    "ingest.source={{ params.source }}",
    "ingest.image_size={{ params.image_size }}",
    "features.kind={{ params.feature_kind }}",
    "train.seed={{ params.seed }}",
    "train.cnn.epochs={{ params.epochs }}",
    "train.autoencoder.epochs={{ params.epochs }}",
]

with DAG(
    dag_id="image_training_pipeline",
    description="Ingest, features, train and evaluate on demand; the champion model is promoted by the model gate",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["image-platform", "training"],
    default_args={"retry_delay": timedelta(minutes=1)},
    params={
        "source": Param("data/sample/digits", type="string", description="Folder, s3://bucket/prefix or manifest CSV"),
        "image_size": Param(32, type="integer", minimum=8, maximum=1024, description="Side of the square images"),
        "feature_kind": Param("classical", enum=["classical", "cnn"], description="Features for the mllib model"),
        "model": Param("cnn", enum=["mllib", "cnn", "autoencoder"], description="The model to train"),
        "epochs": Param(12, type="integer", minimum=1, maximum=500, description="Epochs (cnn and autoencoder)"),
        "seed": Param(0, type="integer", minimum=0, description="Training seed"),
    },
) as dag:

    @task
    def build_package() -> str:
        """The spark_jobs zip of this working tree (reused when unchanged)."""
        return str(package.build(stages.REPO / "dist"))

    zip_path = build_package()
    py_files = "{{ ti.xcom_pull(task_ids='build_package') }}"
    previous = zip_path
    for name in ("ingest", "features", "train", "evaluate"):
        command = stages.stage_command(name, "{{ params.model }}" if name == "train" else None)
        outlets = [CHAMPION] if name == "evaluate" else []
        current = stages.stage_task(
            name, command, py_files=py_files, overrides=OVERRIDES, python=sys.executable, outlets=outlets
        )
        previous >> current
        previous = current
