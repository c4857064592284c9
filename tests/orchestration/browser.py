"""The Airflow UI driven in a real browser, as a user drives it: Debian's Chromium (headless),
through Playwright's Python API pointed at that binary (``make browser`` installs it).

:func:`walk` logs in, opens the training DAG, fills the trigger form with one Param, triggers it,
waits in the run's page until the run succeeded, opens a task log of a run and reads its progress
lines and the path of the gate's report page, and opens that page with every request to anything
but 127.0.0.1 (and the page's own file and ``data:`` pictures) refused. Each page visited is kept
as a screenshot; what the test asserts comes back in a :class:`Walk`."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, unquote

CHROMIUM = Path(os.environ.get("IMAGE_PLATFORM_CHROMIUM", "/usr/bin/chromium"))
DAG = "image_training_pipeline"
PROGRESS = re.compile(r"\w+: [\d,]+ / [\d,]+ (?:files|images) \(\d+ %\), [\d,]+ (?:files|images)/s[^\n]*")
REPORT = re.compile(r"report: (/\S+/report\.html)")


@dataclass
class Page:
    """A gate's report page as the browser loaded it."""

    path: Path
    images: int = 0  # pictures on it
    broken: int = 0  # of them, those that did not load
    refused: list[str] = field(default_factory=list)  # requests it made off 127.0.0.1 (refused)


@dataclass
class Walk:
    """What the browser saw."""

    run_id: str | None = None  # the run the form triggered
    state: str | None = None  # its state as the run's page showed it last
    seconds: float = 0.0  # from the trigger to that state
    progress: dict[str, list[str]] = field(default_factory=dict)  # per task log read: its progress lines
    reports: dict[str, Page] = field(default_factory=dict)  # per task log read: the report page it names
    screenshots: list[Path] = field(default_factory=list)


def available() -> str | None:
    """Why the browser test cannot run here (None: it can)."""
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (make browser installs Debian's)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright is not installed (make venv)"
    return None


def _local(url: str) -> bool:
    return url.startswith(("http://127.0.0.1", "file:", "data:", "blob:", "about:"))


def walk(
    url: str, user: str, password: str, param: tuple[str, str], run_id: str, tasks: Sequence[str], shots: Path
) -> Walk:
    """The user's path through the UI (module docstring). ``param``: the form field and the value to
    type; ``run_id`` and ``tasks``: the task logs to read (and the report pages they name, to open);
    screenshots go to ``shots``."""
    from playwright.sync_api import sync_playwright

    shots.mkdir(parents=True, exist_ok=True)
    seen = Walk()

    def shot(page: object, name: str) -> None:
        path = shots / f"{len(seen.screenshots) + 1:02d}-{name}.png"
        page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        seen.screenshots.append(path)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 1000})
            context.route("**/*", lambda route: route.continue_() if _local(route.request.url) else route.abort())
            page = context.new_page()
            _log_in(page, url, user, password, shot)
            _trigger(page, url, param, seen, shot)
            for task_id in tasks:
                report = _read_log(page, url, run_id, task_id, seen, shot)
                if report is not None:
                    seen.reports[task_id] = _open_report(context, report, task_id, shot)
        finally:
            browser.close()
    return seen


def _log_in(page, url: str, user: str, password: str, shot) -> None:
    page.goto(url)
    page.locator("input[name=username]").fill(user)
    page.locator("input[name=password]").fill(password)
    shot(page, "login")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{url}/")


def _trigger(page, url: str, param: tuple[str, str], seen: Walk, shot) -> None:
    page.goto(f"{url}/dags/{DAG}")
    page.get_by_role("button", name="Trigger").first.click()
    dialog = page.get_by_role("dialog")
    dialog.locator(f"#element_{param[0]}, input[name=element_{param[0]}]").first.fill(param[1])
    shot(page, "trigger-form")
    started = time.monotonic()
    dialog.get_by_role("button", name="Trigger", exact=True).click()
    page.wait_for_url(re.compile(rf".*/dags/{DAG}/runs/.+"))
    seen.run_id = unquote(page.url.split("/runs/", 1)[1].split("?")[0].split("/")[0])
    # The run's state badge, beside its id in the run page's header (the page refreshes itself).
    heading = page.get_by_role("heading", name=seen.run_id, exact=True)
    badge = heading.locator("xpath=..").get_by_test_id("state-badge")
    deadline = started + 600
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            seen.state = badge.inner_text(timeout=10_000).strip().lower()
        if seen.state in ("success", "failed"):
            break
        page.wait_for_timeout(2000)
    seen.seconds = time.monotonic() - started
    shot(page, "run-grid")


def _read_log(page, url: str, run_id: str, task_id: str, seen: Walk, shot) -> Path | None:
    """The task's log page: its progress lines, and the report page it names (None: none)."""
    page.goto(f"{url}/dags/{DAG}/runs/{quote(run_id, safe='')}/tasks/{task_id}")
    with contextlib.suppress(Exception):  # read what the page shows, whatever it is
        page.get_by_text(REPORT).first.wait_for(timeout=60_000)
    text = page.locator("body").inner_text()
    seen.progress[task_id] = PROGRESS.findall(text)
    shot(page, f"log-{task_id}")
    found = REPORT.search(text)
    return Path(found.group(1)) if found else None


def _open_report(context, path: Path, task_id: str, shot) -> Page:
    seen = Page(path)
    page = context.new_page()
    page.on("request", lambda request: None if _local(request.url) else seen.refused.append(request.url))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    seen.images = page.evaluate("document.images.length")
    seen.broken = page.evaluate("Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length")
    shot(page, f"report-{task_id}")
    page.close()
    return seen


_COUNTS = {
    "images": "Array.from(document.images).filter(i => i.naturalWidth > 0).length",
    "broken": "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length",
    "vega_views": "document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length",
}


def open_offline(path: Path, screenshot: Path) -> dict[str, object]:
    """A local HTML page in headless Chromium with every request off 127.0.0.1 refused: how many
    pictures and Vega views it drew, the broken pictures, refused requests and script errors."""
    from playwright.sync_api import sync_playwright

    refused: list[str] = []
    errors: list[str] = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.route(
                "**/*", lambda r: r.continue_() if _local(r.request.url) else (refused.append(r.request.url), r.abort())
            )
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.goto(path.as_uri())
            page.wait_for_load_state("load")
            page.wait_for_timeout(1000)  # Vega renders after the load event
            drawn = {
                "images": page.evaluate("Array.from(document.images).filter(i => i.naturalWidth > 0).length"),
                "broken": page.evaluate(
                    "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).length"
                ),
                "vega_views": page.evaluate("document.querySelectorAll('.vega-embed canvas, .vega-embed svg').length"),
            }
            page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {**drawn, "refused": refused, "errors": errors}
