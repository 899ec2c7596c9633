#!/usr/bin/env bash
# Lints the protos (buf.yaml: STANDARD rules and the intended exceptions) and checks them for wire or JSON
# breaking changes against the previous commit, with the buf pinned in package-lock.json.
# Usage: tools/buf/check.sh [git-ref to compare against, default HEAD~1]
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
(cd "$here" && npm ci --no-audit --no-fund --silent)
buf="$here/node_modules/.bin/buf"
cd "$root"
"$buf" lint
echo "buf lint: clean"
against="${1:-HEAD~1}"
if git rev-parse --verify -q "$against^{commit}" >/dev/null; then
    "$buf" breaking proto --against ".git#ref=$against,subdir=proto"
    echo "buf breaking: no wire or JSON break against $against"
else
    echo "buf breaking: skipped ($against is not in this clone's history)"
fi
