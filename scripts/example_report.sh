#!/usr/bin/env bash
# Regenerate the committed example report (docs/examples/estimate/) and its screenshot
# (docs/examples/report.png) from examples/case.toml; needs Debian's chromium for the screenshot.
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/tailguard estimate --config examples/case.toml --report docs/examples/estimate
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
chromium --headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update \
  --disable-sync --no-first-run --hide-scrollbars --user-data-dir="$profile" --window-size=1100,1900 \
  --screenshot=docs/examples/report.png "file://$PWD/docs/examples/estimate/estimate.html" 2>/dev/null
echo "wrote docs/examples/estimate/estimate.html and docs/examples/report.png"
