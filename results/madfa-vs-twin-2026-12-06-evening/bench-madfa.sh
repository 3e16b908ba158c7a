#!/bin/bash
# MAD-FA pipeline against the PyTorch twin, BadNets small CNN, reference settings, exact traces,
# one chain; three rounds each side, interleaved; each at its best trace batch (vigil 64, twin 128).
cd /work/main
V=${VIGIL:-/tmp/vigil-swiglu}
O=/tmp/madfa-bench; mkdir -p $O
for r in 1 2 3; do
  echo "# round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  rm -rf $O/v-$r
  $V sample --record runs/badnets --out $O/v-$r --seed 0 --json --chains 1 --draws 250 --burn-in 50 \
     --thinning 1 --trace-batch-size 64 --loss reference 2> $O/v-$r.log | tail -1
  python3 bench/peer/madfa_twin.py --model runs/badnets/model.safetensors --task $O/v-1/task.npz \
     --out $O/t-$r.npz --seed 0 --threads 2 --trace-batch-size 128 2> $O/t-$r.log | tail -1
done
