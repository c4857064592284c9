from __future__ import annotations

import io
import re
from pathlib import Path

from PIL import Image

from spark_jobs.core.verdict import Exhibits
from spark_jobs.quality import report


def _png(side: int = 12) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (side, side), (200, 30, 30)).save(out, "PNG")
    return out.getvalue()


def test_thresholds_and_observed_values_read_as_a_person_says_them() -> None:
    assert report.threshold_text({"column": "q", "min_value": 0.0, "max_value": 0.05}) == "between 0 and 0.05"
    assert report.threshold_text({"column": "q", "max_value": 0.05}) == "≤ 0.05"
    assert report.threshold_text({"column": "n", "min_value": 30}) == "≥ 30"
    assert report.threshold_text({"column": "n", "min_value": 0, "max_value": 0}) == "= 0"
    assert report.threshold_text({"column": "label", "value_set": ["a", "b"]}) == "the set {a, b}"
    assert report.observed_text({"observed": {"value": 0.123456789}}) == "0.123457"
    assert report.observed_text({"observed": {"value": {"cat": 3, "dog": 40}}}) == "cat: 3, dog: 40"
    assert report.observed_text({"observed": {"error": "boom"}}) == "error: boom"
    assert report.observed_text({"observed": {"value": float("nan")}}) == "n/a"  # no champion to regress from


def test_the_page_is_self_contained_and_shows_failures_first(tmp_path: Path) -> None:
    checks = [
        {
            "batch": "summary",
            "expectation": "between",
            "kwargs": {"column": "rows", "min_value": 1},
            "success": True,
            "observed": {"value": 90},
        },
        {
            "batch": "summary",
            "expectation": "between",
            "kwargs": {"column": "quarantine_ratio", "max_value": 0.05},
            "success": False,
            "observed": {"value": 0.2},
        },
    ]
    thumbs = (report.Thumb(("a.png", "undecodable", "cut <short>"), None), report.Thumb(("b.png", "ok"), _png()))
    gallery = report.Gallery("Quarantined files", thumbs, 9)
    manifest = tmp_path / "out" / "_manifest.json"
    shown = Exhibits({"files seen": 100, "quarantined": {"undecodable": 9}}, [gallery], {"manifest": manifest})
    page = report.write(tmp_path / "gates", "gate ingest", False, checks, shown)
    text = page.read_text()
    assert "FAILED" in text
    assert "quarantine_ratio" in text
    assert "0.2" in text
    assert "≤ 0.05" in text
    assert text.index("quarantine_ratio") < text.index("summary.rows")  # the failed check first
    assert "the first 2 of 9" in text
    assert "bytes do not decode" in text
    assert "cut &lt;short&gt;" in text  # captions escaped
    assert "href='../out/_manifest.json'" in text  # relative to the page
    assert not re.search(r"(src|href)=['\"]?(https?:)?//", text)  # nothing from the network
    assert text.count("data:image/png;base64,") == 1
