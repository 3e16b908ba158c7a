#!/usr/bin/env bash
# Builds vigil's libFuzzer targets (fuzz/) and runs each for N seconds, one at a time, at the
# lowest CPU priority; records each run's command, length and libFuzzer's final statistics in
# results/fuzz/<target>.txt. A crash, out-of-memory or hang leaves its input in
# fuzz/artifacts/<target>/; minimise it with `cargo fuzz tmin`, then save it under
# fuzz/regressions/<target>/, where the CI test (crates/vigil-fuzz/tests/replay.rs) replays it.
#
# Usage: scripts/fuzz.sh [SECONDS_PER_TARGET (600)] [TARGET...]   (default: every target)
# Needs cargo-fuzz (`cargo install cargo-fuzz`); stable Rust works through RUSTC_BOOTSTRAP=1.
set -uo pipefail
cd "$(dirname "$0")/.."
seconds=${1:-600}
shift || true
export RUSTC_BOOTSTRAP=1
# Release with debug assertions, so integer overflow panics as in a debug build; no sanitizer:
# the targets are safe Rust, and libFuzzer's own limits catch what matters here.
flags=(-O -a --sanitizer none)
# FUZZ_NO_BUILD=1 runs the binaries already built.
[ -n "${FUZZ_NO_BUILD:-}" ] || nice -n 19 cargo fuzz build "${flags[@]}" || exit 1
# The runs use the binaries just built (`cargo fuzz run` would rebuild whenever the tree changed,
# so each run would test a different vigil); all targets test the same snapshot.
bin_dir=fuzz/target/x86_64-unknown-linux-gnu/release
revision=$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- crates/vigil-core || echo "+uncommitted")
if [ $# -gt 0 ]; then targets=("$@"); else mapfile -t targets < <(cargo fuzz list); fi
mkdir -p results/fuzz fuzz/logs
for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    # Allocations beyond the input's size fail the run: one malloc over 512 MB or a resident
    # size over 1 GB on inputs of at most 64 KB; an input taking over 10 s is reported as a hang.
    options=(-max_total_time="$seconds" -max_len=65536 -rss_limit_mb=1024 -malloc_limit_mb=512
             -timeout=10 -print_final_stats=1)
    command="nice -n 19 $bin_dir/$target fuzz/corpus/$target fuzz/seeds/$target ${options[*]} -artifact_prefix=fuzz/artifacts/$target/"
    echo "== $target: $command"
    start=$(date +%s)
    mkdir -p "fuzz/artifacts/$target"
    nice -n 19 "$bin_dir/$target" "fuzz/corpus/$target" "fuzz/seeds/$target" "${options[@]}" \
        -artifact_prefix="fuzz/artifacts/$target/" > "fuzz/logs/$target.log" 2>&1
    status=$?
    elapsed=$(( $(date +%s) - start ))
    findings=$(find "fuzz/artifacts/$target" -type f 2>/dev/null | wc -l)
    {
        echo "target:   $target"
        echo "built:    RUSTC_BOOTSTRAP=1 nice -n 19 cargo fuzz build ${flags[*]} (vigil $revision)"
        echo "command:  $command"
        echo "date:     $(date -u +%Y-%m-%dT%H:%M:%SZ)"
        echo "wall:     ${elapsed} s (asked: ${seconds} s)"
        echo "exit:     $status"
        echo "corpus:   $(find "fuzz/corpus/$target" -type f | wc -l) inputs in fuzz/corpus/$target, $(find "fuzz/seeds/$target" -type f | wc -l) seeds"
        echo "crashes, OOMs, hangs saved: $findings"
        echo "libFuzzer's last lines:"
        grep -E '^(Done|#[0-9]+.*(DONE|pulse)|stat::|==[0-9]+== ERROR|SUMMARY|.*panicked at)' \
            "fuzz/logs/$target.log" | tail -n 14 | sed 's/^/    /'
    } > "results/fuzz/$target.txt"
    cat "results/fuzz/$target.txt"
done

# The summary table of every target's latest run.
{
    echo "# Fuzzing vigil's parsers"
    echo
    echo "Each target (crates/vigil-fuzz/src/lib.rs, one libFuzzer binary each in fuzz/) ran at most two at a time, at"
    echo "nice 19 on the 2-core machine, seeded with fuzz/seeds/<target>/; one input at most 64 KB,"
    echo "one allocation at most 512 MB, resident memory at most 1 GB, 10 s per input. Details and"
    echo "libFuzzer's final statistics per target: <target>.txt. Written by scripts/fuzz.sh."
    echo
    echo "| target | wall time (s) | executions | corpus (inputs) | crashes, OOMs, hangs | exit |"
    echo "|---|---|---|---|---|---|"
    for file in results/fuzz/*.txt; do
        target=$(sed -n 's/^target: *//p' "$file")
        wall=$(sed -n 's/^wall: *\([0-9]*\) s.*/\1/p' "$file")
        runs=$(sed -n 's/.*stat::number_of_executed_units: *//p' "$file")
        corpus=$(sed -n 's/^corpus: *\([0-9]*\) inputs.*/\1/p' "$file")
        found=$(sed -n 's/^crashes, OOMs, hangs saved: *//p' "$file")
        status=$(sed -n 's/^exit: *//p' "$file")
        echo "| $target | $wall | ${runs:-?} | $corpus | $found | $status |"
    done
} > results/fuzz/README.md
