cd /work/main
A="--arch preact-resnet18 --batch 64 --iters 8 --warmup 2 --no-halo"
VIGIL_BIN=/tmp/vigil-new VIGIL_BENCH_ARGS="$A" TORCH_BENCH_ARGS="$A" bash bench/compare-runs.sh 3 > /tmp/bench/preact28-new.txt 2>&1
VIGIL_BIN=/tmp/vigil-old VIGIL_BENCH_ARGS="$A" TORCH_BENCH_ARGS="$A" bash bench/compare-runs.sh 3 > /tmp/bench/preact28-old.txt 2>&1
VIGIL_BIN=/tmp/vigil-new VIGIL_BENCH_ARGS="$A --input-shape 3,32,32" TORCH_BENCH_ARGS="$A --input-shape 3,32,32" bash bench/compare-runs.sh 3 > /tmp/bench/preact32-new.txt 2>&1
VIGIL_BIN=/tmp/vigil-new VIGIL_BENCH_ARGS="--no-halo" TORCH_BENCH_ARGS="--no-halo" bash bench/compare-runs.sh 3 > /tmp/bench/smallcnn-new.txt 2>&1
VIGIL_BIN=/tmp/vigil-old VIGIL_BENCH_ARGS="--no-halo" TORCH_BENCH_ARGS="--no-halo" bash bench/compare-runs.sh 3 > /tmp/bench/smallcnn-old.txt 2>&1
echo done > /tmp/bench/done
