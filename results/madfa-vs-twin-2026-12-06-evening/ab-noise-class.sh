#!/bin/bash
# vigil's MAD-FA pipeline (the twin benchmark's command) with the SGLD noise thread in the idle
# class (NEW) and without (OLD), alternating, two rounds: step and trace seconds.
cd /work/main
NEW=${NEW:-/tmp/vigil-swiglu}
OLD=${OLD:-/tmp/vigil-base}
O=/tmp/madfa-ab; mkdir -p $O
for r in 1 2; do
  for side in NEW OLD; do
    V=${!side}
    rm -rf $O/$side-$r
    echo "# round $r $side load $(cut -d' ' -f1-3 /proc/loadavg)"
    $V sample --record runs/badnets --out $O/$side-$r --seed 0 --json --chains 1 --draws 250 --burn-in 50 \
       --thinning 1 --trace-batch-size 64 --loss reference 2> /dev/null | tail -1 | python3 -c "
import sys,json; d=json.load(sys.stdin); c=d['chains'][0]
print(json.dumps({'seconds': d['seconds'], 'step_seconds': c['step_seconds'], 'trace_seconds': c['trace_seconds'], 'clc': d['auroc']['clc']}))"
  done
done
