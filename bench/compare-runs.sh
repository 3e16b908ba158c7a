#!/usr/bin/env bash
# bench/compare.sh several times in a row, each run headed by its time and load average, then
# the median of each column: the figure the docs report.
#
#   bench/compare-runs.sh [RUNS]        (default 3; extra settings through compare.sh's
#                                        VIGIL_BENCH_ARGS / TORCH_BENCH_ARGS)
#
# Run it on an idle machine: PyTorch's threads collapse under foreign load and flatter vigil.
set -u
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
runs=${1:-3}
out=$(mktemp)
trap 'rm -f "$out"' EXIT
echo "# bench/compare-runs.sh $runs runs, commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)," \
     "VIGIL_BENCH_ARGS='${VIGIL_BENCH_ARGS:-}' TORCH_BENCH_ARGS='${TORCH_BENCH_ARGS:-}'"
for i in $(seq 1 "$runs"); do
    echo "=== run $i $(date -u +%Y-%m-%dT%H:%M:%SZ) load: $(cut -d' ' -f1-3 /proc/loadavg)"
    bash "$ROOT/bench/compare.sh" 2>&1 | tee -a "$out"
done
python3 - "$out" <<'EOF'
import re, statistics, sys
rows = {}
for line in open(sys.argv[1]):
    m = re.match(r"(train step|forward \+ per-sample loss|PGD step|HALO step \(ID img/s\))\s+([\d,.]+)\s+([\d,.]+)\s+([\d.]+)x", line)
    if m:
        label, v, t, r = m.groups()
        rows.setdefault(label, []).append((float(v.replace(",", "")), float(t.replace(",", "")), float(r)))
print("=== medians")
print("| loop | vigil img/s | PyTorch img/s | vigil / PyTorch (median of per-run ratios) |")
print("|---|---|---|---|")
for label, xs in rows.items():
    med = lambda k: statistics.median(x[k] for x in xs)
    print(f"| {label} | {med(0):,.0f} | {med(1):,.0f} | {med(2):.2f}x |")
EOF
