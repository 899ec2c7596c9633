#!/usr/bin/env bash
# Installs the pinned packages, generates the protobuf-es code from the service's proto/ (the service's API and
# the google.rpc error schemas it serves), and bundles page.ts into build/page.js.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
# puppeteer-core drives the Debian Chromium it is pointed at; nothing here downloads a browser.
(cd "$here" && PUPPETEER_SKIP_DOWNLOAD=1 npm ci --no-audit --no-fund --silent)
rm -rf "$here/build"
mkdir -p "$here/build"
template="{\"version\":\"v2\",\"plugins\":[{\"local\":\"$here/node_modules/.bin/protoc-gen-es\",\"out\":\"$here/build/gen\",\"opt\":[\"target=ts\"]}]}"
(cd "$root" && "$here/node_modules/.bin/buf" generate --template "$template")
"$here/node_modules/.bin/esbuild" "$here/page.ts" --bundle --format=iife --target=es2022 --log-level=warning \
    --outfile="$here/build/page.js"
