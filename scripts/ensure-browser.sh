#!/usr/bin/env bash
# The UI test drives Debian's Chromium (Playwright's own browser downloads fail here). Say so in
# one line, or install it (and its ChromeDriver) with apt-get where we can, as for Java.
set -euo pipefail
BROWSER="${IMAGE_PLATFORM_CHROMIUM:-/usr/bin/chromium}"
if [ -x "$BROWSER" ]; then
    exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "Chromium not found: installing chromium and chromium-driver with apt-get (the UI test's browser)" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
    exit 0
fi
echo "warning: no Chromium at $BROWSER: the browser test will be skipped (e.g. 'sudo apt-get install chromium')" >&2
