"""image_training_pipeline: dvc.yaml's pipeline from ingest to evaluate (ingest -> backbone ->
features -> train@mllib/cnn/autoencoder -> evaluate, the same stages, commands and dependencies
as ``dvc repro``), triggered from the UI or the REST API with Params, each a ``--set`` override of
params.yaml. Orchestration only: every stage is a spark-submit of the packaged ``spark_jobs``; the
last task records the Params in params.yaml, versions the outputs with DVC (one DVC command at a
time, in the ``dvc`` pool) and updates the champion-model Asset (see ``plugins/image_platform``)."""

from __future__ import annotations

from datetime import datetime, timedelta

from airflow.sdk import DAG, Param, task
from image_platform import stages, versioning
from image_platform.assets import CHAMPION

# dvc.yaml stages that are not part of training: the bundled sample and batch scoring.
NOT_TRAINING = {"sample", "score"}
# Every Param as a --set override of params.yaml, given to every stage (each reads its sections).
OVERRIDES = [
    "ingest.source={{ params.source }}",
    "ingest.image_size={{ params.image_size }}",
    "features.kind={{ params.feature_kind }}",
    "train.seed={{ params.seed }}",
    "train.mllib.classifier={{ params.mllib_classifier }}",
    "train.cnn.epochs={{ params.epochs }}",
    "train.autoencoder.epochs={{ params.epochs }}",
]

with DAG(
    dag_id="image_training_pipeline",
    description="dvc.yaml's pipeline from ingest to evaluate; the model gate promotes the champion",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["image-platform", "training"],
    default_args={"retry_delay": timedelta(minutes=1)},
    params={
        "source": Param("data/sample/digits", type="string", description="Folder, s3://bucket/prefix or manifest CSV"),
        "image_size": Param(32, type="integer", minimum=8, maximum=1024, description="Side of the square images"),
        "feature_kind": Param("classical", enum=["classical", "cnn"], description="Features of the mllib model"),
        "mllib_classifier": Param(
            "logistic_regression", enum=["logistic_regression", "random_forest"], description="The classical model"
        ),
        "epochs": Param(12, type="integer", minimum=1, maximum=500, description="Epochs of the cnn and autoencoder"),
        "seed": Param(0, type="integer", minimum=0, maximum=2**32 - 1, description="Training seed"),
    },
) as dag:
    built = stages.package_task()
    graph, commands = stages.pipeline_graph(), stages.dvc_commands()
    tasks = {}
    for name, needs in graph.items():
        if name.partition("@")[0] in NOT_TRAINING:
            continue
        tasks[name] = stages.stage_task(
            stages.task_id(name),
            commands[name],
            overrides=OVERRIDES,
        )
        upstream = [tasks[n] for n in sorted(needs) if n in tasks]
        (upstream or [built]) >> tasks[name]

    @task(pool=versioning.POOL, outlets=[CHAMPION], retries=2)
    def version(overrides: list[str]) -> dict:
        """The run's Params into params.yaml, then its outputs into the DVC cache (and remote)
        and dvc.lock."""
        changed = versioning.record_params(stages.workspace(), overrides)
        return {**versioning.version_outputs(stages.workspace(), list(tasks)), "params_changed": changed}

    sinks = [t for name, t in tasks.items() if not any(name in graph[other] for other in tasks)]
    sinks >> version(OVERRIDES)
