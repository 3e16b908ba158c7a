#!/usr/bin/env bash
# Trains one backdoored model per attack and prints the table of clean accuracy and attack
# success rate. Resumable: run it again after an interruption and finished attacks are skipped,
# an unfinished one continues from its checkpoint.
#
#   scripts/attack-table.sh OUT_DIR [extra `vigil attack` options, e.g. --arch preact-resnet18]
#
# Defaults: small CNN, full Fashion-MNIST, 10 epochs, all-to-one target 0, rate 0.1.
# lc, lf and trojannn need --clean-model (the model.safetensors of a `vigil train` run).
# CLEAN_RUN=DIR adds the clean run to the final table.
set -euo pipefail
out=${1:?usage: scripts/attack-table.sh OUT_DIR [vigil attack options]}
shift
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
vigil=${VIGIL_BIN:-$root/target/release/vigil}
[ -x "$vigil" ] || cargo build --release -p vigil-cli --manifest-path "$root/Cargo.toml"
mkdir -p "$out"
failed=()
for attack in ${ATTACKS:-badnets blended sig wanet lc lf trojannn ssba input-aware}; do
    if [ -f "$out/$attack/results.json" ]; then
        echo "attack-table: $attack done" >&2
        continue
    fi
    # One failing attack (e.g. a clean-label rate larger than the target class) does not stop
    # the others; the script still fails at the end.
    if ! "$vigil" attack --attack "$attack" --out "$out/$attack" "$@" > "$out/$attack.log"; then
        echo "attack-table: $attack failed (its error is above)" >&2
        failed+=("$attack")
    fi
done
"$vigil" table ${CLEAN_RUN:+--clean "$CLEAN_RUN"} "$out"/*/
if [ ${#failed[@]} -gt 0 ]; then
    echo "attack-table: failed: ${failed[*]}" >&2
    exit 1
fi
