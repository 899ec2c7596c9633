#!/usr/bin/env bash
# SQLite fault check: the database's file system fills up, then turns read-only, under a running service.
#
# Writes must then fail with a clear UNAVAILABLE (REST 503, never a 500 or a crash), reads must keep working,
# and afterwards the file must pass SQLite's integrity check with every acknowledged write present.
# Needs root to mount a small tmpfs; elsewhere it says it was skipped.
# Usage: tests/reliability/sqlite_faults.sh   (USER_SERVICE_BIN defaults to target/debug/user-service)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="$(realpath -m "${USER_SERVICE_BIN:-target/debug/user-service}")"
work="$(mktemp -d)"
fs="$work/fs"
server=""
mounted=""

cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    [[ -n "$mounted" ]] && umount "$fs" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "sqlite_faults: FAIL: $*"; tail -n 20 "$work/server.log" 2>/dev/null || true; echo "0 passed, 1 failed"; exit 1; }
status_of() { curl -s -o /dev/null -w '%{http_code}' -m 10 "$@"; }

command -v sqlite3 >/dev/null || { apt-get update -qq && apt-get install -y -qq sqlite3 >/dev/null; }
mkdir -p "$fs"
if ! mount -t tmpfs -o size=3m tmpfs "$fs" 2>/dev/null; then
    echo "sqlite_faults: skipped (mounting a small tmpfs needs root)"
    echo "0 passed, 0 failed, 1 skipped"
    exit 0
fi
mounted=1

port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export USER_SERVICE_JWT_SECRET="sqlite-faults-secret-of-at-least-32-bytes"
auth="Authorization: Bearer $("$bin" token --sub ops --scope users.admin)"
base="http://127.0.0.1:$port"
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --database-url "sqlite://$fs/users.db" >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do [[ "$(status_of "$base/readyz")" == 200 ]] && break; sleep 0.1; done

create() {  # create <n> <attributes JSON>: prints the HTTP status, records the id when acknowledged
    local body status
    body="$(curl -s -m 10 -w '\n%{http_code}' -H "$auth" -H 'Content-Type: application/json' -X POST "$base/v1/users" \
        -d "{\"email\": \"fill$1@example.com\", \"attributes\": $2}")"
    status="${body##*$'\n'}"
    if [[ "$status" == 200 ]]; then
        printf '%s\n' "${body%$'\n'*}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])' >>"$work/acknowledged"
    fi
    echo "$status"
}

: >"$work/acknowledged"
blob="$(python3 -c 'print("{\"history\": \"" + "x" * 15000 + "\"}")')"
full=""
for i in $(seq 1 400); do
    code="$(create "$i" "$blob")"
    case "$code" in
        200) ;;
        503) full="$i"; break ;;
        *) fail "a write on a full disk answered $code, not 503" ;;
    esac
done
[[ -n "$full" ]] || fail "the 3 MiB file system never filled up"
kill -0 "$server" || fail "the server died when the disk filled up"
first="$(head -n 1 "$work/acknowledged")"
[[ "$(status_of -H "$auth" "$base/v1/users/$first")" == 200 ]] || fail "reads stopped working on a full disk"
acknowledged_full="$(wc -l <"$work/acknowledged")"

kill "$server"
wait "$server" 2>/dev/null || true
server=""

# Read-only: the same file through a read-only view (a file system cannot turn read-only under open
# writers). The server must serve reads and refuse writes with 503, without crashing.
mkdir -p "$work/ro"
mount --bind "$fs" "$work/ro"
mount -o remount,ro,bind "$work/ro"
RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --database-url "sqlite://$work/ro/users.db" \
    >"$work/ro.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    kill -0 "$server" 2>/dev/null || break
    [[ "$(status_of "$base/healthz")" == 200 ]] && break
    sleep 0.1
done
if kill -0 "$server" 2>/dev/null; then
    [[ "$(status_of -H "$auth" "$base/v1/users/$first")" == 200 ]] || fail "reads failed on a read-only database"
    code="$(create ro '{}')"
    [[ "$code" == 503 ]] || fail "a write on a read-only database answered $code, not 503"
    kill -0 "$server" || fail "the server died on a write to a read-only database"
    kill "$server"
    wait "$server" 2>/dev/null || true
    read_only="reads 200, write 503"
else
    # Refusing to start is acceptable too, when it says why.
    wait "$server" 2>/dev/null || true
    grep -qi "panicked" "$work/ro.log" && fail "the server panicked on a read-only database"
    grep -qiE "read.?only|readonly|unable to open" "$work/ro.log" || fail "no clear message: $(cat "$work/ro.log")"
    read_only="start refused with a clear message"
fi
server=""
umount "$work/ro"

check="$(sqlite3 "$fs/users.db" 'PRAGMA integrity_check;')"
[[ "$check" == ok ]] || fail "integrity check: $check"
present="$(sqlite3 "$fs/users.db" 'SELECT id FROM users;' | sort)"
missing="$(comm -23 <(sort "$work/acknowledged") <(printf '%s\n' "$present"))"
[[ -z "$missing" ]] || fail "acknowledged users missing: $missing"
echo "sqlite_faults: disk full after $acknowledged_full acknowledged writes: write 503, reads 200, no crash; read-only: $read_only; integrity ok, 0 of $acknowledged_full acknowledged writes lost"
echo "1 passed, 0 failed"
