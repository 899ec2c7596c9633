#!/usr/bin/env bash
# Builds the release binary and runs bench/protocol_overhead.py with the black-box venv and freshly generated stubs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
cargo build --release --quiet
venv="${BLACKBOX_VENV:-target/blackbox-venv}"
if [[ ! -x "$venv/bin/python" ]]; then
    BLACKBOX_PARTS=grpc bash tests/blackbox/run.sh >/dev/null
fi
gen="$(mktemp -d)"
trap 'rm -rf "$gen"' EXIT
(cd proto && "$root/$venv/bin/python" -m grpc_tools.protoc -I. --python_out="$gen" --grpc_python_out="$gen" \
    users/v1/user_service.proto google/api/http.proto google/api/annotations.proto google/api/field_behavior.proto)
PYTHONPATH="$gen" "$venv/bin/python" bench/protocol_overhead.py target/release/user-service "$@"
