#!/usr/bin/env bash
# Black-box check of the user-service binary through third-party clients: grpcio (gRPC), sonora and hand-framed
# requests (gRPC-Web, binary and -text), requests (REST/JSON), and schemathesis against the served /openapi.json.
#
# Starts the server on a free loopback port with a throw-away SQLite database, runs tests/blackbox/check_clients.py
# and schemathesis, always stops the server and removes its temp folder, and ends with `N passed, M failed`.
# Exits 1 if anything failed.
#
# Environment (relative paths are relative to the repository root):
#   USER_SERVICE_BIN        server binary                       (default target/debug/user-service)
#   BLACKBOX_VENV           Python venv, reused when present    (default target/blackbox-venv)
#   BLACKBOX_PYTHON         Python that creates the venv        (default python3)
#   BLACKBOX_PARTS          which parts run, any of: grpc grpc-web rest schemathesis (default: all four)
#   BLACKBOX_TOKEN          sent as `Authorization: Bearer $BLACKBOX_TOKEN` on every service call; by default an
#                           admin token minted with `user-service token` for the run's own random secret
#   BLACKBOX_MAX_EXAMPLES   schemathesis test cases per operation and phase   (default 30)
#   BLACKBOX_FUZZ_TIMEOUT   hard limit for the schemathesis run, in seconds   (default 240)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
cd "$root"

venv="${BLACKBOX_VENV:-target/blackbox-venv}"
server_bin="${USER_SERVICE_BIN:-target/debug/user-service}"
python="${BLACKBOX_PYTHON:-python3}"
parts="${BLACKBOX_PARTS:-grpc grpc-web rest schemathesis}"
max_examples="${BLACKBOX_MAX_EXAMPLES:-30}"
fuzz_timeout="${BLACKBOX_FUZZ_TIMEOUT:-240}"
requirements="$here/requirements.txt"
venv="$(realpath -m "$venv")"
server_bin="$(realpath -m "$server_bin")"

log() { printf '[blackbox] %s\n' "$*"; }
has_part() { [[ " ${parts//,/ } " == *" $1 "* ]]; }

if [[ ! -x "$server_bin" ]]; then
    echo "FATAL: no server binary at $server_bin (build it first, or set USER_SERVICE_BIN)" >&2
    exit 1
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/user-service-blackbox.XXXXXX")"
server_pid=""
finished=""

show_server_log() {
    if [[ -s "$work/server.log" ]]; then
        echo "--- last lines of the server log ---"
        tail -n 40 "$work/server.log" || true
        echo "---"
    fi
}

