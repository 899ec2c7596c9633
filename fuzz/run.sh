#!/usr/bin/env bash
# Runs every fuzz target for a while, or (FUZZ_SMOKE=1) only replays the hand-written seeds.
#
#   bash fuzz/run.sh [seconds-per-target]     fuzz each target for that long (default 180)
#   FUZZ_SMOKE=1 bash fuzz/run.sh             build the targets and replay fuzz/seeds/<target> once (CI)
#
# Prints `<target>: N runs in S s (E exec/s)` per target and exits non-zero if any target crashed; the crash
# input is then in fuzz/artifacts/<target>/ and the libFuzzer log in fuzz/target/fuzz-logs/<target>.log.
# cargo-fuzz needs `-Z` flags, so on a stable toolchain this sets RUSTC_BOOTSTRAP=1. Cargo builds with one job
# unless CARGO_BUILD_JOBS says otherwise.
set -euo pipefail

fuzz_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo_dir="$(dirname "$fuzz_dir")"
targets=(field_mask path_template json_request filter decode_limits connect_request verification_mail feed_cursor rest_answer)
cargo_fuzz_version="0.13.2"

seconds="${1:-180}"
if ! [[ "$seconds" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [seconds-per-target]  (a positive whole number, not '$seconds')" >&2
    exit 2
fi
smoke="${FUZZ_SMOKE:-0}"

export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$fuzz_dir/target}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz $cargo_fuzz_version" >&2
    cargo install cargo-fuzz --version "$cargo_fuzz_version" --locked \
        || cargo install cargo-fuzz --version "$cargo_fuzz_version"
fi

log_dir="$CARGO_TARGET_DIR/fuzz-logs"
mkdir -p "$log_dir"

# One build of every target up front, so build errors show as such and the timed runs only fuzz.
(cd "$repo_dir" && cargo fuzz build --fuzz-dir "$fuzz_dir")

failed=()
for target in "${targets[@]}"; do
    seeds="$fuzz_dir/seeds/$target"
    log="$log_dir/$target.log"
    if [[ "$smoke" == "1" ]]; then
        # Seeds only, no corpus: -runs=0 executes every seed once and stops.
        corpora=("$seeds")
        fuzzer_args=(-runs=0)
    else
        corpus="$fuzz_dir/corpus/$target"
        mkdir -p "$corpus"
        # New inputs go to the first directory (the ignored corpus); the seeds are only read.
        corpora=("$corpus" "$seeds")
        fuzzer_args=(-max_total_time="$seconds")
    fi
    status=0
    (cd "$repo_dir" && cargo fuzz run --fuzz-dir "$fuzz_dir" "$target" "${corpora[@]}" -- \
        "${fuzzer_args[@]}" -print_final_stats=1) >"$log" 2>&1 || status=$?

    runs="$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    rate="$(sed -n 's/^stat::average_exec_per_sec: *\([0-9]*\).*/\1/p' "$log" | tail -n 1)"
    took="$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -n 1)"
    if [[ "$status" -ne 0 ]]; then
        failed+=("$target")
        echo "$target: FAILED (exit $status) after ${runs:-?} runs; log: $log" >&2
        tail -n 40 "$log" >&2
    elif [[ "$smoke" == "1" ]]; then
        echo "$target: ${runs:-?} runs in ${took:-?} s (seeds replayed)"
    else
        echo "$target: ${runs:-?} runs in ${took:-?} s (${rate:-?} exec/s)"
    fi
done

if [[ "${#failed[@]}" -gt 0 ]]; then
    echo "crashed or failed: ${failed[*]}" >&2
    exit 1
fi
