"""A gate's report page: one self-contained HTML file (``report.html`` beside the Data Docs) that a
person opens in a browser, online or not: the verdict, the stage's counts, each check's observed
value against its threshold, and the images behind the verdict as embedded thumbnails (quarantined
files, misclassified test images), with links to the Data Docs and the run's manifest. Nothing on
it loads from the network: styles are inline, pictures are ``data:`` URIs.

Pure functions build it (:func:`render`) from :class:`Gallery` pictures that are already PNG bytes
(:func:`spark_jobs.imaging.images.thumbnail` makes them; None for bytes that do not decode: the page
then says so)."""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from spark_jobs.core.verdict import Exhibits

PAGE = "report.html"
MAX_THUMBS = 48  # per gallery: the rest are counted, and listed in the files the page links to


@dataclass(frozen=True)
class Thumb:
    """One picture of a gallery: its caption lines and PNG bytes (None: the bytes did not decode)."""

    caption: tuple[str, ...]
    png: bytes | None = None


@dataclass(frozen=True)
class Gallery:
    """A titled set of pictures; ``total``: how many there are in all (more than shown when capped)."""

    title: str
    thumbs: tuple[Thumb, ...]
    total: int
    note: str = ""
    counted: bool = True  # False: a picture of a verdict (a plot), not a set of items to count


def short_name(uri: str) -> str:
    """A file's name with its folder (``cat/001.png``): what tells two same-named files apart."""
    return "/".join(uri.rstrip("/").split("/")[-2:])


def threshold_text(kwargs: Mapping[str, Any]) -> str:
    """A check's threshold as a person reads it: ``≤ 0.05``, ``between 0.6 and 0.8``, ``= {a, b}``."""
    low, high = kwargs.get("min_value"), kwargs.get("max_value")
    if low is not None and high is not None:
        return f"= {_num(low)}" if low == high else f"between {_num(low)} and {_num(high)}"
    if low is not None:
        return f"≥ {_num(low)}"
    if high is not None:
        return f"≤ {_num(high)}"
    if "value_set" in kwargs:
        return "the set {" + ", ".join(map(str, kwargs["value_set"])) + "}"
    if "value" in kwargs:
        return f"= {_num(kwargs['value'])}"
    if "column_list" in kwargs:
        return "columns " + ", ".join(map(str, kwargs["column_list"]))
    return ""


def _num(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):  # not measured (no champion yet)
        return "n/a"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def observed_text(check: Mapping[str, Any]) -> str:
    """What a check saw: the summary table's value itself (a ratio, a count, per class), else GX's
    observed value, else the rows that broke it."""
    observed = check.get("observed") or {}
    if "error" in observed:
        return f"error: {observed['error']}"
    if "value" in observed:
        value = observed["value"]
        if isinstance(value, dict):
            return ", ".join(f"{k}: {_num(v)}" for k, v in value.items())
        return _num(value)
    if "observed_value" in observed:
        return _num(observed["observed_value"])
    rows = observed.get("unexpected_rows") or observed.get("partial_unexpected_list")
    return f"{observed.get('unexpected_count', 0)} unexpected: {rows}" if rows else ""


def _subject(check: Mapping[str, Any]) -> str:
    column = check["kwargs"].get("column")
    return f"{check['batch']}.{column}" if column else f"{check['batch']}: {check['expectation']}"


_STYLE = """
body{font:14px/1.45 system-ui,sans-serif;margin:1.5em auto;max-width:72em;padding:0 1em;color:#222}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ccc}
.passed{color:#186a2e}.failed{color:#b00020}table{border-collapse:collapse}
td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;vertical-align:top}
tr.failed td{background:#fdecee}.grid{display:flex;flex-wrap:wrap;gap:.8em}
figure{margin:0;width:10em;font-size:12px}figure img{image-rendering:pixelated;border:1px solid #999}
.nopic{width:96px;height:96px;border:1px dashed #b00020;display:flex;align-items:center;
justify-content:center;text-align:center;font-size:11px}figcaption{word-break:break-all}
"""


