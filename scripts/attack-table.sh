#!/usr/bin/env bash
# Trains one backdoored model per table row and prints the table of clean accuracy and attack
# success rate. Resumable: run it again after an interruption and finished rows are skipped, an
# unfinished one continues from its checkpoint.
#
#   scripts/attack-table.sh OUT_DIR [extra `vigil attack` options, e.g. --arch preact-resnet18]
#
# Defaults: small CNN, full Fashion-MNIST, 10 epochs, all-to-one target 0, rate 0.1.
# lc, lf and trojannn need --clean-model (the model.safetensors of a `vigil train` run).
# ROWS="badnets sig ..." picks rows by name (default: all); CLEAN_RUN=DIR adds the clean run to
# the table; VIGIL_BIN picks the binary.
set -euo pipefail
out=${1:?usage: scripts/attack-table.sh OUT_DIR [vigil attack options]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vigil=${VIGIL_BIN:-$root/target/release/vigil}
[ -x "$vigil" ] || cargo build --release -p vigil-cli --manifest-path "$root/Cargo.toml"

# NAME|OPTIONS: the record folder and what `vigil attack` gets for it. One row per attack at
# BackdoorBench's settings, then the clean-label attacks tuned (docs/attacks.md, "Clean-label
# attacks, tuned"): half the target class poisoned, and for SIG a stronger test-time signal.
rows=(
    "badnets|--attack badnets"
    "blended|--attack blended"
    "sig|--attack sig"
    "sig-rate0.05|--attack sig --rate 0.05"
    "sig-rate0.05-test80|--attack sig --rate 0.05 --sig-test-delta 80"
    "wanet|--attack wanet"
    "lc|--attack lc"
    "lc-eps32-rate0.05|--attack lc --lc-eps 32 --rate 0.05"
    "lf|--attack lf"
    "trojannn|--attack trojannn"
    "ssba|--attack ssba"
    "input-aware|--attack input-aware"
)

mkdir -p "$out"
failed=()
done_dirs=()
for row in "${rows[@]}"; do
    name=${row%%|*}
    read -r -a options <<< "${row#*|}"
    if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then
        continue
    fi
    if [ ! -f "$out/$name/results.json" ]; then
        # One failing row (e.g. a clean-label rate larger than the target class) does not stop
        # the others; the script still fails at the end.
        if ! "$vigil" attack "${options[@]}" --out "$out/$name" "$@" > "$out/$name.log"; then
            echo "attack-table: $name failed (its error is above)" >&2
            failed+=("$name")
            continue
        fi
    fi
    done_dirs+=("$out/$name")
done
[ ${#done_dirs[@]} -gt 0 ] && "$vigil" table ${CLEAN_RUN:+--clean "$CLEAN_RUN"} "${done_dirs[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "attack-table: failed: ${failed[*]}" >&2
    exit 1
fi
