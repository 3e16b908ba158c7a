//! RMSNorm over each row's last axis, `y = x r gamma` with `r = 1 / sqrt(mean(x^2) + eps)`,
//! forward and backward in one pass over each row: the norm before every attention and
//! feed-forward of a Llama block, and the final one.
//!
//! burn's `RmsNorm` runs it as six element-wise operations (square, mean, add, sqrt, divide,
//! multiply), each into a fresh buffer and each its own parallel region, and its autodiff walks
//! them again backward; on the tiny LM (rows of 128 values) each lasts tens of microseconds, so
//! the hand-offs between threads, not the arithmetic, set its cost (docs/performance.md, "The
//! tiny LM"). Here the forward reads a row twice while it is in cache (the sum of squares, then
//! the output) and keeps `r`; the backward reads `x`, `gamma` and the incoming gradient once to
//! write `dx` and this task's share of `dgamma`.
//!
//! Backward, with `g` the output's gradient and `d` the width:
//! `dx_j = r (gamma_j g_j - x_j r^2 / d sum_i gamma_i g_i x_i)`, `dgamma_j = sum_rows g_j x_j r`.
//! `dgamma`'s rows are summed in fixed groups and the groups in order, so the result does not
//! depend on the number of threads.

use rayon::prelude::*;

/// Rows per rayon task: about 16,384 values, enough to amortise a task.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// `sum(x^2)` of one row, in sixteen `f32` lanes (they vectorise) and `f64` across them.
#[inline]
fn sum_of_squares(row: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            sums[k] += chunk[k] * chunk[k];
        }
    }
    let mut total: f64 = sums.iter().map(|&s| f64::from(s)).sum();
    for &x in tail {
        total += f64::from(x * x);
    }
    total
}

/// `sum(a b c)` of three rows of one length, as [`sum_of_squares`] sums.
#[inline]
fn triple_dot(a: &[f32], b: &[f32], c: &[f32]) -> f64 {
    const LANES: usize = 16;
    let mut sums = [0.0f32; LANES];
    let n = a.len() / LANES * LANES;
    for ((a, b), c) in a[..n]
        .chunks_exact(LANES)
        .zip(b[..n].chunks_exact(LANES))
        .zip(c[..n].chunks_exact(LANES))
    {
        for k in 0..LANES {
            sums[k] += a[k] * b[k] * c[k];
        }
    }
    let mut total: f64 = sums.iter().map(|&s| f64::from(s)).sum();
    for ((&a, &b), &c) in a[n..].iter().zip(&b[n..]).zip(&c[n..]) {
        total += f64::from(a * b * c);
    }
    total
}

/// The normalised rows of `x` (`rows x width`, `width = gamma.len()`) scaled by `gamma`, and
/// each row's `r = 1 / sqrt(mean(x^2) + eps)`, which [`backward`] takes.
pub fn forward(x: &[f32], gamma: &[f32], eps: f64) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    assert!(width > 0, "rows have a width");
    assert_eq!(x.len() % width, 0, "x is rows x width");
    let rows = x.len() / width;
    let per_task = rows_per_task(width);
    let mut out = vec![0.0f32; x.len()];
    let mut inverse = vec![0.0f32; rows];
    out.par_chunks_mut(width * per_task)
        .zip(inverse.par_chunks_mut(per_task))
        .zip(x.par_chunks(width * per_task))
        .for_each(|((out, inverse), x)| {
            for ((out, r), x) in out
                .chunks_mut(width)
                .zip(inverse.iter_mut())
                .zip(x.chunks(width))
            {
                *r = (1.0 / (sum_of_squares(x) / width as f64 + eps).sqrt()) as f32;
                for ((o, &v), &g) in out.iter_mut().zip(x).zip(gamma) {
                    *o = v * *r * g;
                }
            }
        });
    (out, inverse)
}

