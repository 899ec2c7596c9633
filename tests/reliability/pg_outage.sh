#!/usr/bin/env bash
# Database fault check: the service on PostgreSQL while PostgreSQL is stopped and started again.
#
# While the database is down, calls must fail fast with UNAVAILABLE (REST 503, well under the 5 s connection
# time-out), /readyz must answer 503 and /metrics must show the database down; once it is back, the service must
# recover by itself within seconds, with no restart, and every write acknowledged before the outage must be there.
#
# It stops the machine's PostgreSQL cluster, so it never runs beside other tests; it always starts it again on
# exit. Usage: tests/reliability/pg_outage.sh   (USER_SERVICE_BIN defaults to target/debug/user-service)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="$(realpath -m "${USER_SERVICE_BIN:-target/debug/user-service}")"
version="$(ls /etc/postgresql | head -n 1)"
db=user_service_outage
work="$(mktemp -d)"
server=""

cleanup() {
    pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
    [[ -n "$server" ]] && kill "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

ms() { date +%s%3N; }
status_of() { curl -s -o /dev/null -w '%{http_code}' -m 10 "$@"; }
fail() { echo "pg_outage: FAIL: $*"; echo "0 passed, 1 failed"; exit 1; }

psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -q \
    -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" -c "CREATE DATABASE $db"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
export USER_SERVICE_JWT_SECRET="outage-check-secret-of-at-least-32-bytes"
auth="Authorization: Bearer $("$bin" token --sub ops --scope users.admin)"
base="http://127.0.0.1:$port"

RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" --database-url "postgres://postgres@127.0.0.1:5432/$db" \
    >"$work/server.log" 2>&1 &
server=$!
for _ in $(seq 1 100); do
    [[ "$(status_of "$base/readyz")" == 200 ]] && break
    sleep 0.1
done
[[ "$(status_of "$base/readyz")" == 200 ]] || fail "the server did not become ready"

ids=()
for i in $(seq 1 20); do
    id="$(curl -s -m 10 -H "$auth" -H 'Content-Type: application/json' -X POST "$base/v1/users" \
        -d "{\"email\": \"outage$i@example.com\"}" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')"
    ids+=("$id")
done

pg_ctlcluster --skip-systemctl-redirect "$version" main stop -m fast
sleep 3  # the health loop pings every 2 s

start="$(ms)"
code="$(status_of -H "$auth" "$base/v1/users/${ids[0]}")"
elapsed=$(( $(ms) - start ))
[[ "$code" == 503 ]] || fail "a read while the database is down answered $code, not 503"
(( elapsed < 1500 )) || fail "a read while the database is down took $elapsed ms (should fail fast)"
start="$(ms)"
code="$(status_of -H "$auth" -H 'Content-Type: application/json' -X PATCH "$base/v1/users/${ids[1]}" -d '{"givenName": "x"}')"
write_elapsed=$(( $(ms) - start ))
[[ "$code" == 503 ]] || fail "a write while the database is down answered $code, not 503"
[[ "$(status_of "$base/readyz")" == 503 ]] || fail "/readyz does not report the outage"
curl -s "$base/metrics" | grep -q '^user_service_database_up 0$' || fail "/metrics does not report the outage"
[[ "$(status_of "$base/healthz")" == 200 ]] || fail "/healthz (liveness) failed during the outage"
grep -qi "panic" "$work/server.log" && fail "the server panicked"

pg_ctlcluster --skip-systemctl-redirect "$version" main start
start="$(ms)"
recovered=""
for _ in $(seq 1 300); do
    if [[ "$(status_of -H "$auth" "$base/v1/users/${ids[0]}")" == 200 ]]; then recovered=1; break; fi
    sleep 0.1
done
recovery=$(( $(ms) - start ))
[[ -n "$recovered" ]] || fail "the service did not recover within 30 s of the database coming back"
for _ in $(seq 1 50); do [[ "$(status_of "$base/readyz")" == 200 ]] && break; sleep 0.1; done
[[ "$(status_of "$base/readyz")" == 200 ]] || fail "/readyz still reports the outage"
for id in "${ids[@]}"; do
    [[ "$(status_of -H "$auth" "$base/v1/users/$id")" == 200 ]] || fail "user $id written before the outage is gone"
done
kill -0 "$server" || fail "the server died"
echo "pg_outage: down: read 503 in ${elapsed} ms, write 503 in ${write_elapsed} ms, /readyz 503; back: recovered in ${recovery} ms without a restart, 20 of 20 earlier writes present"
echo "1 passed, 0 failed"
