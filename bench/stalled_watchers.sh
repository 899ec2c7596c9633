#!/usr/bin/env bash
# Stalled change-feed watchers beside a write load: opens WATCHERS REST watch streams on raw sockets that never
# read (4 KiB receive buffer), then runs UpdateUser at 1,000/s for 15 s with a GetUser probe at 200/s beside it,
# then 10 s more of the same writes. Prints how the watchers' open answers went, the server's RSS and the kernel's
# TCP memory (/proc/net/sockstat, pages of 4 KiB), the latencies of both runs and the feed's read counters.
# The first run pays for filling each stalled connection's kernel send buffer; the second shows what is left.
#
#   bash bench/stalled_watchers.sh sqlite 200
#   bash bench/stalled_watchers.sh postgres 1100      # past --max-watchers: the rest must be TOO_MANY_WATCHERS
#
# The server is pinned to CPU 0, every client to CPU 1. PostgreSQL from BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432); the database user_service_bench_stalled is created and dropped.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
backend="${1:-sqlite}"
watchers="${2:-200}"
cargo build --locked --release --quiet --bin user-service --example loadgen
bin=target/release/user-service
loadgen=target/release/examples/loadgen
work="$(mktemp -d)"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
pg_base="${BENCH_DATABASE_URL:-postgres://postgres@127.0.0.1:5432}"
case "$backend" in
    sqlite) url="sqlite://$work/users.db" ;;
    postgres)
        url="$pg_base/user_service_bench_stalled"
        psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS user_service_bench_stalled" \
            -c "CREATE DATABASE user_service_bench_stalled" ;;
    *) echo "usage: $0 sqlite|postgres WATCHERS" >&2; exit 2 ;;
esac
export USER_SERVICE_JWT_SECRET="stalled-watchers-bench-secret-of-32-bytes"
token="$("$bin" token --sub bench --scope users.admin --ttl 1h)"
"$bin" migrate --database-url "$url" >/dev/null
"$loadgen" seed --database-url "$url" --users 1000 >/dev/null
taskset -c 0 "$bin" serve --listen "127.0.0.1:$port" --database-url "$url" \
    --rate-limit 1000000000 --rate-burst 1000000000 >"$work/server.log" 2>&1 &
server=$!
cleanup() {
    kill "$server" ${stall:+"$stall"} 2>/dev/null || true
    wait "$server" 2>/dev/null || true
    [[ "$backend" == postgres ]] && psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS user_service_bench_stalled"
    rm -rf "$work"
}
trap cleanup EXIT
for _ in $(seq 100); do
    curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break
    sleep 0.1
done
rss() { awk '/VmRSS/ {print $2 / 1024}' "/proc/$server/status"; }
tcp_pages() { awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat; }
echo "before: RSS $(rss) MB, kernel TCP memory $(tcp_pages) pages"

# The watchers: each sends its request and never reads; after a second their answers' status lines are peeked.
taskset -c 1 python3 - "$port" "$watchers" "$token" >"$work/stall.out" <<'EOF' &
import socket, sys, time
port, n, token = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = []
for _ in range(n):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    socks.append(s)
for s in socks:
    s.sendall(f"GET /v1/users:watch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n\r\n".encode())
time.sleep(2)
answers = {}
for s in socks:
    try:
        head = s.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        head = b""
    status = head.split(b" ")[1].decode() if head.startswith(b"HTTP/") else "none"
    if status != "200":
        status += " TOO_MANY_WATCHERS" if b"TOO_MANY_WATCHERS" in head else ""
    answers[status] = answers.get(status, 0) + 1
print(f"watchers: {answers}", flush=True)
time.sleep(3600)
EOF
stall=$!
for _ in $(seq 300); do
    [[ -s "$work/stall.out" || "$watchers" == 0 ]] && break
    sleep 0.1
done
cat "$work/stall.out"
sleep 2
run() {
    taskset -c 1 "$loadgen" run --target "http://127.0.0.1:$port" --token "$token" --protocol grpc --users 1000 \
        --server-pid "$server" "$@"
}
run --op get --rate 200 --duration 15 --concurrency 8 >"$work/get.json" &
probe=$!
run --op update --rate 1000 --duration 15 --concurrency 64 >"$work/update.json"
wait "$probe"
run --op update --rate 1000 --duration 10 --concurrency 64 >"$work/update_after.json"
echo "after: RSS $(rss) MB, kernel TCP memory $(tcp_pages) pages"
python3 - "$work" <<'EOF'
import json, sys
for name, label in [("update", "UpdateUser, first 15 s"), ("get", "GetUser probe, same 15 s"),
                    ("update_after", "UpdateUser, 10 s after")]:
    r = json.load(open(f"{sys.argv[1]}/{name}.json"))
    print(f"{label}: {r['throughput']:.0f}/s, p50 {r['p50_us'] / 1000:.1f} ms, p99 {r['p99_us'] / 1000:.1f} ms, "
          f"errors {r['errors']}")
EOF
curl -s "http://127.0.0.1:$port/metrics" -H "Authorization: Bearer $token" | grep '^user_service_feed_reads_total'
