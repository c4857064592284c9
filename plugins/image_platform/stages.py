"""The pipeline's stages as Airflow tasks, built from ``dvc.yaml`` (the one list of stages and
their commands), so a DAG and ``dvc repro`` run the same thing and cannot drift apart.

Each stage task is a :class:`StageSubmitOperator`: the Spark provider's ``SparkSubmitOperator``
submitting ``spark_jobs/__main__.py <stage> --set ...`` with the packaged ``spark_jobs`` zip as
``--py-files``, through the ``spark_default`` connection (``local[*]`` here, a cluster URL
unchanged). A stage's own verdicts are final: exit code 2 (unusable input) and 3 (gate failed)
fail the task without retries, with the stage's message (and the gate report path) in the log;
any other failure (the JVM, the cluster, a lost executor, exit code 4: the object store was
unreachable) is retried.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import json
import logging
import os
import re
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from airflow.providers.apache.spark.operators.spark_submit import SparkSubmitOperator
from airflow.sdk import AssetAlias, XComArg, task
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from image_platform import assets, package

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]  # the code: spark_jobs/, dvc.yaml
WORKSPACE_ENV = "IMAGE_PLATFORM_WORKSPACE"
# The pipelines, each a dvc.yaml whose folder is its workspace (its params.yaml, data/, models/):
# the digits (the default) and the large-image ones, each in its own workspace (grids/, find/:
# docs/large-images.md).
PIPELINES = {"digits": "dvc.yaml", "grids": "grids/dvc.yaml", "find": "find/dvc.yaml"}
LAUNCHER = "spark_jobs/__main__.py"
PACKAGE_TASK = "build_package"
# The artifact a stage submits: what this run's build_package task built.
PACKAGED = f"{{{{ ti.xcom_pull(task_ids='{PACKAGE_TASK}') }}}}"
# Where a stage reads the Airflow task run that started it, for its OpenLineage events' parent run
# facet (spark_jobs/core/lineage.py): ``namespace/job/run id``, OpenLineage's integrations' convention.
LINEAGE_PARENT_ENV = "OPENLINEAGE_PARENT_ID"
LINEAGE_ROOT_PARENT_ENV = "OPENLINEAGE_ROOT_PARENT_ID"
# Exit codes of spark_jobs.core.jobs.run_stage that no retry can change.
FINAL_EXIT_CODES = {2: "unusable input or parameters", 3: "its gate failed (nothing was published)"}


@dataclass(frozen=True)
class StageCommand:
    """One ``dvc.yaml`` stage's command: ``python -m spark_jobs.<stage> <args>``."""

    name: str  # the DVC stage, e.g. "train@cnn"
    stage: str  # the spark_jobs module, e.g. "train"
    args: tuple[str, ...]  # e.g. ("--set", "train.model=cnn")


def workspace(pipeline: str = "digits") -> Path:
    """Where runs of ``pipeline`` read params.yaml and write data/, models/, reports/ (``dvc
    repro``'s folder for its dvc.yaml): under ``$IMAGE_PLATFORM_WORKSPACE``, else the repository
    itself; the digits pipeline's is the root (and holds dist/), the grids one's ``grids/``, the
    find one's ``find/``."""
    return (Path(os.environ.get(WORKSPACE_ENV, REPO)) / PIPELINES[pipeline]).parent.resolve()


@dataclass(frozen=True)
class DvcStage:
    """One stage of the pipeline as DVC reads ``dvc.yaml``: ``foreach`` expanded (``train@cnn``),
    ``${...}`` interpolated from params.yaml, paths relative to the repository."""

    command: StageCommand
    deps: tuple[str, ...]
    params: tuple[str, ...]  # the params.yaml keys it tracks
    outs: tuple[str, ...]
    needs: frozenset[str]  # the stages whose outputs it depends on (DVC's own graph)


@functools.cache
def pipeline(root: Path = REPO, dvcfile: str = "dvc.yaml") -> dict[str, DvcStage]:
    """Every stage of ``root``'s ``dvcfile`` (``dvc.yaml``, or ``grids/dvc.yaml`` of the
    large-image pipeline) in DVC's order, read by DVC itself (its index and stage graph), so the
    DAGs run exactly what ``dvc repro`` runs; ``needs`` names stages of the same file.

    Every task start parses the DAG file, so DVC's reading (about 1 s for both pipelines, DVC's
    import included) is kept in a file named by the hash of what it depends on (the dvc.yaml, the
    params.yaml beside it, DVC's version) under the temporary folder: a task then reads a small
    JSON file instead (:func:`_cached`)."""
    folder = (root / dvcfile).parent
    return _cached(root, dvcfile, [root / dvcfile, folder / "params.yaml"], _read_pipeline)


