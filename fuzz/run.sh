#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/fuzz_targets for N seconds each (default 60), one at a
# time, and reports which crashed (each crash's input is saved in fuzz/artifacts/<target>/);
# exits non-zero when any did.
#
#   bash fuzz/run.sh [seconds] [target...]
#
# Environment: FUZZ_SANITIZER (default `none`; `address` also works on this stable toolchain),
# FUZZ_JOBS (libFuzzer worker processes per target, default 1; logs go to fuzz-<n>.log when
# above 1).
set -euo pipefail

seconds="${1:-60}"
shift || true
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

# cargo-fuzz passes nightly-only rustc flags (-Z...); the stable toolchain accepts them with
# RUSTC_BOOTSTRAP. Fuzz builds go to fuzz/target, away from the workspace's target/.
export RUSTC_BOOTSTRAP=1
sanitizer="${FUZZ_SANITIZER:-none}"
jobs="${FUZZ_JOBS:-1}"
flags=(--fuzz-dir fuzz --target-dir fuzz/target --sanitizer "$sanitizer" --debug-assertions)

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi

cargo fuzz build "${flags[@]}"

crashed=()
for target in "${targets[@]}"; do
    echo "fuzz: ${target} for ${seconds}s"
    mkdir -p "fuzz/corpus/${target}"
    seeds=()
    if [ -d "fuzz/seeds/${target}" ]; then
        seeds=("fuzz/seeds/${target}")
    fi
    parallel=()
    if [ "$jobs" -gt 1 ]; then
        parallel=(-jobs="$jobs" -workers="$jobs")
    fi
    if ! cargo fuzz run "${flags[@]}" "$target" "fuzz/corpus/${target}" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 "${parallel[@]}"; then
        crashed+=("$target")
    fi
done

if [ "${#crashed[@]}" -gt 0 ]; then
    echo "fuzz: crashed: ${crashed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzz: no crash in ${#targets[@]} target(s), ${seconds}s each"
