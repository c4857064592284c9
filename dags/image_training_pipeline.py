"""image_training_pipeline: dvc.yaml's pipeline from ingest to evaluate (ingest -> backbone ->
features -> train@mllib/cnn/autoencoder -> evaluate, the same stages, commands and dependencies
as ``dvc repro``), triggered from the UI or the REST API with Params. Every Param starts empty,
meaning "as in params.yaml": a run with the form untouched is exactly ``dvc repro``; a Param the
run sets becomes a ``--set`` override of its params.yaml key for every stage. Orchestration only:
every stage is a spark-submit of the packaged ``spark_jobs``; the last task records the Params the
run set in params.yaml, versions the outputs with DVC (one DVC command at a time, in the ``dvc``
pool) and updates the champion-model Asset (see ``plugins/image_platform``), its event's ``extra``
naming the champion's folder and version.

The ``pipeline`` Param picks the pipeline: empty runs ``dvc.yaml`` (the digits, as above); ``grids``
runs ``grids/dvc.yaml``, the large-image pipeline (ingest -> features -> train@tiles_mean /
train@tiles_gru -> evaluate), in its own workspace ``grids/`` (its params.yaml, data, models and
champion; its asset is the grids champion); ``find`` runs ``find/dvc.yaml``, where one tile decides
the label (ingest -> features -> train@tiles_mean / tiles_gru / tiles_attention -> evaluate with
pointing accuracy), in ``find/``. A branch task runs the chosen one's tasks and skips the others'.
The other Params override the chosen workspace's params.yaml the same way."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from airflow.sdk import DAG, AssetAlias, Param, TaskGroup, get_current_context, task
from airflow.sdk.exceptions import AirflowSkipException
from image_platform import stages, versioning
from image_platform.assets import CHAMPION_OUT, FIND_CHAMPION_OUT, GRIDS_CHAMPION_OUT, add_event

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
# Each pipeline's champion asset, updated by its own version task.
CHAMPIONS = {"digits": CHAMPION_OUT, "grids": GRIDS_CHAMPION_OUT, "find": FIND_CHAMPION_OUT}


# How the form shows an empty drop-down choice (the UI would print JSON's "null").
EMPTY_CHOICE = {None: "(as in params.yaml)"}


def _param(kind: str, description: str, choices: list[str] | None = None, **bounds: int) -> Param:
    """An optional Param: null (empty in the form, or the drop-down's "(as in params.yaml)") unless
    the run sets it."""
    schema: dict[str, object] = {"enum": [None, *choices], "values_display": EMPTY_CHOICE} if choices else {}
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
        "feature_kind": _param("string", "features.kind: features of the mllib model", ["classical", "sift", "cnn"]),
        "mllib_classifier": _param(
            "string", "train.mllib.classifier: the classical model", ["logistic_regression", "random_forest"]
        ),
        "cnn_epochs": _param("integer", "train.cnn.epochs: epochs of the cnn", minimum=1, maximum=500),
        "autoencoder_epochs": _param(
            "integer", "train.autoencoder.epochs: epochs of the autoencoder", minimum=1, maximum=500
        ),
        "seed": _param("integer", "train.seed: the training seed", minimum=0, maximum=2**32 - 1),
        "pipeline": Param(
            None,
            type=["null", "string"],
            enum=[None, *(p for p in stages.PIPELINES if p != "digits")],
            values_display={None: "(the digits: dvc.yaml)"},
            description="The pipeline to run. Empty: dvc.yaml (the digits); grids: grids/dvc.yaml, the "
            "large-image pipeline in its own workspace grids/; find: find/dvc.yaml, tile attention "
            "that says where, in find/",
        ),
    },
) as dag:
    built = stages.package_task()

    def version_task(pipeline: str, names: list[str], champion: AssetAlias) -> object:
        @task(
            task_id="version" if pipeline == "digits" else f"version_{pipeline}",
            pool=versioning.POOL,
            outlets=[champion],
            retries=2,
            trigger_rule="none_failed",  # stages skipped as up to date: their outputs are versioned as they are
        )
        def version() -> dict:
            """The Params this run set into the workspace's params.yaml (none: the file is left as it
            is), then its outputs into the DVC cache (and remote) and its dvc.lock; the champion
            asset's event when this run promoted a champion (none otherwise: nothing new to score)."""
            context = get_current_context()
            if (context["params"].get("pipeline") or "digits") != pipeline:
                raise AirflowSkipException(f"this run chose the {context['params'].get('pipeline')} pipeline")
            where = stages.workspace(pipeline)
            overrides = stages.param_overrides(PARAM_KEYS, context["params"])
            changed = versioning.record_params(where, overrides)
            versioned = versioning.version_outputs(where, names)
            promoted = add_event(context["outlet_events"], champion, where, context["dag_run"].start_date)
            return {**versioned, "params_changed": changed, "champion_event": promoted}

        return version()

    # Every task of each pipeline follows the branch directly, so the branch skips all of the other
    # pipeline's tasks itself: the stages' trigger rule (none_failed: a stage skipped as up to date
    # does not skip what follows it) cannot then start them.
    chosen: dict[str, list[str]] = {}
    everything = []
    for pipeline, dvcfile in stages.PIPELINES.items():
        graph, commands = stages.pipeline_graph(dvcfile=dvcfile), stages.dvc_commands(dvcfile=dvcfile)
        group = TaskGroup(pipeline) if pipeline != "digits" else None
        tasks = {}
        for name, needs in graph.items():
            if name.partition("@")[0] in NOT_TRAINING:
                continue
            tasks[name] = stages.stage_task(
                stages.task_id(name),
                commands[name],
                param_keys=PARAM_KEYS,
                pipeline=pipeline,
                task_group=group,
            )
            [tasks[n] for n in sorted(needs) if n in tasks] >> tasks[name]
        sinks = [t for name, t in tasks.items() if not any(name in graph[other] for other in tasks)]
        version = version_task(pipeline, list(tasks), CHAMPIONS[pipeline])
        sinks >> version
        everything += [*tasks.values(), version]
        chosen[pipeline] = [t.task_id for t in tasks.values()] + [version.operator.task_id]

    @task.branch
    def choose_pipeline() -> list[str]:
        """Every task of the pipeline the ``pipeline`` Param names (empty: the digits)."""
        return chosen[get_current_context()["params"].get("pipeline") or "digits"]

    built >> choose_pipeline() >> everything