def _cached(
    root: Path, dvcfile: str, sources: Sequence[Path], read: Callable[[Path, str], dict[str, DvcStage]]
) -> dict[str, DvcStage]:
    """``read(root, dvcfile)``, kept as JSON under ``<tmp>/image-platform-<uid>/`` by the hash of
    ``sources``' bytes, the arguments and DVC's version (a stale entry can never match)."""
    import hashlib
    from importlib.metadata import version

    digest = hashlib.sha256(f"{_CACHE_FORMAT}\0{root.resolve()}\0{dvcfile}\0{version('dvc')}".encode())
    for path in sources:
        digest.update(path.read_bytes() if path.exists() else b"\0missing")
    cache = Path(tempfile.gettempdir()) / f"image-platform-{os.getuid()}" / f"pipeline-{digest.hexdigest()[:32]}.json"
    try:
        return {name: _stage_of(record) for name, record in json.loads(cache.read_text()).items()}
    except (OSError, ValueError, KeyError, TypeError):
        pass  # not read yet (or unreadable): read by DVC, then kept
    stages = read(root, dvcfile)
    with contextlib.suppress(OSError):  # a read-only temporary folder only costs the next parse
        cache.parent.mkdir(mode=0o700, exist_ok=True)
        fd, part = tempfile.mkstemp(dir=cache.parent, prefix=".pipeline-")
        with os.fdopen(fd, "w") as out:
            json.dump({name: _record_of(stage) for name, stage in stages.items()}, out)
        os.replace(part, cache)
    return stages


_CACHE_FORMAT = 2  # raised whenever what is kept (or how it is read) changes


def _record_of(stage: DvcStage) -> dict[str, Any]:
    return {**dataclasses.asdict(stage), "needs": sorted(stage.needs)}


def _stage_of(record: dict[str, Any]) -> DvcStage:
    command = record["command"]
    return DvcStage(
        command=StageCommand(command["name"], command["stage"], tuple(command["args"])),
        deps=tuple(record["deps"]),
        params=tuple(record["params"]),
        outs=tuple(record["outs"]),
        needs=frozenset(record["needs"]),
    )


def _read_pipeline(root: Path, dvcfile: str) -> dict[str, DvcStage]:
    """:func:`pipeline` as DVC reads it (reads files only: no lock, no cache, no network)."""
    from dvc.dependency.param import ParamsDependency
    from dvc.repo import Repo
    from dvc.stage import PipelineStage

    wanted = (root / dvcfile).resolve()

    def ours(stage: object) -> bool:  # by absolute path: DVC's relpath is the current folder's
        return isinstance(stage, PipelineStage) and Path(stage.dvcfile.path).resolve() == wanted

    with Repo(str(root), uninitialized=True) as repo, warnings.catch_warnings():
        # DVC's index still calls pygtrie's deprecated ``_NoneStep.value`` (a warning per stage).
        warnings.filterwarnings("ignore", message=r"_NoneStep\.value will soon raise", category=DeprecationWarning)
        graph = repo.index.graph
        out = {}
        for stage in repo.index.stages:
            if not ours(stage):
                continue
            params = [key for d in stage.deps if isinstance(d, ParamsDependency) for key in d.params]
            out[stage.name] = DvcStage(
                command=_parse(stage.name, stage.cmd),
                deps=tuple(str(d.def_path) for d in stage.deps if not isinstance(d, ParamsDependency)),
                params=tuple(params),
                outs=tuple(str(o.def_path) for o in stage.outs),
                needs=frozenset(s.name for s in graph.successors(stage) if ours(s)),
            )
    return out


def dvc_commands(root: Path = REPO, dvcfile: str = "dvc.yaml") -> dict[str, StageCommand]:
    """Every stage of ``dvcfile`` (``foreach`` stages as ``name@key``) and its command."""
    return {name: stage.command for name, stage in pipeline(root, dvcfile).items()}


