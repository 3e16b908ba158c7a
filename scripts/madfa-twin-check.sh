#!/usr/bin/env bash
# `vigil score` on the PyTorch twin's own trace files must give the twin's own AUROCs.
#
#   scripts/madfa-twin-check.sh NAME-torch [...]
#
# For every $RUNS/NAME/seed-K.npz (RUNS default runs/madfa) and the twin's JSON in
# $RESULTS/NAME/seed-K.json (RESULTS default results/madfa-small-cnn), prints and records in
# $RESULTS/NAME/vigil-score-check.jsonl the largest |AUROC difference| per seed.
set -euo pipefail
vigil=${VIGIL:-target/release/vigil}
for name in "$@"; do
  runs=${RUNS:-runs/madfa}/$name; results=${RESULTS:-results/madfa-small-cnn}/$name
  for traces in "$runs"/seed-*.npz; do
    seed=$(basename "$traces" .npz)
    "$vigil" score "$traces" --out "$(mktemp)" --json 2>/dev/null \
      | python3 -c 'import json,sys; v=json.load(sys.stdin)["auroc"]; t=json.load(open(sys.argv[1]))["auroc"]; print(json.dumps({"seed": sys.argv[2], "vigil": v, "twin": t, "max_abs_diff": max(abs(v[k]-t[k]) for k in v)}))' \
        "$results/$seed.json" "$seed"
  done | tee "$results/vigil-score-check.jsonl"
done
