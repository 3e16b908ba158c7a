#!/usr/bin/env bash
# Trains the robust OOD ladder (SPEC.md section 2) on one data set: STD (also HALO's helper),
# OE, TRADES, TRADES-OE and HALO, one after another, each resumable (rerun the script to
# continue), and copies each run's metrics and config to results/.
#
#   scripts/halo-ladder.sh OUT RESULTS [extra `vigil train` flags...]
#
# OUT      folder of the runs (OUT/std, OUT/oe, ...; large, not committed)
# RESULTS  folder for the small summaries (RESULTS/<objective>/metrics.jsonl, config.json)
# Environment: OBJECTIVES (default "std oe trades trades-oe halo"), VIGIL (default
# target/release/vigil).
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,12p' "$0"; exit 2; }
out=$1; results=$2; shift 2
vigil=${VIGIL:-target/release/vigil}
objectives=${OBJECTIVES:-"std oe trades trades-oe halo"}
mkdir -p "$out" "$results"
for objective in $objectives; do
  extra=()
  if [ "$objective" = halo ]; then
    extra=(--helper "$out/std/model.safetensors")
  fi
  echo "ladder: $objective" >&2
  "$vigil" train --objective "$objective" --out "$out/$objective" "${extra[@]}" "$@" \
    > "$out/$objective.stdout" 2> "$out/$objective.log"
  mkdir -p "$results/$objective"
  cp "$out/$objective/metrics.jsonl" "$results/$objective/metrics.jsonl"
  "$vigil" info "$out/$objective/model.safetensors" --json > "$results/$objective/info.json"
  tail -n 2 "$out/$objective.log" >&2
done
