#!/usr/bin/env bash
# The benchmark: builds the release binaries (the service and bench/loadgen.rs) and runs bench/bench.py, which
# seeds the databases, pins the server to CPU 0 and every client to CPU 1, and prints the results as Markdown.
#
#   bash bench/run.sh                      # 100k users, plus the 1M-user scale check (about 30 minutes)
#   bash bench/run.sh --users 1000000      # the whole suite on 1M users
#   bash bench/run.sh --smoke              # seconds per part, debug build: checks the harness still works
#
# PostgreSQL comes from BENCH_DATABASE_URL (default postgres://postgres@127.0.0.1:5432, trust auth); the
# script creates and drops databases named user_service_bench*. pgbench must be installed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
profile=release
for arg in "$@"; do
    [[ "$arg" == "--smoke" ]] && profile=dev
done
if [[ "$profile" == release ]]; then
    cargo build --locked --release --quiet --bin user-service --example loadgen
    bin_dir=target/release
else
    cargo build --locked --quiet --bin user-service --example loadgen
    bin_dir=target/debug
fi
exec python3 bench/bench.py --bin "$bin_dir/user-service" --loadgen "$bin_dir/examples/loadgen" "$@"
