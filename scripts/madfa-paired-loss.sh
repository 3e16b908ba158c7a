#!/usr/bin/env bash
# Precise against reference loss on the same chains and the same draws.
#
#   scripts/madfa-paired-loss.sh REFERENCE_ROW PRECISE_ROW SKIP EVERY
#
# The trace loss does not change a chain (the steps use the mean cross-entropy either way), so
# seed K of both rows is the same chain. Draw SKIP, SKIP+EVERY, ... of the reference row's traces
# (`vigil score --burn-in SKIP --every EVERY`) are the steps the precise row traced. Writes
# $RESULTS/PRECISE_ROW/paired-with-reference.jsonl and prints the per-seed differences.
set -euo pipefail
ref=$1; precise=$2; skip=$3; every=$4
runs=${RUNS:-runs/madfa}; results=${RESULTS:-results/madfa-small-cnn}
vigil=${VIGIL:-target/release/vigil}
for json in "$results/$precise"/seed-*.json; do
  seed=$(basename "$json" .json)
  "$vigil" score "$runs/$ref/$seed/traces.npz" --burn-in "$skip" --every "$every" --out "$(mktemp)" --json 2>/dev/null \
    | python3 -c 'import json,sys; r=json.load(sys.stdin); p=json.load(open(sys.argv[1])); print(json.dumps({"seed": sys.argv[2], "draws": r["draws"], "reference_loss": r["auroc"], "precise_loss": p["auroc"], "precise_minus_reference": {k: p["auroc"][k]-r["auroc"][k] for k in r["auroc"]}}))' "$json" "$seed"
done | tee "$results/$precise/paired-with-reference.jsonl"
