"""Build ``.dvc/offline-plots.html``: DVC's page template for ``dvc plots show`` with Vega, Vega-Lite
and Vega-Embed inlined, so the plots page renders on a machine without internet (DVC's default
page loads them from a CDN). ``.dvc/config`` names it (``plots.html_template``).

    npm pack vega@5 vega-lite@5 vega-embed@6      # the npm registry: the three tarballs
    python scripts/offline-plots-template.py vega-5.*.tgz vega-lite-5.*.tgz vega-embed-6.*.tgz

The page is DVC's own (dvc_render's ``PAGE_HTML``) with the ``{scripts}`` placeholder replaced
by the inlined builds (all three BSD-3-Clause; the licence texts their tarballs ship are kept in the
page)."""

from __future__ import annotations

import json
import sys
import tarfile
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / ".dvc" / "offline-plots.html"
BUILDS = {"vega": "build/vega.min.js", "vega-lite": "build/vega-lite.min.js", "vega-embed": "build/vega-embed.min.js"}


def script(tarball: Path) -> tuple[str, str]:
    """``(package name, an inline <script> of its minified build with its version and licence)``."""
    with tarfile.open(tarball) as archive:
        package = json.load(archive.extractfile("package/package.json"))
        code = archive.extractfile(f"package/{BUILDS[package['name']]}").read().decode()
        names = archive.getnames()
        licence = archive.extractfile("package/LICENSE").read().decode() if "package/LICENSE" in names else ""
    if "</script" in code.lower():
        raise SystemExit(f"{tarball}: the build holds '</script', which would end an inline script")
    header = f"/* {package['name']} {package['version']} ({package['license']})\n{licence.strip()}\n*/"
    return package["name"], f"<script>{header}\n{code}</script>"


def main(tarballs: list[str]) -> None:
    from dvc_render.html import PAGE_HTML

    scripts = dict(script(Path(t)) for t in tarballs)
    missing = set(BUILDS) - set(scripts)
    if missing:
        raise SystemExit(f"missing the tarball of {', '.join(sorted(missing))}")
    inline = "\n".join(scripts[name] for name in BUILDS)  # vega, then vega-lite, then vega-embed
    OUT.write_text(PAGE_HTML.replace("{scripts}", inline))
    print(f"wrote {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
