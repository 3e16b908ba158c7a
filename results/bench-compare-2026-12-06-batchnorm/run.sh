cd /work/main
A="--arch preact-resnet18 --batch 64 --iters 8 --warmup 2 --no-halo"
VIGIL_BIN=/tmp/vigil-bn VIGIL_BENCH_ARGS="$A" TORCH_BENCH_ARGS="$A" bash bench/compare-runs.sh 3 > /tmp/bench2/preact28-bn.txt 2>&1
VIGIL_BIN=/tmp/vigil-bn VIGIL_BENCH_ARGS="$A --input-shape 3,32,32" TORCH_BENCH_ARGS="$A --input-shape 3,32,32" bash bench/compare-runs.sh 3 > /tmp/bench2/preact32-bn.txt 2>&1
echo done > /tmp/bench2/done
