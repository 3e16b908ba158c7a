//! Batch normalisation over `[n, c, h, w]` followed by an optional ReLU, in one pass forward
//! and two backward, for the ResNets' `relu(bn(x))`.
//!
//! burn computes batch normalisation out of element-wise operations: in eval mode a
//! subtraction, a division, a multiplication and an addition, each over the whole activation,
//! then the ReLU; with batch statistics also two transposed copies for the means, and about ten
//! passes backward. On PreAct-ResNet-18 those passes and copies took 11% of the time
//! (docs/performance.md). Here the statistics are per-channel sums, eight `f32` lanes per plane
//! added up in `f64`, in an order fixed by the shapes (so results do not depend on the thread
//! count), and each pass reads and writes every value once. The outputs agree with burn's operations to float rounding (tests in
//! `kernels::tests`), not bit for bit: `(x - mean) * (gamma / std) + beta` rounds once less.

use rayon::prelude::*;

/// Shape of the normalised tensor: `batch` samples of `channels` planes of `plane` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BnGeometry {
    /// Samples.
    pub batch: usize,
    /// Channels (one mean, variance, scale and shift each).
    pub channels: usize,
    /// Values per channel and sample (`h w`).
    pub plane: usize,
}

impl BnGeometry {
    /// Values per channel over the batch: what the statistics average over.
    fn count(&self) -> usize {
        self.batch * self.plane
    }

    /// Planes per parallel job: enough values that a job outweighs its scheduling.
    fn planes_per_job(&self) -> usize {
        (4096 / self.plane.max(1)).max(1)
    }
}

/// Sum of `f(value)` over `values`: eight running `f32` sums (the compiler keeps them in
/// vector registers), added up in `f64`, in an order fixed by the length alone.
#[inline(always)]
fn sum8(values: &[f32], f: impl Fn(f32) -> f32) -> f64 {
    let mut lanes = [0.0f32; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    let total: f64 = lanes.iter().map(|&l| f64::from(l)).sum();
    rest.iter().fold(total, |t, &v| t + f64::from(f(v)))
}

/// Channel `c`'s planes, sample by sample.
fn channel_planes<'a>(
    g: &'a BnGeometry,
    x: &'a [f32],
    c: usize,
) -> impl Iterator<Item = &'a [f32]> + 'a {
    (0..g.batch).map(move |s| &x[(s * g.channels + c) * g.plane..][..g.plane])
}

/// Each channel's mean and biased variance over the batch (`[channels]` each).
pub fn batch_stats(g: &BnGeometry, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(x.len(), g.batch * g.channels * g.plane, "batch_stats: size");
    let count = g.count().max(1) as f64;
    (0..g.channels)
        .into_par_iter()
        .map(|c| {
            let mean = channel_planes(g, x, c)
                .map(|plane| sum8(plane, |v| v))
                .sum::<f64>()
                / count;
            let m = mean as f32;
            let var = channel_planes(g, x, c)
                .map(|plane| sum8(plane, |v| (v - m) * (v - m)))
                .sum::<f64>()
                / count;
            (m, var as f32)
        })
        .unzip()
}

/// `1 / sqrt(variance + epsilon)` per channel.
pub fn inverse_std(variance: &[f32], epsilon: f64) -> Vec<f32> {
    variance
        .iter()
        .map(|&v| (1.0 / (f64::from(v) + epsilon).sqrt()) as f32)
        .collect()
}

/// `(x - mean) * gamma * inv_std + beta` per channel, then `max(., 0)` if `relu`.
pub fn forward(
    g: &BnGeometry,
    x: &[f32],
    [gamma, beta, mean, inv_std]: [&[f32]; 4],
    relu: bool,
) -> Vec<f32> {
    assert_eq!(x.len(), g.batch * g.channels * g.plane, "batch norm: size");
    let scale: Vec<f32> = gamma.iter().zip(inv_std).map(|(a, b)| a * b).collect();
    let mut out = vec![0.0f32; x.len()];
    out.par_chunks_mut(g.plane.max(1))
        .zip(x.par_chunks(g.plane.max(1)))
        .enumerate()
        .with_min_len(g.planes_per_job())
        .for_each(|(i, (out, x))| {
            let c = i % g.channels;
            let (m, a, b) = (mean[c], scale[c], beta[c]);
            if relu {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = ((v - m) * a + b).max(0.0);
                }
            } else {
                for (o, &v) in out.iter_mut().zip(x) {
                    *o = (v - m) * a + b;
                }
            }
        });
    out
}