def render(title: str, success: bool, checks: Sequence[Mapping[str, Any]], exhibits: Exhibits, page_dir: Path) -> str:
    """The whole page, as one string of HTML."""
    verdict = "PASSED" if success else "FAILED"
    failed = sum(1 for c in checks if not c["success"])
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f"<title>{html.escape(title)}: {verdict}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}: <span class={verdict.lower()}>{verdict}</span></h1>",
        f"<p>{len(checks)} checks, {failed} failed.</p>",
        _links(exhibits.links, page_dir),
        _counts(exhibits.counts),
        _checks_table(checks),
        *(_gallery(g) for g in exhibits.galleries),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _links(links: Mapping[str, Path], page_dir: Path) -> str:
    if not links:
        return ""
    items = []
    for label, path in links.items():
        href = Path(os.path.relpath(path, page_dir)).as_posix() if path.is_absolute() else path.as_posix()
        items.append(f"<li><a href='{html.escape(href, quote=True)}'>{html.escape(label)}</a></li>")
    return "<ul>" + "".join(items) + "</ul>"


def _counts(counts: Mapping[str, Any]) -> str:
    if not counts:
        return ""
    cells = ((html.escape(str(k)), html.escape(_shown(v))) for k, v in counts.items())
    rows = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in cells)
    return f"<h2>Counts</h2><table>{rows}</table>"


def _shown(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_shown(v)}" for k, v in value.items()) or "none"
    if isinstance(value, list | tuple):
        return ", ".join(map(_shown, value)) or "none"
    return _num(value)


def _checks_table(checks: Sequence[Mapping[str, Any]]) -> str:
    head = "<tr><th>check</th><th>observed</th><th>threshold</th><th>verdict</th></tr>"
    rows = []
    for c in sorted(checks, key=lambda c: c["success"]):  # the failed ones first
        state = "passed" if c["success"] else "failed"
        rule = threshold_text(c["kwargs"]) or c["expectation"].removeprefix("expect_").replace("_", " ")
        cells = (_subject(c), observed_text(c), rule)
        tds = "".join(f"<td>{html.escape(str(x))}</td>" for x in cells)
        rows.append(f"<tr class={state}>{tds}<td class={state}>{state}</td></tr>")
    return f"<h2>Checks</h2><table>{head}{''.join(rows)}</table>"


def _gallery(gallery: Gallery) -> str:
    shown = len(gallery.thumbs)
    more = f" (the first {shown} of {gallery.total})" if gallery.total > shown else ""
    note = f"<p>{html.escape(gallery.note)}</p>" if gallery.note else ""
    if not gallery.thumbs:
        return f"<h2>{html.escape(gallery.title)}: none</h2>{note}"
    figures = []
    for t in gallery.thumbs:
        if t.png is None:
            picture = "<div class=nopic>bytes do not decode</div>"
        else:
            picture = f"<img alt='' src='data:image/png;base64,{base64.b64encode(t.png).decode()}'>"
        caption = "<br>".join(html.escape(line) for line in t.caption)
        figures.append(f"<figure>{picture}<figcaption>{caption}</figcaption></figure>")
    heading = f"{html.escape(gallery.title)}: {gallery.total}{more}" if gallery.counted else html.escape(gallery.title)
    return f"<h2>{heading}</h2>{note}<div class=grid>{''.join(figures)}</div>"


def write(page_dir: Path, title: str, success: bool, checks: Sequence[Mapping[str, Any]], exhibits: Exhibits) -> Path:
    """Write ``report.html`` into ``page_dir`` (atomically); returns its path."""
    from spark_jobs.core.atomic import write_file

    path = page_dir / PAGE
    write_file(path, render(title, success, checks, exhibits, page_dir))
    return path
