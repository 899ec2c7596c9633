#!/usr/bin/env bash
# The browser check: builds the page (build.sh) and runs browser.test.mjs with node's test runner against the
# debug binary (USER_SERVICE_BIN to change it) in Debian's Chromium, installed here when it is missing.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium
fi
bash "$here/build.sh"
cd "$here"
exec node --test --test-reporter=spec browser.test.mjs
