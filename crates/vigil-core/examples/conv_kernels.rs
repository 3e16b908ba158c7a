//! Achieved GFLOP/s of vigil's convolution kernels on the 3x3 layers of PreAct-ResNet-18
//! (width 64; the first convolution of each stage at its stride-1 shape), forward and both
//! backward passes, one gemm per sample against several samples per gemm
//! ([`conv2d::group_size`]) and against Winograd's F(2x2, 3x3) and F(4x4, 3x3) ([`winograd`],
//! what the layers run). Winograd's rate is the direct convolution's flops over its time
//! (effective GFLOP/s). A kernel benchmark, not a test: run it on an idle machine.
//!
//!     cargo run --release -p vigil-core --example conv_kernels -- [HW] [BATCH] [REPS]
//!
//! HW is the input's side (28: Fashion-MNIST, 32: CIFAR), default 28; BATCH 64; REPS 5 (the
//! median is printed). Threads: rayon's default, or RAYON_NUM_THREADS. The last line is the gemm
//! crate's rate on one 1024x1024x1024 product, a practical peak for this machine.

use std::time::Instant;

use vigil_core::kernels::conv2d::{
    self, Conv2dGeometry, backward_input_grouped, backward_weight_grouped, forward_grouped,
};
use vigil_core::kernels::winograd;

fn median_seconds(reps: usize, mut run: impl FnMut()) -> f64 {
    run();
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let start = Instant::now();
            run();
            start.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

fn main() {
    let arg = |i: usize, default: usize| {
        std::env::args()
            .nth(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or(default)
    };
    let (hw, batch, reps) = (arg(1, 28), arg(2, 64), arg(3, 5).max(1));
    println!(
        "PreAct-ResNet-18 3x3 layers, {hw}x{hw} input, batch {batch}, {} threads; GFLOP/s (median of {reps})",
        rayon::current_num_threads()
    );
    println!("layer (input)        samples/gemm  forward  backward-input  backward-weight");
    let row = |layer: &str, kind: &str, rates: [f64; 3]| {
        println!(
            "{layer:<20} {kind:>13} {:>8.1} {:>15.1} {:>16.1}",
            rates[0], rates[1], rates[2]
        );
    };
    let mut side = hw;
    for (stage, channels) in [64usize, 128, 256, 512].into_iter().enumerate() {
        if stage > 0 {
            side = side.div_ceil(2);
        }
        let g = Conv2dGeometry::new(
            [batch, channels, side, side],
            [channels, channels, 3, 3],
            [1, 1],
            [1, 1],
        )
        .expect("valid layer");
        let x: Vec<f32> = (0..batch * channels * side * side)
            .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
            .collect();
        let w: Vec<f32> = (0..channels * channels * 9)
            .map(|i| ((i * 104729) % 1000) as f32 / 50_000.0 - 0.01)
            .collect();
        let dout = forward_grouped(&g, &x, &w, 1);
        let flops = 2.0 * (batch * channels * side * side * channels * 9) as f64;
        let gflops = |seconds: f64| flops / seconds / 1e9;
        let mut groups = vec![1, conv2d::group_size(&g)];
        groups.dedup();
        for group in groups {
            let fwd = median_seconds(reps, || {
                std::hint::black_box(forward_grouped(&g, &x, &w, group));
            });
            let bin = median_seconds(reps, || {
                std::hint::black_box(backward_input_grouped(&g, &w, &dout, group));
            });
            let bw = median_seconds(reps, || {
                std::hint::black_box(backward_weight_grouped(&g, &x, &dout, group));
            });
            let layer = format!("{channels}x{side}x{side}");
            row(&layer, &group.to_string(), [fwd, bin, bw].map(gflops));
        }
        // Weight gradients run with 2x2 tiles in both rows (F(4x4, 3x3) has no weight pass).
        let bw = median_seconds(reps, || {
            std::hint::black_box(winograd::backward_weight(&g, &x, &dout));
        });
        for (variant, kind) in [
            (winograd::Variant::F2x2, "winograd 2x2"),
            (winograd::Variant::F4x4, "winograd 4x4"),
        ] {
            let fwd = median_seconds(reps, || {
                std::hint::black_box(winograd::forward_with(variant, &g, &x, &w));
            });
            let bin = median_seconds(reps, || {
                std::hint::black_box(winograd::backward_input_with(variant, &g, &w, &dout));
            });
            row(
                &format!("{channels}x{side}x{side}"),
                kind,
                [fwd, bin, bw].map(gflops),
            );
        }
    }
    println!(
        "gemm crate, one 1024x1024x1024 product on every thread: {:.1} GFLOP/s (a practical peak)",
        gemm_peak(reps)
    );
}

/// The gemm crate's rate on one large square product, split over rayon's threads: the ceiling
/// the kernels' gemms work under on this machine, beside which `vigil throughput`'s GFLOP/s
/// can be read.
fn gemm_peak(reps: usize) -> f64 {
    let n = 1024;
    let a: Vec<f32> = (0..n * n)
        .map(|i| ((i * 7919) % 1000) as f32 / 1000.0)
        .collect();
    let b: Vec<f32> = (0..n * n)
        .map(|i| ((i * 104729) % 1000) as f32 / 1000.0)
        .collect();
    let mut c = vec![0.0f32; n * n];
    let seconds = median_seconds(reps, || {
        // SAFETY: the three buffers hold n x n floats each, row-major (row stride n, column
        // stride 1), and `c` is not read (`read_dst` false).
        unsafe {
            gemm::gemm(
                n,
                n,
                n,
                c.as_mut_ptr(),
                1,
                n as isize,
                false,
                a.as_ptr(),
                1,
                n as isize,
                b.as_ptr(),
                1,
                n as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::Rayon(0),
            );
        }
        std::hint::black_box(&c);
    });
    2.0 * (n * n * n) as f64 / seconds / 1e9
}