/// Gradients of `sum(grad * forward(x, gamma))` with respect to `x` and `gamma`, from the `r`
/// that [`forward`] returned.
pub fn backward(x: &[f32], gamma: &[f32], inverse: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    assert!(width > 0, "rows have a width");
    assert_eq!(x.len(), inverse.len() * width, "x is rows x width");
    assert_eq!(grad.len(), x.len(), "the gradient has x's shape");
    let per_task = rows_per_task(width);
    let mut dx = vec![0.0f32; x.len()];
    let partials: Vec<Vec<f32>> = dx
        .par_chunks_mut(width * per_task)
        .zip(x.par_chunks(width * per_task))
        .zip(grad.par_chunks(width * per_task))
        .zip(inverse.par_chunks(per_task))
        .map(|(((dx, x), grad), inverse)| {
            let mut d_gamma = vec![0.0f32; width];
            for (((dx, x), g), &r) in dx
                .chunks_mut(width)
                .zip(x.chunks(width))
                .zip(grad.chunks(width))
                .zip(inverse)
            {
                let dot = triple_dot(gamma, g, x);
                let c = (f64::from(r).powi(3) * dot / width as f64) as f32;
                for ((((dx, &x), &g), &w), dw) in dx
                    .iter_mut()
                    .zip(x)
                    .zip(g)
                    .zip(gamma)
                    .zip(d_gamma.iter_mut())
                {
                    *dx = r * w * g - c * x;
                    *dw += g * x * r;
                }
            }
            d_gamma
        })
        .collect();
    let mut d_gamma = vec![0.0f32; width];
    for partial in partials {
        for (sum, p) in d_gamma.iter_mut().zip(partial) {
            *sum += p;
        }
    }
    (dx, d_gamma)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        super::super::pseudo_random(n, seed)
    }

    /// The forward pass and both gradients of one row set in `f64`, by the definition.
    fn reference(
        x: &[f32],
        gamma: &[f32],
        grad: &[f32],
        eps: f64,
    ) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
        let d = gamma.len();
        let mut out = vec![0.0; x.len()];
        let mut dx = vec![0.0; x.len()];
        let mut dgamma = vec![0.0; d];
        for row in 0..x.len() / d {
            let xs: Vec<f64> = x[row * d..][..d].iter().map(|&v| f64::from(v)).collect();
            let gs: Vec<f64> = grad[row * d..][..d].iter().map(|&v| f64::from(v)).collect();
            let r = 1.0 / (xs.iter().map(|v| v * v).sum::<f64>() / d as f64 + eps).sqrt();
            let dot: f64 = (0..d).map(|i| f64::from(gamma[i]) * gs[i] * xs[i]).sum();
            for j in 0..d {
                let w = f64::from(gamma[j]);
                out[row * d + j] = xs[j] * r * w;
                dx[row * d + j] = r * (w * gs[j] - xs[j] * r * r / d as f64 * dot);
                dgamma[j] += gs[j] * xs[j] * r;
            }
        }
        (out, dx, dgamma)
    }

    #[test]
    fn forward_and_gradients_match_the_definition_in_f64() {
        // Widths below, at and past the lanes; row counts below and past a task.
        for (rows, width) in [(1, 1), (3, 7), (5, 16), (9, 33), (300, 128), (40, 576)] {
            let n = rows * width;
            let x: Vec<f32> = values(n, 1).iter().map(|v| v * 3.0).collect();
            let gamma: Vec<f32> = values(width, 2).iter().map(|v| v + 1.0).collect();
            let grad = values(n, 3);
            let eps = 1e-5;
            let (out, inverse) = forward(&x, &gamma, eps);
            let (dx, dgamma) = backward(&x, &gamma, &inverse, &grad);
            let (want_out, want_dx, want_dgamma) = reference(&x, &gamma, &grad, eps);
            let close = |got: &[f32], want: &[f64], what: &str, scale: f64| {
                for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (f64::from(g) - w).abs() <= 1e-5 * scale.max(w.abs()),
                        "{rows} x {width}, {what} {i}: {g} vs {w}"
                    );
                }
            };
            close(&out, &want_out, "output", 1.0);
            close(&dx, &want_dx, "dx", 1.0);
            close(&dgamma, &want_dgamma, "dgamma", rows as f64);
        }
    }

    #[test]
    fn a_zero_row_gives_zero_and_a_nan_row_gives_nan() {
        let gamma = [1.0f32, 2.0, 3.0];
        let (out, inverse) = forward(&[0.0, 0.0, 0.0, 1.0, f32::NAN, 2.0], &gamma, 1e-6);
        assert_eq!(&out[..3], &[0.0, 0.0, 0.0]);
        assert!(inverse[0].is_finite());
        assert!(out[3..].iter().all(|v| v.is_nan()));
    }

    #[test]
    fn gamma_gradient_does_not_depend_on_the_thread_count() {
        let (rows, width) = (700, 64);
        let x = values(rows * width, 4);
        let gamma = values(width, 5);
        let grad = values(rows * width, 6);
        let (_, inverse) = forward(&x, &gamma, 1e-5);
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| backward(&x, &gamma, &inverse, &grad))
        };
        assert_eq!(run(1), run(3));
    }
}