def pipeline_graph(root: Path = REPO, dvcfile: str = "dvc.yaml") -> dict[str, set[str]]:
    """Each stage of ``dvcfile`` and the stages of it that it needs, as DVC's graph has them."""
    return {name: set(stage.needs) for name, stage in pipeline(root, dvcfile).items()}


def _parse(name: str, cmd: str | list[str]) -> StageCommand:
    words = shlex.split(cmd if isinstance(cmd, str) else " ".join(cmd))
    if words[:2] != ["python", "-m"] or not words[2].startswith("spark_jobs."):
        raise ValueError(f"dvc.yaml stage {name}: expected 'python -m spark_jobs.<stage> ...', got {cmd!r}")
    return StageCommand(name, words[2].removeprefix("spark_jobs."), tuple(words[3:]))


def task_id(stage: str) -> str:
    """The Airflow task id of a dvc.yaml stage (``train@cnn`` -> ``train_cnn``)."""
    return stage.replace("@", "_")


def application_args(command: StageCommand, overrides: Sequence[str] = ()) -> list[str]:
    """What follows the launcher on the spark-submit line: the stage, its dvc.yaml arguments, then
    one ``--set key=value`` per override (templated strings are rendered by Airflow)."""
    return [command.stage, *command.args, *[f"--set={o}" for o in overrides]]


def param_overrides(param_keys: Mapping[str, str], params: Mapping[str, Any]) -> list[str]:
    """A DAG run's Params as ``key=value`` overrides of params.yaml (``param_keys``: each Param's
    params.yaml key). A Param left empty (null, the form's default) overrides nothing: the stage
    reads params.yaml, exactly as ``dvc repro`` does. Values are written as
    :func:`spark_jobs.core.config.parse_value` reads them back (strings verbatim)."""
    overrides = []
    for name, key in param_keys.items():
        value = params.get(name)
        if value is None:
            continue
        # true/false, [..] and {..} as JSON, which YAML reads; numbers and strings as they are.
        text = json.dumps(value) if isinstance(value, bool | list | dict) else str(value)
        overrides.append(f"{key}={text}")
    return overrides


