#!/usr/bin/env bash
# Runs `vigil benchmark ood` on a trained ladder (scripts/halo-ladder.sh) and copies the report,
# with the command, the commit and the timing, into a results folder. Resumable: rerun it.
#
#   scripts/halo-benchmark.sh LADDER TRANSFER OUT RESULTS [extra `vigil benchmark ood` flags...]
#
# LADDER    folder of the ladder's runs (LADDER/std, LADDER/oe, ...)
# TRANSFER  checkpoint of a separately trained STD model, the transfer attack's source
# OUT       the benchmark's output folder (its parts; large files, not committed)
# RESULTS   folder for report.json, report.md, rows.csv, the charts (auroc-*.svg) and run.txt
# Environment: VIGIL (default target/release/vigil).
set -euo pipefail
[ $# -ge 4 ] || { sed -n '2,12p' "$0"; exit 2; }
ladder=$1; transfer=$2; out=$3; results=$4; shift 4
vigil=${VIGIL:-target/release/vigil}
mkdir -p "$out" "$results"
command=("$vigil" benchmark ood --ladder "$ladder" --transfer-from "$transfer" --out "$out" "$@")
start=$(date +%s)
"${command[@]}" 2> "$out.log"
end=$(date +%s)
cp "$out/report.json" "$out/report.md" "$out/rows.csv" "$out"/auroc-*.svg "$results/"
{
  echo "command: $(printf '%q ' "${command[@]}")"
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "wall seconds of this invocation: $((end - start)) (stages saved earlier are not redone)"
  echo "machine: $(nproc) cores, load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} > "$results/run.txt"
tail -n 3 "$out.log" >&2
