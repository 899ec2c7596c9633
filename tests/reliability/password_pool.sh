#!/usr/bin/env bash
# Password-hashing memory check: a burst of concurrent password changes by one caller against the real binary.
#
# Each Argon2id hash needs 19 MiB. The hashes run on a bounded pool (--password-hash-concurrency), so the peak
# resident memory (VmHWM) must stay under base + slots x 19 MiB + a margin for the connections, however many
# calls arrive at once, and the resident memory after the burst must come back under the same bound (memory
# the allocator keeps after a burst is memory the next burst adds to). Every call must still be answered.
# Usage: tests/reliability/password_pool.sh   (USER_SERVICE_BIN defaults to target/debug/user-service;
# CALLS, default 120, is the size of the burst; SLOTS, default 2, the pool size the server is started with)
name=password_pool
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
calls="${CALLS:-120}"
slots="${SLOTS:-2}"
# Room for the connections and buffers of the burst itself, over the idle base.
margin_kib=$((48 * 1024))
hash_kib=$((19 * 1024))
passed=0
failed=0
check() {  # check <description> <command...>
    local what="$1"
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "password_pool: FAIL: $what"
    fi
}

port="$(free_port)"
export USER_SERVICE_JWT_SECRET="password-pool-check-secret-0123456789"
auth="Authorization: Bearer $("$bin" token --sub ops --scope users.admin)"
base="http://127.0.0.1:$port"
# The burst must reach the pool, not the per-caller rate limit: each password change costs two tokens.
start_server "$port" --database-url "sqlite://$work/users.db" \
    --rate-burst $((4 * calls + 100)) --password-hash-concurrency "$slots"
sleep 0.5
base_kib="$(kib VmRSS)"

id="$(curl -s -m 10 -H "$auth" -H 'Content-Type: application/json' -X POST "$base/v1/users" \
    -d '{"email": "pool@example.com", "password": "Warm-Up-Pass1"}' |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')" || fail "creating the user failed"

# One curl process, every call on its own connection at once. Options do not carry over `next`, so each call
# names its headers.
for i in $(seq 1 "$calls"); do
    [[ "$i" -gt 1 ]] && echo next
    printf 'url = "%s/v1/users/%s?updateMask=password"\nrequest = "PATCH"\nheader = "%s"\n' "$base" "$id" "$auth"
    printf 'header = "Content-Type: application/json"\ndata = "{\\"password\\": \\"Burst-Pass-%04d\\"}"\n' "$i"
    printf 'output = "/dev/null"\nwrite-out = "%%{http_code}\\n"\n'
done >"$work/burst.cfg"
started="$(date +%s%3N)"
curl -s --no-progress-meter -m 50 -Z --parallel-immediate --parallel-max "$calls" -K "$work/burst.cfg" >"$work/codes" &
burst=$!
# A read while the burst runs: how long other callers wait (printed, not asserted: the machine is shared).
sleep 0.2
get_ms="$(curl -s -o /dev/null -m 50 -w '%{time_total}' -H "$auth" "$base/v1/users/$id" |
    awk '{ printf "%d", $1 * 1000 }')"
wait "$burst" || true
burst_ms=$(($(date +%s%3N) - started))
kill -0 "$server" 2>/dev/null || fail "the server died during the burst"
sleep 2
peak_kib="$(kib VmHWM)"
after_kib="$(kib VmRSS)"
ok="$(grep -c '^200$' "$work/codes" || true)"
bound_kib=$((base_kib + slots * hash_kib + margin_kib))

check "only $ok of $calls password changes answered 200 ($(sort "$work/codes" | uniq -c | tr '\n' ' '))" \
    test "$ok" -eq "$calls"
check "peak RSS $((peak_kib / 1024)) MiB is over the bound $((bound_kib / 1024)) MiB" test "$peak_kib" -le "$bound_kib"
check "RSS after the burst $((after_kib / 1024)) MiB is over the bound $((bound_kib / 1024)) MiB" \
    test "$after_kib" -le "$bound_kib"
check "the server stopped answering after the burst" test "$(status_of -H "$auth" "$base/v1/users/$id")" == 200
echo "password_pool: $calls concurrent password changes, $slots hash slots: $ok answered 200 in ${burst_ms} ms;" \
    "RSS base $((base_kib / 1024)) MiB, peak $((peak_kib / 1024)) MiB, after $((after_kib / 1024)) MiB" \
    "(bound $((bound_kib / 1024)) MiB); a GetUser during the burst took ${get_ms} ms"
echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