class StageSubmitOperator(SparkSubmitOperator):
    """``SparkSubmitOperator`` for one pipeline stage, with ``dvc repro``'s semantics.

    - Skipped (with the reason in the log) when the run chose the other pipeline (the ``pipeline``
      Param), and when its DVC stage is up to date for this run's parameters (:func:`up_to_date`:
      DVC's own status, and no Param of the run changes a value the stage tracks).
    - A stage's own verdict (exit code 2 or 3) fails the task at once, without retries; other
      failures keep the configured retries.
    - The Params the run set (``param_keys``: DAG Param -> params.yaml key) follow the stage's
      arguments as ``--set`` overrides; Params left empty add nothing (:func:`param_overrides`).
    - Its outlets are asset aliases (:mod:`image_platform.assets`): the asset's event is added only
      when the run published something new.
    - The stage's own warnings and errors keep their level in the task log (:class:`LevelledLog`).
    """

    def __init__(
        self,
        *,
        stage: str,
        param_keys: Mapping[str, str] | None = None,
        workdir: Path | None = None,
        pipeline: str = "digits",
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("trigger_rule", "none_failed")  # an upstream stage skipped as up to date is no reason
        super().__init__(**kwargs)
        self.stage = stage
        self.pipeline = pipeline
        self.param_keys = dict(param_keys or {})
        self.workdir = workdir or workspace(pipeline)  # the stage's workspace: its params.yaml

    def _skipping(self, why: str) -> str:
        """The reason, logged (Airflow logs only "Skipping task." of the exception)."""
        reason = f"stage {self.stage} {why}"
        self.log.info("%s", reason)
        return reason

    def _get_hook(self) -> Any:
        hook = super()._get_hook()
        hook._log = LevelledLog(hook.log)  # LoggingMixin's cached logger: the hook logs each line through it
        return hook

    def execute(self, context: Any) -> None:
        from airflow.sdk.exceptions import AirflowSkipException

        params = context.get("params") or {}
        chosen = params.get("pipeline") or "digits"
        if chosen != self.pipeline:
            raise AirflowSkipException(self._skipping(f"this run chose the {chosen} pipeline"))
        overrides = param_overrides(self.param_keys, params)
        if overrides:
            self.log.info("this run's Params override params.yaml: %s", ", ".join(overrides))
        reason = up_to_date(self.workdir, PIPELINES[self.pipeline], self.stage, overrides)
        if reason is not None:
            raise AirflowSkipException(self._skipping(f"skipped, as dvc repro would: {reason}"))
        self.application_args = [*(self.application_args or []), *(f"--set={o}" for o in overrides)]
        self.conf = {**(self.conf or {}), **driver_conf(self.application_args, self.workdir)}
        self.env_vars = {**(self.env_vars or {}), **lineage_parent(context)}
        since = datetime.now(UTC)
        try:
            super().execute(context)
        except AirflowException as exc:
            match = re.search(r"Error code is: (\d+)", str(exc))
            code = int(match.group(1)) if match else None
            if code in FINAL_EXIT_CODES:  # the stage's own lines above say why: not repeated here
                raise AirflowFailException(
                    f"stage {self.stage} stopped: {FINAL_EXIT_CODES[code]} (exit code {code}); "
                    "its reason, and the gate report path when a gate failed, are in the log above"
                ) from None
            raise
        for outlet in self.outlets:  # what this run made, in the asset event (none: no event)
            if isinstance(outlet, AssetAlias) and outlet.name in assets.ALIASED:
                extra = assets.add_event(context["outlet_events"], outlet, self.workdir, since)
                self.log.info("%s: %s", assets.ALIASED[outlet.name].name, extra or "nothing new: no asset event")


def lineage_parent(context: Any) -> dict[str, str]:
    """This task run as the parent of the stage's OpenLineage runs: the OpenLineage provider's own
    macros (``lineage_parent_id``, ``lineage_root_parent_id``: the ids its listener gives this task
    run and its DAG run) in the environment variables the stage reads. Empty when OpenLineage is
    off in Airflow (no transport configured: the provider then emits nothing to be joined to)."""
    from airflow.providers.openlineage import conf

    ti = context.get("ti") or context.get("task_instance")
    if ti is None or conf.is_disabled():
        return {}
    from airflow.providers.openlineage.plugins.macros import lineage_parent_id, lineage_root_parent_id

    return {LINEAGE_PARENT_ENV: lineage_parent_id(ti), LINEAGE_ROOT_PARENT_ENV: lineage_root_parent_id(ti)}


_LINE_LEVEL = re.compile(r"^\S+ \S+ (WARN|WARNING|ERROR|CRITICAL|FATAL) ")
_LEVEL_METHODS = {
    "WARN": "warning",
    "WARNING": "warning",
    "ERROR": "error",
    "CRITICAL": "critical",
    "FATAL": "critical",
}


class LevelledLog:
    """The Spark provider's hook logger, with the level of each spark-submit line it logs kept: the
    provider logs every line at INFO, so the stages' own ``WARNING``/``ERROR`` lines (``<date>
    <time> ERROR spark_jobs...: ...``) and Spark's (``yy/MM/dd HH:mm:ss WARN ...``) go out at their
    level, and Airflow shows errors as errors. Everything else is the wrapped logger's."""

    def __init__(self, log: Any) -> None:
        self._log = log

    def info(self, msg: Any, *args: Any, **kwargs: Any) -> Any:
        match = _LINE_LEVEL.match(msg) if isinstance(msg, str) and not args else None
        method = _LEVEL_METHODS[match.group(1)] if match else "info"
        return getattr(self._log, method)(msg, *args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._log, name)


def up_to_date(workdir: Path, dvcfile: str, stage: str, overrides: Sequence[str]) -> str | None:
    """Why ``stage`` of ``dvcfile`` need not run in ``workdir`` (None: it must run): DVC's own status
    of it is clean (its deps, params and outputs as ``dvc.lock`` records them: ``dvc status``'s
    check) and no override changes a params.yaml value it tracks."""
    root = next((p for p in (workdir, *workdir.parents) if (p / ".dvc").is_dir()), None)
    if root is None or changed_params(workdir, pipeline(REPO, dvcfile)[stage].params, overrides):
        return None  # not a DVC repository (nothing to compare with), or this run's Params differ
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    target = f"{workdir / Path(dvcfile).name}:{stage}"  # absolute: DVC reads a target from the current folder
    # DVC's lock, held for the check alone (stages starting together wait their turn, as
    # `dvc --wait-for-lock` does): what `dvc status <stage>` reports.
    try:
        with Repo(str(root), _wait_for_lock=True) as repo, lock_repo(repo):
            [found] = repo.stage.collect(target)
            status = found.status()
    except (DvcException, ValueError, OSError) as exc:  # cannot tell: the stage runs, and says what is wrong
        log.warning("DVC could not say whether %s is up to date (%s): it runs", stage, str(exc).splitlines()[0])
        return None
    if status:
        return None
    return f"its dependencies, parameters and outputs are as {Path(dvcfile).parent / 'dvc.lock'} records them"


def changed_params(workdir: Path, tracked: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The overrides that change a value of ``workdir``'s params.yaml under a key the stage tracks
    (``tracked``: its dvc.yaml ``params``, e.g. ``train.cnn`` or ``ingest.source``)."""
    import yaml

    from spark_jobs.core.config import set_override
    from spark_jobs.params import Config

    tree = yaml.safe_load((workdir / "params.yaml").read_text()) or {}
    changed = []
    for text in overrides:
        key, _, differs = set_override(tree, text, Config)
        if differs and any(key == t or key.startswith(f"{t}.") or t.startswith(f"{key}.") for t in tracked):
            changed.append(text)
    return changed


def driver_conf(args: Sequence[str], workdir: Path | None = None) -> dict[str, str]:
    """The driver JVM's options for a stage's spark-submit line, from the workspace's params and the
    stage's ``--set`` overrides (``args``): under spark-submit the JVM starts before the stage reads
    its params, so they must be on that line. Empty when the params cannot be read: the stage itself
    then says why, in one line (exit code 2)."""
    from spark_jobs.core.config import ConfigError, load_config
    from spark_jobs.core.session import DRIVER_JAVA, driver_java_options

    overrides, words = [], iter(args)
    for word in words:  # in command-line order, as the stage applies them
        if word.startswith("--set="):
            overrides.append(word.removeprefix("--set="))
        elif word == "--set":
            overrides.append(next(words, ""))
    try:
        schema = importlib.import_module(f"spark_jobs.{args[0]}").PARAMS  # what the stage reads, as it reads it
        options = driver_java_options(load_config((workdir or workspace()) / "params.yaml", overrides, schema).spark)
    except ConfigError:
        return {}
    return {DRIVER_JAVA: options} if options else {}


def package_task() -> XComArg:
    """The first task of a DAG run: the ``spark_jobs`` zip of the working tree, built into the
    workspace's ``dist/`` (reused when the code is unchanged); its path is :data:`PACKAGED`."""

    @task(task_id=PACKAGE_TASK)
    def build_package() -> str:
        return str(package.build(workspace() / "dist"))

    return build_package()


def stage_task(
    task_id: str,
    command: StageCommand,
    *,
    py_files: str = PACKAGED,
    overrides: Sequence[str] = (),
    param_keys: Mapping[str, str] | None = None,
    workdir: Path | None = None,
    pipeline: str = "digits",
    python: str | None = None,
    retries: int = 2,
    **kwargs: Any,
) -> StageSubmitOperator:
    """The spark-submit task of one dvc.yaml stage of ``pipeline``, run from ``workdir`` (default
    :func:`workspace` of it; relative paths in params.yaml resolve as they do for ``dvc repro``), with
    fixed ``overrides`` and the run's Params named in ``param_keys`` (see :class:`StageSubmitOperator`).
    ``python`` is the executors' interpreter: default ``$PYSPARK_PYTHON``, else the interpreter
    running Airflow (the project's environment)."""
    python = python or os.environ.get("PYSPARK_PYTHON") or sys.executable
    workdir = workdir or workspace(pipeline)
    env = {"IMAGE_PLATFORM_WORKDIR": str(workdir), "PYSPARK_PYTHON": python}
    conf = {"spark.pyspark.python": python}
    return StageSubmitOperator(
        task_id=task_id,
        stage=command.name,
        param_keys=param_keys,
        workdir=workdir,
        pipeline=pipeline,
        application=str(REPO / LAUNCHER),
        py_files=py_files,
        application_args=application_args(command, overrides),
        conn_id="spark_default",
        name=f"image-platform-{command.name.replace('@', '-')}",
        env_vars=env,
        conf=conf,
        retries=retries,
        **kwargs,
    )
