#!/usr/bin/env bash
# Lints the OpenAPI document the service serves with redocly's recommended rules (pinned in
# package-lock.json; the intended exceptions are in .redocly.lint-ignore.yaml). Starts the debug binary
# (USER_SERVICE_BIN) on a throw-away SQLite database and reads /openapi.json from it.
name=openapi_lint
source "$(dirname "${BASH_SOURCE[0]}")/../../tests/reliability/lib.sh"
here="$root/tools/openapi"
(cd "$here" && npm ci --no-audit --no-fund --silent)
port="$(free_port)"
export USER_SERVICE_JWT_SECRET="openapi-lint-check-secret-of-32-bytes-or-more"
start_server "$port" --database-url "sqlite://$work/users.db"
curl -sf "http://127.0.0.1:$port/openapi.json" >"$here/openapi.json" || fail "no /openapi.json"
trap 'rm -f "$here/openapi.json"; cleanup' EXIT
report="$(cd "$here" && REDOCLY_TELEMETRY=off REDOCLY_SUPPRESS_UPDATE_NOTICE=true \
    ./node_modules/.bin/redocly lint --format stylish --max-problems 50 openapi.json 2>&1)" || { echo "$report"; fail "redocly lint found errors"; }
echo "$report" | grep -E '(error|warning) ' && fail "redocly lint found warnings"
echo "openapi_lint: /openapi.json is clean under redocly's recommended rules"
echo "1 passed, 0 failed"
