#!/usr/bin/env bash
# Filter-shape check: ListUsers with thousands of different filters must not grow the service or the database.
#
# Each filter shape (which restrictions, in which order) is a different SQL text. A statement cache that kept
# every one of them prepared for the connection's life would grow by about 27 KB per shape in the service
# (SQLite) or in PostgreSQL's backend processes, without bound, for any caller who varies its filter. This sends
# SHAPES (default 3000) distinct filters on each backend and requires the service's resident memory, and on
# PostgreSQL the private memory of the backends serving it, to grow by at most LIMIT_MIB (default 16) over a
# warm-up of the same kind. Every call must answer 200.
# Usage: tests/reliability/filter_shapes.sh   (USER_SERVICE_BIN defaults to target/debug/user-service)
name=filter_shapes
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
shapes="${SHAPES:-3000}"
limit_kib=$((${LIMIT_MIB:-16} * 1024))
pg="postgres://postgres@127.0.0.1:5432"
db="filter_shapes_$$"
passed=0
failed=0
drop_db() { psql "$pg/postgres" -q -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" 2>/dev/null || true; }
trap 'drop_db; cleanup' EXIT

export USER_SERVICE_JWT_SECRET="filter-shapes-check-secret-0123456789"
token="$("$bin" token --sub ops --scope users.admin)"

# pg_private_kib: the private (not shared-buffer) memory of the PostgreSQL backends connected to the check's
# database, in KiB.
pg_private_kib() {
    local total=0 pid kib
    for pid in $(psql "$pg/postgres" -Atq -c \
        "SELECT pid FROM pg_stat_activity WHERE datname = '$db' AND pid <> pg_backend_pid()"); do
        kib="$(awk '/^Private_(Clean|Dirty):/ { s += $2 } END { print s + 0 }' "/proc/$pid/smaps_rollup" 2>/dev/null || echo 0)"
        total=$((total + kib))
    done
    echo "$total"
}

# send <port> <first> <count>: ListUsers with filter shapes first..first+count-1 on one keep-alive connection;
# prints how many did not answer 200.
send() {
    python3 - "$1" "$2" "$3" "$token" <<'EOF'
import http.client, itertools, sys, urllib.parse
port, first, count, token = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
kinds = ['email = "a@example.com"', 'email != "b@example.com"', 'username = "u"', 'region_code = "DE"',
         'state = ACTIVE', 'state != DELETED', 'labels.team = "x"', 'labels.env:*', 'roles:"admin"',
         'username:*', 'email = "x*"', 'region_code != "FR"']
# Every ordered choice of 4 restrictions is its own SQL text: 12^4 = 20,736 shapes.
shapes = itertools.islice(itertools.product(kinds, repeat=4), first, first + count)
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
bad = 0
for shape in shapes:
    conn.request("GET", "/v1/users?pageSize=5&filter=" + urllib.parse.quote(" AND ".join(shape)),
                 headers={"Authorization": "Bearer " + token})
    response = conn.getresponse()
    response.read()
    if response.status != 200:
        bad += 1
print(bad)
EOF
}

# run <backend> <database url>: warm up, then the distinct shapes; checks the growth.
run() {
    local backend="$1" url="$2" port bad base_kib pg_base_kib grown pg_grown
    port="$(free_port)"
    start_server "$port" --database-url "$url" --rate-limit 1000000 --rate-burst 1000000
    bad="$(send "$port" 0 300)"
    [[ "$bad" == 0 ]] || fail "$backend: $bad warm-up calls did not answer 200"
    base_kib="$(kib VmRSS)"
    pg_base_kib="$(pg_private_kib)"
    bad="$(send "$port" 300 "$shapes")"
    grown=$(($(kib VmRSS) - base_kib))
    pg_grown=$(($(pg_private_kib) - pg_base_kib))
    local backends=""
    [[ "$backend" == postgres ]] &&
        backends=", its PostgreSQL backends $((pg_base_kib / 1024)) MiB +$((pg_grown / 1024)) MiB"
    echo "$name: $backend: $shapes filter shapes: service RSS $((base_kib / 1024)) MiB +$((grown / 1024)) MiB$backends;" \
        "$bad not 200"
    local figures=("$grown")
    [[ "$backend" == postgres ]] && figures+=("$pg_grown")
    for figure in "${figures[@]}"; do
        if [[ "$figure" -le "$limit_kib" ]]; then passed=$((passed + 1)); else
            failed=$((failed + 1))
            echo "$name: FAIL: $backend: memory grew by $((figure / 1024)) MiB (limit $((limit_kib / 1024)))"
        fi
    done
    if [[ "$bad" == 0 ]]; then passed=$((passed + 1)); else
        failed=$((failed + 1))
        echo "$name: FAIL: $backend: $bad calls did not answer 200"
    fi
    kill "$server" && wait "$server" 2>/dev/null || true
    server=""
}

run sqlite "sqlite://$work/users.db"
psql "$pg/postgres" -q -v ON_ERROR_STOP=1 -c "CREATE DATABASE $db"
run postgres "$pg/$db"

echo "$passed passed, $failed failed"
[[ "$failed" == 0 ]]
