"""Gates: Great Expectations validating what a stage wrote (the statistics :mod:`spark_jobs.quality.suites`
computes from it in one Spark pass), with a readable report; on failure the stage publishes
nothing and exits with :data:`spark_jobs.core.verdict.EXIT_GATE_FAILED`, so ``dvc repro`` and Airflow both stop there
(:mod:`spark_jobs.core.runner` stages and publishes; a stage hands it :func:`validate`).
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spark_jobs.core.atomic import write_file
from spark_jobs.core.verdict import Exhibits, GateResult
from spark_jobs.quality import report

if TYPE_CHECKING:
    import pandas as pd

_DOCS_SITE = "gates"
MAX_VALUES = 64  # a summary table up to this many rows shows its values in the report (per key)


@dataclass(frozen=True)
class Batch:
    """One small table (statistics of a stage's output) and the expectations it must meet."""

    name: str
    frame: pd.DataFrame
    expectations: Sequence[Any]
    key: str | None = None  # the column that names a row (a class): failed rows are reported by it


def _plain(value: Any) -> Any:
    """numpy scalars as Python values, for JSON and the summary line."""
    return value.item() if hasattr(value, "item") else value


def _values(batch: Batch, column: Any) -> Any:
    """What a column check on a small summary table saw: the value itself (one row), or each row's
    by the batch's key (a class: its count), not GX's share of unexpected rows."""
    frame = batch.frame
    if not isinstance(column, str) or column not in frame.columns or not 0 < len(frame) <= MAX_VALUES:
        return None
    values = [_plain(v) for v in frame[column].tolist()]
    if len(values) == 1:
        return values[0]
    if batch.key is not None and batch.key in frame.columns:
        return {str(_plain(k)): v for k, v in zip(frame[batch.key].tolist(), values, strict=True)}
    return values


def _observed(result: dict[str, Any]) -> Any:
    if "observed_value" in result:
        return {"observed_value": result["observed_value"]}
    keys = ("unexpected_count", "unexpected_percent", "partial_unexpected_list")
    observed = {k: result[k] for k in keys if k in result}
    rows = result.get("partial_unexpected_index_list") or []
    if result.get("unexpected_index_column_names") and all(isinstance(r, dict) for r in rows):
        # which rows, by the batch's key column: e.g. the classes that are short
        observed["unexpected_rows"] = [{k: _plain(v) for k, v in row.items()} for row in rows]
    return observed


def _checks(batch: Batch, suite_result: Any) -> list[dict[str, Any]]:
    checks = []
    for r in suite_result.results:
        config = r.expectation_config
        kwargs = {k: v for k, v in config.kwargs.items() if k not in ("batch_id",)}
        error = (r.exception_info or {}).get("exception_message") if isinstance(r.exception_info, dict) else None
        observed = {"error": error} if error else _observed(r.result or {})
        # GX's own observed value where it has one (a distinct-value set, a row count), else the
        # summary table's value itself (GX would say only how many of its rows were "unexpected").
        value = None if error or "observed_value" in (r.result or {}) else _values(batch, kwargs.get("column"))
        checks.append(
            {
                "batch": batch.name,
                "expectation": config.type,
                "kwargs": kwargs,
                "success": bool(r.success),
                "observed": observed if value is None else {"value": value, **observed},
            }
        )
    return checks


def _docs_site(context: Any, report_dir: Path) -> None:
    """A fresh Data Docs site under ``report_dir/docs`` (an earlier run's report removed)."""
    if report_dir.exists():
        shutil.rmtree(report_dir)
    context.add_data_docs_site(
        site_name=_DOCS_SITE,
        site_config={
            "class_name": "SiteBuilder",
            "store_backend": {
                "class_name": "TupleFilesystemStoreBackend",
                "base_directory": str((report_dir / "docs").absolute()),
            },
            "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        },
    )


def validate(
    stage: str, batches: Sequence[Batch], report_dir: Path | None, exhibits: Exhibits | None = None
) -> GateResult:
    """Run each batch's expectations with GX, write Data Docs, JSON and the report page
    (:mod:`spark_jobs.quality.report`, with the stage's ``exhibits``) under ``report_dir`` (None:
    write nothing, render no Data Docs: a stream's cheap check of each micro-batch)."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    logging.getLogger("great_expectations.data_context.types.base").setLevel(logging.WARNING)  # GX set INFO
    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    if report_dir is not None:
        _docs_site(context, report_dir)
    source = context.data_sources.add_pandas(name=f"{stage}_output")
    result = GateResult(stage=stage, success=True)
    for batch in batches:
        asset = source.add_dataframe_asset(name=batch.name)
        definition = asset.add_batch_definition_whole_dataframe(batch.name)
        suite = context.suites.add(
            # Copies: GX binds an expectation to its suite, and a batch may be validated again
            # (a stream's rejected micro-batch, for its Data Docs).
            gx.ExpectationSuite(name=f"{stage}.{batch.name}", expectations=[copy.copy(e) for e in batch.expectations])
        )
        validation = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"{stage}.{batch.name}", data=definition, suite=suite)
        )
        checkpoint = context.checkpoints.add(
            gx.Checkpoint(
                name=f"{stage}.{batch.name}",
                validation_definitions=[validation],
                result_format={"result_format": "SUMMARY", "partial_unexpected_count": 10}
                | ({"unexpected_index_column_names": [batch.key]} if batch.key else {}),
            )
        )
        run = checkpoint.run(batch_parameters={"dataframe": batch.frame})
        result.success = result.success and bool(run.success)
        result.raw.append(run.describe_dict())
        for suite_result in run.run_results.values():
            result.checks.extend(_checks(batch, suite_result))
    if report_dir is None:
        return result
    # The Data Docs of every batch's validation, built once (rendering is most of GX's time here).
    context.build_data_docs(site_names=[_DOCS_SITE])
    report_dir.mkdir(parents=True, exist_ok=True)
    write_file(report_dir / "validation.json", json.dumps(result.raw, indent=2, default=str) + "\n")
    write_file(report_dir / "summary.txt", result.summary() + "\n")
    index = report_dir / "docs" / "index.html"
    result.docs = index if index.exists() else None
    result.page = write_page(report_dir, result, exhibits or Exhibits())
    if result.docs is not None:
        link_page(result.docs, result.page)
    return result


def link_page(index: Path, page: Path) -> None:
    """Put a link to the gate's report page at the top of the Data Docs index (GX offers no
    setting for one): from the docs, a person reaches the pictures behind the verdict."""
    html = index.read_text(encoding="utf-8")
    target = os.path.relpath(page, index.parent)
    banner = (
        '<div style="padding:8px 16px;background:#fff3cd;border-bottom:1px solid #e0c060">'
        f'<a href="{target}">This gate\'s report page</a>: the verdict, each check against its threshold '
        "and the images behind it (works offline)</div>"
    )
    if "<body>" in html:
        write_file(index, html.replace("<body>", "<body>" + banner, 1))


def write_page(report_dir: Path, result: GateResult, exhibits: Exhibits) -> Path:
    """The gate's report page (:mod:`spark_jobs.quality.report`), linking the JSON, the Data Docs
    and the run's manifest where the verdict puts it."""
    links = {**exhibits.for_verdict(result.success), "the checks as JSON (validation.json)": Path("validation.json")}
    if result.docs is not None:
        links[DOCS_LINK] = Path("docs/index.html")
    shown = Exhibits(exhibits.counts, exhibits.galleries, links)
    return report.write(report_dir, f"gate {result.stage}", result.success, result.checks, shown)


# Great Expectations' pages load their styles and scripts from CDNs: said where they are linked.
DOCS_LINK = (
    "Great Expectations Data Docs (its pages load styles and scripts from CDNs: they render only with network access)"
)