/// Gradients of [`forward`] with respect to `x`, `gamma` and `beta`, given its `output` (whose
/// positive values are where the ReLU passed the gradient) and the output's gradient `dy`.
/// With `batch_stats`, the mean and variance were the batch's own, and the input gradient
/// includes their dependence on `x`; otherwise they were constants (eval mode). Without
/// `params` (gamma and beta not differentiated, as in an attack's input gradient) their
/// gradients are left zero, and eval mode needs a single pass.
#[allow(clippy::too_many_arguments)] // the operation's operands, as burn's own signature has them
pub fn backward(
    g: &BnGeometry,
    x: &[f32],
    [gamma, mean, inv_std]: [&[f32]; 3],
    output: &[f32],
    dy: &[f32],
    relu: bool,
    [batch_stats, params]: [bool; 2],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let len = g.batch * g.channels * g.plane;
    assert!(
        x.len() == len && output.len() == len && dy.len() == len,
        "batch norm backward: sizes"
    );
    // The gradient reaching the normalisation: zero where the ReLU cut (burn's rule, so a NaN
    // output passes it).
    let passed = |o: f32, d: f32| if relu && o <= 0.0 { 0.0 } else { d };
    // Per channel: the sum of that gradient, and of it times `x - mean`.
    let (dbeta, dxm): (Vec<f64>, Vec<f64>) = if batch_stats || params {
        (0..g.channels)
            .into_par_iter()
            .map(|c| {
                let m = mean[c];
                let mut sums = (0.0f64, 0.0f64);
                let planes = channel_planes(g, x, c)
                    .zip(channel_planes(g, output, c))
                    .zip(channel_planes(g, dy, c));
                for ((xp, op), dp) in planes {
                    let (mut d_lanes, mut dx_lanes) = ([0.0f32; 8], [0.0f32; 8]);
                    let eights = xp
                        .chunks_exact(8)
                        .zip(op.chunks_exact(8))
                        .zip(dp.chunks_exact(8));
                    for ((xc, oc), dc) in eights {
                        for l in 0..8 {
                            let d = passed(oc[l], dc[l]);
                            d_lanes[l] += d;
                            dx_lanes[l] += d * (xc[l] - m);
                        }
                    }
                    let done = xp.len() / 8 * 8;
                    for k in done..xp.len() {
                        let d = passed(op[k], dp[k]);
                        sums.0 += f64::from(d);
                        sums.1 += f64::from(d * (xp[k] - m));
                    }
                    sums.0 += d_lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
                    sums.1 += dx_lanes.iter().map(|&v| f64::from(v)).sum::<f64>();
                }
                sums
            })
            .unzip()
    } else {
        (vec![0.0; g.channels], vec![0.0; g.channels])
    };
    let dgamma: Vec<f64> = dxm
        .iter()
        .zip(inv_std)
        .map(|(s, &inv)| s * f64::from(inv))
        .collect();
    let count = g.count().max(1) as f64;
    let plane = g.plane.max(1);
    let mut dx = vec![0.0f32; len];
    dx.par_chunks_mut(plane)
        .zip(x.par_chunks(plane))
        .zip(output.par_chunks(plane).zip(dy.par_chunks(plane)))
        .enumerate()
        .with_min_len(g.planes_per_job())
        .for_each(|(p, ((dx, xp), (op, dp)))| {
            let c = p % g.channels;
            let scale = gamma[c] * inv_std[c];
            if batch_stats {
                // dx = scale (d - mean(d) - xhat mean(d xhat)), xhat = (x - mean) inv_std.
                let mean_d = (dbeta[c] / count) as f32;
                let slope = (dgamma[c] / count) as f32 * inv_std[c];
                let m = mean[c];
                for (((out, &xv), &o), &d) in dx.iter_mut().zip(xp).zip(op).zip(dp) {
                    *out = scale * (passed(o, d) - mean_d - (xv - m) * slope);
                }
            } else {
                for ((out, &o), &d) in dx.iter_mut().zip(op).zip(dp) {
                    *out = scale * passed(o, d);
                }
            }
        });
    let narrow = |v: Vec<f64>| v.into_iter().map(|s| s as f32).collect();
    (dx, narrow(dgamma), narrow(dbeta))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernels::pseudo_random;

    /// Forward and all three gradients against the definition in f64 (the gradient of
    /// `sum(w * y)` by central differences in f64), in both modes, with and without ReLU.
    #[test]
    fn forward_and_gradients_equal_the_definition() {
        let g = BnGeometry {
            batch: 3,
            channels: 2,
            plane: 5,
        };
        let len = 30;
        let x: Vec<f64> = pseudo_random(len, 11)
            .iter()
            .map(|&v| f64::from(v) * 2.0 + 0.3)
            .collect();
        let w: Vec<f64> = pseudo_random(len, 12)
            .iter()
            .map(|&v| f64::from(v))
            .collect();
        let gamma = [1.3f64, -0.7];
        let beta = [0.2f64, -0.1];
        let running = ([0.1f64, -0.2], [0.8f64, 1.5]);
        let eps = 1e-5;
        for batch_mode in [true, false] {
            for relu in [false, true] {
                // y(x, gamma, beta) in f64 from the definition.
                let define = |x: &[f64], gamma: &[f64; 2], beta: &[f64; 2]| -> Vec<f64> {
                    let mut y = vec![0.0; len];
                    for c in 0..2 {
                        let idx: Vec<usize> = (0..3)
                            .flat_map(|s| (0..5).map(move |k| (s * 2 + c) * 5 + k))
                            .collect();
                        let (mean, var) = if batch_mode {
                            let mean = idx.iter().map(|&i| x[i]).sum::<f64>() / 15.0;
                            let var =
                                idx.iter().map(|&i| (x[i] - mean).powi(2)).sum::<f64>() / 15.0;
                            (mean, var)
                        } else {
                            (running.0[c], running.1[c])
                        };
                        for &i in &idx {
                            let v = (x[i] - mean) / (var + eps).sqrt() * gamma[c] + beta[c];
                            y[i] = if relu { v.max(0.0) } else { v };
                        }
                    }
                    y
                };
                let objective = |x: &[f64], gamma: &[f64; 2], beta: &[f64; 2]| -> f64 {
                    define(x, gamma, beta)
                        .iter()
                        .zip(&w)
                        .map(|(a, b)| a * b)
                        .sum()
                };
                let h = 1e-6;
                let dx_want: Vec<f64> = (0..len)
                    .map(|i| {
                        let (mut up, mut down) = (x.clone(), x.clone());
                        up[i] += h;
                        down[i] -= h;
                        (objective(&up, &gamma, &beta) - objective(&down, &gamma, &beta))
                            / (2.0 * h)
                    })
                    .collect();
                let param_grad = |which: usize| -> Vec<f64> {
                    (0..2)
                        .map(|c| {
                            let (mut gu, mut gd, mut bu, mut bd) = (gamma, gamma, beta, beta);
                            if which == 0 {
                                gu[c] += h;
                                gd[c] -= h;
                            } else {
                                bu[c] += h;
                                bd[c] -= h;
                            }
                            (objective(&x, &gu, &bu) - objective(&x, &gd, &bd)) / (2.0 * h)
                        })
                        .collect()
                };
                let y_want = define(&x, &gamma, &beta);

                let x32: Vec<f32> = x.iter().map(|&v| v as f32).collect();
                let w32: Vec<f32> = w.iter().map(|&v| v as f32).collect();
                let g32 = gamma.map(|v| v as f32);
                let b32 = beta.map(|v| v as f32);
                let (mean, var) = if batch_mode {
                    batch_stats(&g, &x32)
                } else {
                    (
                        running.0.map(|v| v as f32).to_vec(),
                        running.1.map(|v| v as f32).to_vec(),
                    )
                };
                let inv = inverse_std(&var, eps);
                let y = forward(&g, &x32, [&g32, &b32, &mean, &inv], relu);
                let (dx, dgamma, dbeta) = backward(
                    &g,
                    &x32,
                    [&g32, &mean, &inv],
                    &y,
                    &w32,
                    relu,
                    [batch_mode, true],
                );
                let close = |got: &[f32], want: &[f64], what: &str| {
                    for (a, b) in got.iter().zip(want) {
                        assert!(
                            (f64::from(*a) - b).abs() < 2e-4 * (1.0 + b.abs()),
                            "{what} (batch stats {batch_mode}, relu {relu}): {got:?} vs {want:?}"
                        );
                    }
                };
                let (dx_only, _, _) = backward(
                    &g,
                    &x32,
                    [&g32, &mean, &inv],
                    &y,
                    &w32,
                    relu,
                    [batch_mode, false],
                );
                assert_eq!(
                    dx_only, dx,
                    "the input gradient does not depend on `params`"
                );
                close(&y, &y_want, "output");
                close(&dx, &dx_want, "input gradient");
                close(&dgamma, &param_grad(0), "gamma gradient");
                close(&dbeta, &param_grad(1), "beta gradient");
            }
        }
    }
}
