"""The documentation: README.md is a front page (at most 250 lines) linking to one page per topic
in docs/, and every relative link in them resolves, to a file and, with a ``#fragment``, to one of
its headings (GitHub's anchors)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.factories import REPO

PAGES = sorted(["README.md", *(str(p.relative_to(REPO)) for p in (REPO / "docs").glob("*.md"))])
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
TOPICS = ("stages", "failures", "airflow", "streaming", "cluster", "benchmarks", "architecture")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)  # no headings inside code
    return {anchor(m.group(1)) for m in re.finditer(r"^#{1,6} (.+)$", text, flags=re.M)}


def broken_links(page: Path) -> list[str]:
    """The relative links of ``page`` that do not resolve."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+://|^mailto:", target):
            continue
        path, _, fragment = target.partition("#")
        where = (page.parent / path).resolve() if path else page
        if not where.exists():
            broken.append(f"{target}: no such file")
        elif fragment and where.suffix == ".md" and fragment not in anchors(where):
            broken.append(f"{target}: no heading with that anchor")
    return broken


@pytest.mark.parametrize("page", PAGES)
def test_every_relative_link_resolves(page: str) -> None:
    assert broken_links(REPO / page) == []


def test_the_link_check_can_fail(tmp_path: Path) -> None:
    (tmp_path / "there.md").write_text("# A page\n\n## Its part\n")
    page = tmp_path / "page.md"
    page.write_text(
        "[ok](there.md) [ok](there.md#its-part) [web](https://example.com/x) [self](#top)\n"
        "# Top\n[gone](missing.md) [no part](there.md#nowhere)\n```\n[in code](ignored.md)\n```\n"
    )
    assert broken_links(page) == ["missing.md: no such file", "there.md#nowhere: no heading with that anchor"]


def test_the_readme_is_a_front_page_linking_every_topic() -> None:
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    linked = set(LINK.findall(readme))
    assert {f"docs/{t}.md" for t in TOPICS} <= linked
    assert (REPO / "docs" / "architecture.md").read_text().count("\n1. **") == 1  # the decisions, numbered
