#!/usr/bin/env bash
# Connection hygiene against the real binary on loopback: silent and idle connections are closed, the connection
# cap holds, accept errors at the open-file limit are paced, HTTP/1.1 header blocks over 64 KiB get 431, a stalled
# HTTP/2 reader (zero window, 200 streams of ~3 MiB answers) and an HTTP/1.1 non-reader keep RSS bounded and are
# dropped after the request timeout, and a /readyz flood runs no PostgreSQL transactions.
# Installs the pinned `h2` Python package into target/reliability-venv; uses a throw-away PostgreSQL database.
# Usage: tests/reliability/connections.sh [check ...]   (USER_SERVICE_BIN defaults to target/debug/user-service)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
venv="$(realpath -m "${RELIABILITY_VENV:-target/reliability-venv}")"
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c 'import h2' 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q h2==4.4.1 hpack==4.2.0 hyperframe==6.1.0
fi
command -v prlimit >/dev/null || { echo "connections: prlimit (util-linux) is missing"; echo "0 passed, 1 failed"; exit 1; }

PGHOST=127.0.0.1
PGPORT=5432
db="user_service_connections_$$"
cleanup() { psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true; }
trap cleanup EXIT
psql -h "$PGHOST" -p "$PGPORT" -U postgres -d postgres -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db"
export READYZ_DATABASE_URL="postgres://postgres@$PGHOST:$PGPORT/$db"
"$venv/bin/python" tests/reliability/connections.py "$@"