cleanup() {
    local rc=$?
    if [[ -n "$server_pid" ]] && kill -0 "$server_pid" 2>/dev/null; then
        kill -TERM "$server_pid" 2>/dev/null || true
        for _ in $(seq 1 50); do
            kill -0 "$server_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
    fi
    if [[ "$rc" -ne 0 && -z "$finished" ]]; then
        show_server_log
    fi
    rm -rf "$work"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# 1. The venv, (re)installed only when requirements.txt changed.
wanted="$(sha256sum "$requirements" | cut -d ' ' -f 1)"
stamp="$venv/.blackbox-requirements.sha256"
if [[ ! -x "$venv/bin/python" ]]; then
    log "creating the venv $venv"
    if ! "$python" -m venv "$venv"; then
        # Debian's own python3 ships venv/ensurepip separately.
        rm -rf "$venv"
        if command -v apt-get >/dev/null; then
            apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv
        fi
        "$python" -m venv "$venv"
    fi
fi
if [[ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]]; then
    log "installing $requirements"
    "$venv/bin/python" -m pip install --disable-pip-version-check --quiet --retries 5 --timeout 60 \
        -r "$requirements"
    echo "$wanted" >"$stamp"
fi
py="$venv/bin/python"

# 2. Python stubs from proto/ (google/api/*.proto expanded inside proto/, as protoc wants paths under -I).
gen="$work/gen"
mkdir -p "$gen"
mapfile -t google_protos < <(cd proto && printf '%s\n' google/api/*.proto)
"$py" -m grpc_tools.protoc -Iproto --python_out="$gen" --grpc_python_out="$gen" \
    users/v1/user_service.proto "${google_protos[@]}"

# 3. The server on a free port, with a fresh database.
port="$("$py" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
target="127.0.0.1:$port"
http_status() { # prints the HTTP status of GET $1, or 000 when nothing answers
    "$py" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=5).status)
except urllib.error.HTTPError as e:
    print(e.code)
except Exception:
    print("000")
EOF
}

# A throw-away secret for this run; the admin token every client sends is minted with the binary's own
# `token` command, unless one was given.
export USER_SERVICE_JWT_SECRET="${USER_SERVICE_JWT_SECRET:-$(head -c 32 /dev/urandom | base64 | tr -d '\n')}"
export USER_SERVICE_DATA_DIR="$work/data"
if [[ -z "${BLACKBOX_TOKEN:-}" ]]; then
    BLACKBOX_TOKEN="$("$server_bin" token --sub blackbox-admin --scope users.admin --ttl 1h)"
fi
export BLACKBOX_TOKEN

log "starting $server_bin on $target"
NO_COLOR=1 "$server_bin" serve --listen "$target" --database-url "sqlite://$work/users.db" \
    >"$work/server.log" 2>&1 &
server_pid=$!
ready=""
for _ in $(seq 1 150); do
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "FATAL: the server exited during start-up" >&2
        exit 1
    fi
    if [[ "$(http_status "http://$target/healthz")" == 200 ]]; then
        ready=1
        break
    fi
    sleep 0.2
done
if [[ -z "$ready" ]]; then
    echo "FATAL: GET /healthz did not answer 200 within 30 s" >&2
    exit 1
fi
log "server ready (pid $server_pid)"

passed=0
failed=0

# 4. The clients.
client_parts=()
for part in grpc grpc-web rest; do
    if has_part "$part"; then client_parts+=("$part"); fi
done
if [[ ${#client_parts[@]} -gt 0 ]]; then
    parts_csv="$(IFS=,; echo "${client_parts[*]}")"
    log "check_clients.py --parts $parts_csv"
    PYTHONPATH="$gen" "$py" "$here/check_clients.py" --target "$target" --parts "$parts_csv" \
        --counts-file "$work/counts" || true
    if [[ -s "$work/counts" ]]; then
        read -r client_passed client_failed <"$work/counts"
        passed=$((passed + client_passed))
        failed=$((failed + client_failed))
    else
        echo "FAIL check_clients.py crashed before counting"
        failed=$((failed + 1))
    fi
fi

# 5. schemathesis: every operation of /openapi.json, failing on any 5xx.
run_schemathesis() {
    local schema="http://$target/openapi.json" status rc=0
    status="$(http_status "$schema")"
    if [[ "$status" != 200 ]] || ! "$py" -c 'import json, sys, urllib.request
doc = json.load(urllib.request.urlopen(sys.argv[1], timeout=10))
sys.exit(0 if str(doc.get("openapi", "")).startswith("3.") and doc.get("paths") else 1)' "$schema" 2>/dev/null; then
        echo "FAIL schemathesis: GET /openapi.json did not return an OpenAPI 3 document (HTTP $status)"
        return 1
    fi
    # shellcheck disable=SC2054 # the commas are part of --phases, not separators
    local args=(
        run "$schema"
        --url "http://$target"
        --checks not_a_server_error
        --phases examples,coverage,fuzzing
        --max-examples "$max_examples"
        --request-timeout 10
        --workers 2
        --generation-database none
        --suppress-health-check all
        --no-color
        --report json --report-json-path "$work/schemathesis-$label.json"
        # WatchUsers streams until the client leaves: every request would end in schemathesis's read timeout,
        # which it reports as a network error. Its answers are checked by tests/it/feed.rs.
        --exclude-path /v1/users:watch
    )
    if [[ -n "$token" ]]; then
        args+=(-H "Authorization: Bearer $token")
    fi
    log "schemathesis ${args[*]//Bearer */Bearer ***}"
    # Its own files (.hypothesis, reports) stay in the temp folder.
    (cd "$work" && timeout --kill-after=10 "$fuzz_timeout" "$venv/bin/schemathesis" "${args[@]}") || rc=$?
    "$py" - "$work/schemathesis-$label.json" "$label" 2>/dev/null <<'EOF' || echo "schemathesis: no run report"
import json, sys
r = json.load(open(sys.argv[1], encoding="utf-8"))
ops, cases = r["operations"], r["test_cases"]
errors = ", ".join(f"{e['title']} x{e['count']}" for e in r["errors"]) or "none"
print(f"schemathesis ({sys.argv[2]}): {ops['tested']}/{ops['selected']} operations tested, {cases['generated']} test cases, "
      f"{cases['with_failures']} failing ({cases['unique_failures']} unique failures), errors: {errors}; "
      f"seed {r['seed']}")
EOF
    if [[ "$rc" -eq 124 || "$rc" -eq 137 ]]; then
        echo "FAIL schemathesis ($label): did not finish within ${fuzz_timeout} s"
    elif [[ "$rc" -ne 0 ]]; then
        echo "FAIL schemathesis ($label): exit code $rc (a 5xx, or operations it could not test: see FAILURES/ERRORS above)"
    else
        echo "PASS schemathesis ($label): no 5xx"
    fi
    return "$rc"
}
if has_part schemathesis; then
    # Once as an administrator, so requests reach the service; once without a token, where every call must be
    # refused with a 401 (a 4xx), never a 5xx.
    for pass in admin anonymous; do
        if [[ "$pass" == admin ]]; then token="${BLACKBOX_TOKEN:-}"; else token=""; fi
        if label="$pass" token="$token" run_schemathesis; then
            passed=$((passed + 1))
        else
            failed=$((failed + 1))
        fi
    done
fi

if [[ "$failed" -ne 0 ]]; then
    show_server_log
fi
finished=1
echo "blackbox: $passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
