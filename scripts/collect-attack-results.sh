#!/usr/bin/env bash
# Copies the small, reviewable part of attack records into results/: the manifest, results,
# per-epoch metrics and example images (not models or triggered test sets).
#
#   scripts/collect-attack-results.sh RECORDS_DIR RESULTS_DIR
set -euo pipefail
src=${1:?usage: scripts/collect-attack-results.sh RECORDS_DIR RESULTS_DIR}
dst=${2:?usage: scripts/collect-attack-results.sh RECORDS_DIR RESULTS_DIR}
for record in "$src"/*/; do
    name=$(basename "$record")
    [ -f "$record/results.json" ] || continue
    mkdir -p "$dst/$name"
    for f in attack.json results.json metrics.jsonl examples.png; do
        [ -f "$record/$f" ] && cp "$record/$f" "$dst/$name/"
    done
done
