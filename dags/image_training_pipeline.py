"""image_training_pipeline: dvc.yaml's pipeline from ingest to evaluate (ingest -> backbone ->
features -> train@mllib/cnn/autoencoder -> evaluate, the same stages, commands and dependencies
as ``dvc repro``), triggered from the UI or the REST API with Params. Every Param starts empty,
meaning "as in params.yaml": a run with the form untouched is exactly ``dvc repro``; a Param the
run sets becomes a ``--set`` override of its params.yaml key for every stage. Orchestration only:
every stage is a spark-submit of the packaged ``spark_jobs``; the last task records the Params the
run set in params.yaml, versions the outputs with DVC (one DVC command at a time, in the ``dvc``
pool) and updates the champion-model Asset (see ``plugins/image_platform``), its event's ``extra``
naming the champion's folder and version."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, Param, get_current_context, task
from image_platform import stages, versioning
from image_platform.assets import CHAMPION, champion_extra

# dvc.yaml stages that are not part of training: the bundled sample and batch scoring.
NOT_TRAINING = {"sample", "score"}
# Each Param and the params.yaml key it overrides when a run sets it (empty: params.yaml's value).
PARAM_KEYS = {
    "source": "ingest.source",
    "image_size": "ingest.image_size",
    "feature_kind": "features.kind",
    "mllib_classifier": "train.mllib.classifier",
    "cnn_epochs": "train.cnn.epochs",
    "autoencoder_epochs": "train.autoencoder.epochs",
    "seed": "train.seed",
}
AS_IN_PARAMS = "Empty: as in params.yaml"


def _param(kind: str, description: str, choices: list[str] | None = None, **bounds: int) -> Param:
    """An optional Param: null (empty in the form) unless the run sets it."""
    schema: dict[str, object] = {"enum": [None, *choices]} if choices else {}
    return Param(None, type=["null", kind], description=f"{description}. {AS_IN_PARAMS}", **schema, **bounds)


with DAG(
    dag_id="image_training_pipeline",
    description="dvc.yaml's pipeline from ingest to evaluate; the model gate promotes the champion",
    schedule=None,
    start_date=datetime(2026, 1, 1, tzinfo=UTC),
    catchup=False,
    max_active_runs=1,
    tags=["image-platform", "training"],
    doc_md=__doc__,
    default_args={"retry_delay": timedelta(minutes=1)},
    params={
        "source": _param("string", "ingest.source: a folder, s3://bucket/prefix or manifest CSV", minLength=1),
        "image_size": _param("integer", "ingest.image_size: side of the square images", minimum=8, maximum=1024),
        "feature_kind": _param("string", "features.kind: features of the mllib model", ["classical", "cnn"]),
        "mllib_classifier": _param(
            "string", "train.mllib.classifier: the classical model", ["logistic_regression", "random_forest"]
        ),
        "cnn_epochs": _param("integer", "train.cnn.epochs: epochs of the cnn", minimum=1, maximum=500),
        "autoencoder_epochs": _param(
            "integer", "train.autoencoder.epochs: epochs of the autoencoder", minimum=1, maximum=500
        ),
        "seed": _param("integer", "train.seed: the training seed", minimum=0, maximum=2**32 - 1),
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
            param_keys=PARAM_KEYS,
        )
        upstream = [tasks[n] for n in sorted(needs) if n in tasks]
        (upstream or [built]) >> tasks[name]

    @task(pool=versioning.POOL, outlets=[CHAMPION], retries=2)
    def version() -> dict:
        """The Params this run set into params.yaml (none: the file is left as it is), then its
        outputs into the DVC cache (and remote) and dvc.lock."""
        overrides = stages.param_overrides(PARAM_KEYS, get_current_context()["params"])
        changed = versioning.record_params(stages.workspace(), overrides)
        get_current_context()["outlet_events"][CHAMPION].extra = champion_extra(stages.workspace())
        return {**versioning.version_outputs(stages.workspace(), list(tasks)), "params_changed": changed}

    sinks = [t for name, t in tasks.items() if not any(name in graph[other] for other in tasks)]
    sinks >> version()
