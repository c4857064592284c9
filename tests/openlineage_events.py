"""Reading and checking OpenLineage events as the tests find them (the file transport's JSON files).

What an event must be is the OpenLineage spec of the installed client (2-0-2 for
openlineage-python 1.54). No installed package ships the spec's JSON Schema files (not the
client, its integration-common or the Airflow provider: they ship the facets of dbt, BigQuery and
Airflow only), and none may be fetched at run time. The client ships the spec compiled instead:
its ``openlineage.client.generated`` classes, made from the spec's schemas by its own generator,
with the spec's required fields, types and formats (run ids as UUIDs, times as ISO 8601 with a
time). :func:`problems` rebuilds every event through those classes: a key the spec does not have
(outside the facets' open maps), a missing required field, a wrong type or a value the class's
validators refuse is a problem. Each facet is rebuilt as its own spec facet by its ``_schemaURL``,
which must be the spec's URL for it; the platform's own facet is checked against the JSON Schema
the package ships (``spark_jobs/core/ImagePlatformRunFacet.json``).
"""

from __future__ import annotations

import enum
import functools
import json
import types
import typing
from pathlib import Path
from typing import Any

import attr
import jsonschema
from openlineage.client import event_v2
from openlineage.client.generated import base

from spark_jobs.core import lineage


def read_events(folder: Path) -> list[dict[str, Any]]:
    """Every event under ``folder`` (the file transport's files), oldest first."""
    docs = [json.loads(p.read_text()) for p in sorted(folder.rglob("*.json"))]
    return sorted(docs, key=lambda d: d["eventTime"])


def of_job(events: list[dict[str, Any]], job: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [e for e in events if e["job"]["name"] == job and (kind is None or e.get("eventType") == kind)]


@functools.cache
def _facet_classes() -> dict[str, type]:
    """Every spec facet class of the client, by the ``_schemaURL`` it writes."""
    import importlib
    import pkgutil

    from openlineage.client import generated

    found: dict[str, type] = {}
    for module in pkgutil.iter_modules(generated.__path__):
        loaded = importlib.import_module(f"{generated.__name__}.{module.name}")
        for value in vars(loaded).values():
            if isinstance(value, type) and issubclass(value, base.BaseFacet) and value.__module__ == loaded.__name__:
                found[value._get_schema()] = value
    return found


@functools.cache
def _own_schema() -> dict[str, Any]:
    return json.loads(lineage.FACET_SCHEMA_FILE.read_text())


def problems(doc: dict[str, Any]) -> list[str]:
    """What in one event the spec of the installed client does not allow (empty: a valid event)."""
    found: list[str] = []
    if doc.get("schemaURL") != event_v2.RunEvent._get_schema():
        found.append(f"schemaURL {doc.get('schemaURL')!r} is not the client's RunEvent")
    _build(event_v2.RunEvent, doc, "event", found)
    return found


def _build(kind: Any, value: Any, where: str, found: list[str]) -> Any:
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        options = [k for k in typing.get_args(kind) if k is not type(None)]
        return None if value is None else _build(options[0], value, where, found)
    if origin is list:
        if not isinstance(value, list):
            found.append(f"{where}: not a list")
            return []
        return [_build(typing.get_args(kind)[0], v, f"{where}[{i}]", found) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            found.append(f"{where}: not an object")
            return {}
        item = typing.get_args(kind)[1]
        return {k: _build(item, v, f"{where}.{k}", found) for k, v in value.items()}
    if isinstance(kind, type) and issubclass(kind, base.BaseFacet):
        return _facet(kind, value, where, found)
    if attr.has(kind):
        return _record(kind, value, where, found)
    return _scalar(kind, value, where, found)


def _scalar(kind: Any, value: Any, where: str, found: list[str]) -> Any:
    if isinstance(kind, type) and issubclass(kind, enum.Enum):
        try:
            return kind(value)
        except ValueError:
            found.append(f"{where}: {value!r} is not one of {[e.value for e in kind]}")
            return None
    wanted = {str: str, int: int, float: (int, float), bool: bool, typing.Any: object}.get(kind, object)
    if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
        found.append(f"{where}: {value!r} is not {getattr(kind, '__name__', kind)}")
    return value


def _record(kind: type, value: Any, where: str, found: list[str], open_keys: bool = False) -> Any:
    if not isinstance(value, dict):
        found.append(f"{where}: not an object")
        return None
    fields = attr.fields_dict(attr.resolve_types(kind))
    args: dict[str, Any] = {}
    missing = [n for n, f in fields.items() if f.init and n not in value and f.default is attr.NOTHING]
    found.extend(f"{where}: required {name!r} missing" for name in missing)
    for name, field in fields.items():
        if not field.init or name not in value:
            continue
        args[field.alias] = _build(field.type, value[name], f"{where}.{name}", found)
    unknown = set(value) - set(fields)
    if unknown and not open_keys:
        found.append(f"{where}: keys the spec does not have: {sorted(unknown)}")
    if missing:
        return None
    try:
        return kind(**args)
    except (TypeError, ValueError) as exc:
        found.append(f"{where}: {type(exc).__name__}: {exc}")
        return None


def _family(kind: type) -> str:
    dataset = (base.DatasetFacet, base.InputDatasetFacet, base.OutputDatasetFacet)
    return "dataset" if issubclass(kind, dataset) else "run" if issubclass(kind, base.RunFacet) else "job"


def _facet(kind: type, value: Any, where: str, found: list[str]) -> Any:
    """A facet: its own spec class by its ``_schemaURL`` (open: facets may carry more keys), or
    the platform's facet checked against its shipped JSON Schema."""
    url = value.get("_schemaURL") if isinstance(value, dict) else None
    if url == lineage.FACET_SCHEMA:
        errors = jsonschema.Draft202012Validator(_own_schema()["$defs"]["ImagePlatformRunFacet"]).iter_errors(value)
        found.extend(f"{where}: {e.message}" for e in errors)
        return None
    spec = _facet_classes().get(url)
    if spec is None:
        found.append(f"{where}: _schemaURL {url!r} is no facet of the client's spec")
        return None
    if _family(spec) != _family(kind):  # a dataset's facet on a dataset (inputs' and outputs' alike), a run's on a run
        found.append(f"{where}: a {spec.__name__} where a {kind.__name__} belongs")
    built = _record(spec, value, where, found, open_keys=True)
    if not isinstance(value.get("_producer"), str) or not value.get("_producer"):
        found.append(f"{where}: no _producer")
    return built
