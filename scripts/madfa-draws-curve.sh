#!/usr/bin/env bash
# AUROC against the number of kept draws and the thinning, from finished seed runs: a chain's
# first D draws are exactly what a D-draw chain records, so `vigil score --draws D --every K`
# on the long run measures the shorter one.
#
#   scripts/madfa-draws-curve.sh NAME
#
# Reads $RUNS/NAME/seed-*/traces.npz (RUNS default runs/madfa), writes
# $RESULTS/NAME/draws-curve.json (RESULTS default results/madfa-small-cnn) and prints a table.
set -euo pipefail
name=$1
runs=${RUNS:-runs/madfa}/$name
results=${RESULTS:-results/madfa-small-cnn}/$name
vigil=${VIGIL:-target/release/vigil}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
lines=$tmp/curve.jsonl
for traces in "$runs"/seed-*/traces.npz; do
  seed=$(basename "$(dirname "$traces")"); seed=${seed#seed-}
  for every in 1 2 5; do
    for draws in 10 25 50 100 150 200 250 500 1000 1750; do
      total=$(( (draws + every - 1) / every ))
      [ "$total" -ge 2 ] || continue
      out=$("$vigil" score "$traces" --draws "$draws" --every "$every" --out "$tmp/s.csv" --json 2>/dev/null) || continue
      used=$(printf '%s' "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["draws"])')
      # Skip lengths beyond the run (score clamps them to what exists).
      [ "$used" -eq "$total" ] || continue
      printf '{"seed": %s, "draws": %s, "every": %s, "result": %s}\n' "$seed" "$draws" "$every" "$out" >> "$lines"
    done
  done
done
python3 - "$lines" "$results/draws-curve.json" <<'PY'
import json, math, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
groups = {}
for r in rows:
    groups.setdefault((r["every"], r["draws"]), []).append(r)
out = []
print("| every | draws (steps after burn-in) | draws used | seeds | CLC AUROC | Class CCC AUROC | Mean Corr AUROC |")
print("|---|---|---|---|---|---|---|")
for (every, draws), rs in sorted(groups.items()):
    def st(k):
        v = [r["result"]["auroc"][k] for r in rs]
        m = sum(v) / len(v)
        sd = math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1)) if len(v) > 1 else 0.0
        return {"mean": m, "sd": sd, "values": v}
    row = {"every": every, "draws": draws, "used": rs[0]["result"]["draws"], "seeds": [r["seed"] for r in rs],
           **{k: st(k) for k in ["clc", "class_ccc", "mean_corr", "mean_ccc"]}}
    out.append(row)
    f = lambda k: f"{row[k]['mean']:.4f} ± {row[k]['sd']:.4f}"
    print(f"| {every} | {draws} | {row['used']} | {len(rs)} | {f('clc')} | {f('class_ccc')} | {f('mean_corr')} |")
json.dump(out, open(sys.argv[2], "w"), indent=1)
PY
