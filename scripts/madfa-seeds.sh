#!/usr/bin/env bash
# Runs `vigil sample` on one attack record for several seeds and keeps each run's JSON summary
# (AUROCs, settings, seed, version, timings) under results/, then prints the mean and spread.
#
#   scripts/madfa-seeds.sh RECORD NAME [extra vigil sample flags...]
#
# RECORD  attack record folder (from `vigil attack`), e.g. runs/badnets; or a folder exported
#         by bench/peer/train_backdoor.py (model.safetensors, results.json and the image folders
#         trusted/ sampling/ test/ anomalous/), loaded as a user loads their own small CNN
# NAME    row name, e.g. badnets-reference; results go to $RESULTS/NAME/seed-K.json
# Environment: SEEDS (default "0 1 2 3 4"), RESULTS (default results/madfa-small-cnn),
#              RUNS (default runs/madfa), VIGIL (default target/release/vigil).
# Traces stay under $RUNS/NAME/seed-K (large; not committed). Re-running skips finished seeds.
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
record=$1; name=$2; shift 2
seeds=${SEEDS:-"0 1 2 3 4"}
results=${RESULTS:-results/madfa-small-cnn}/$name
runs=${RUNS:-runs/madfa}/$name
vigil=${VIGIL:-target/release/vigil}
mkdir -p "$results" "$runs"
if [ -f "$record/attack.json" ]; then
  inputs=(--record "$record")
else
  read -r mean std < <(python3 -c 'import json,sys; n=json.load(open(sys.argv[1]))["normalisation"]; print(n["mean"], n["std"])' "$record/results.json")
  inputs=(--model "$record/model.safetensors" --arch small-cnn --norm-mean "$mean" --norm-std "$std"
          --trusted "$record/trusted" --sampling "$record/sampling" --test "$record/test"
          --anomalous "$record/anomalous")
fi
for seed in $seeds; do
  out=$results/seed-$seed.json
  if [ -s "$out" ]; then echo "$name seed $seed: done"; continue; fi
  echo "$name seed $seed: sampling" >&2
  "$vigil" sample "${inputs[@]}" --out "$runs/seed-$seed" --seed "$seed" --json "$@" \
    > "$out.tmp" 2> "$runs/seed-$seed.log"
  mv "$out.tmp" "$out"
  # `--calibrate` runs: keep the calibration (candidates, reliabilities, choice) beside the result.
  if [ -f "$runs/seed-$seed/calibration.json" ]; then
    cp "$runs/seed-$seed/calibration.json" "$results/calibration-seed-$seed.json"
  fi
  echo "$name seed $seed: $(grep -o '"clc":[0-9.]*' "$out")"
done
python3 "$(dirname "$0")/madfa-summary.py" "$results"
