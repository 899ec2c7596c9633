# Shared by the reliability scripts that attack one server process: `source` it after setting `name`.
# Gives: $root (the repository, made the working folder), $bin (USER_SERVICE_BIN, default the debug binary),
# $work (a temporary folder, removed on exit with the server), fail, status_of, free_port, kib and
# start_server. Every script prints `N passed, N failed` last.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$root"
bin="$(realpath -m "${USER_SERVICE_BIN:-target/debug/user-service}")"
work="$(mktemp -d)"
server=""

cleanup() {
    [[ -n "$server" ]] && kill "$server" 2>/dev/null && wait "$server" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "$name: FAIL: $*"; tail -n 20 "$work/server.log" 2>/dev/null || true; echo "0 passed, 1 failed"; exit 1; }
status_of() { curl -s -o /dev/null -w '%{http_code}' -m 10 "$@"; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
# kib <VmRSS|VmHWM>: the server's resident memory, in KiB.
kib() { awk -v key="$1:" '$1 == key { print $2 }' "/proc/$server/status"; }

# start_server <port> <serve flags...>: starts `serve` on 127.0.0.1:<port> (log in $work/server.log) and waits
# until /readyz answers.
start_server() {
    local port="$1"
    shift
    RUST_LOG=warn "$bin" serve --listen "127.0.0.1:$port" "$@" >"$work/server.log" 2>&1 &
    server=$!
    for _ in $(seq 1 100); do [[ "$(status_of "http://127.0.0.1:$port/readyz")" == 200 ]] && return 0; sleep 0.1; done
    fail "the server did not become ready"
}
