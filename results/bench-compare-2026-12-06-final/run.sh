cd /work/main
A="--arch preact-resnet18 --batch 64 --iters 8 --warmup 2 --no-halo"
export VIGIL_BIN=/tmp/bench3/vigil
VIGIL_BENCH_ARGS="--no-halo" TORCH_BENCH_ARGS="--no-halo" bash bench/compare-runs.sh 3 > /tmp/bench3/small-cnn.txt 2>&1
VIGIL_BENCH_ARGS="$A" TORCH_BENCH_ARGS="$A" bash bench/compare-runs.sh 3 > /tmp/bench3/preact-1x28x28.txt 2>&1
VIGIL_BENCH_ARGS="$A --input-shape 3,32,32" TORCH_BENCH_ARGS="$A --input-shape 3,32,32" bash bench/compare-runs.sh 3 > /tmp/bench3/preact-3x32x32.txt 2>&1
echo done > /tmp/bench3/done
