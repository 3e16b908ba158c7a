//! Cross-entropy of rows of logits against one target index per row, forward and backward, in
//! one pass over each row: what a language model's next-token loss spends its time on.
//!
//! burn's `log_softmax` then `gather` walks the `[tokens, vocabulary]` logits (49,152 wide for
//! SmolLM2) five times forward (max, subtract, exp, sum, subtract), each into a fresh buffer,
//! and again backward; here the forward reads each row twice while it is in cache (max, then
//! the sum of exponentials) and keeps one log-sum-exp per row, and the backward writes the
//! gradient `g (softmax(x) - onehot(t))` in one pass, recomputing the exponentials from the
//! kept log-sum-exp. docs/performance.md, "The language models' loss".
//!
//! The exponential is [`exp_nonpositive`], a polynomial that vectorises; it is only ever
//! evaluated at `x - max <= 0`.

use rayon::prelude::*;

use super::exp::exp_nonpositive;

/// A target that marks its row as not counted: its loss and gradient are 0.
pub const IGNORED: u32 = u32::MAX;

/// Rows per rayon task: a row of 49,152 logits is 192 KiB, so one row is already a sizeable
/// piece of work; small vocabularies group more rows.
fn rows_per_task(width: usize) -> usize {
    (16_384 / width.max(1)).max(1)
}

/// Largest value of `row`, and whether it holds a NaN.
#[inline]
fn row_max(row: &[f32]) -> (f32, bool) {
    const LANES: usize = 16;
    let mut max = [f32::NEG_INFINITY; LANES];
    let mut nan = [false; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for k in 0..LANES {
            let x = chunk[k];
            max[k] = if x > max[k] { x } else { max[k] };
            nan[k] |= x.is_nan();
        }
    }
    let mut m = f32::NEG_INFINITY;
    let mut any_nan = false;
    for k in 0..LANES {
        m = if max[k] > m { max[k] } else { m };
        any_nan |= nan[k];
    }
    for &x in tail {
        m = if x > m { x } else { m };
        any_nan |= x.is_nan();
    }
    (m, any_nan)
}

/// `sum_j exp(row_j - max)`, in `f32` lanes over blocks of 256 values and `f64` across blocks.
#[inline]
fn row_exp_sum(row: &[f32], max: f32) -> f64 {
    const LANES: usize = 16;
    let mut total = 0.0f64;
    for block in row.chunks(256) {
        let mut sums = [0.0f32; LANES];
        let chunks = block.chunks_exact(LANES);
        let tail = chunks.remainder();
        for chunk in chunks {
            for k in 0..LANES {
                sums[k] += exp_nonpositive(chunk[k] - max);
            }
        }
        let mut block_sum: f64 = sums.iter().map(|&s| f64::from(s)).sum();
        for &x in tail {
            block_sum += f64::from(exp_nonpositive(x - max));
        }
        total += block_sum;
    }
    total
}

/// The log-sum-exp of one row and its loss against `target` (NaN when the row holds a NaN or
/// an infinity, or is empty: as `log_softmax` then gives NaN).
fn row_forward(row: &[f32], target: u32) -> (f32, f32) {
    let (max, nan) = row_max(row);
    if nan || !max.is_finite() {
        return (f32::NAN, if target == IGNORED { 0.0 } else { f32::NAN });
    }
    let lse = f64::from(max) + row_exp_sum(row, max).ln();
    let loss = if target == IGNORED {
        0.0
    } else {
        (lse - f64::from(row[target as usize])) as f32
    };
    (loss, lse as f32)
}

/// Per row of `logits` (`rows x width`, row-major): the cross-entropy against its target
/// (`log-sum-exp(row) - row[target]`; 0 for [`IGNORED`]) and the row's log-sum-exp, which
/// [`backward`] takes. Targets must be below `width` or [`IGNORED`] (the layer function checks).
pub fn forward(logits: &[f32], width: usize, targets: &[u32]) -> (Vec<f32>, Vec<f32>) {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * width, "logits are rows x width");
    if width == 0 {
        return (vec![f32::NAN; rows], vec![f32::NAN; rows]);
    }
    let per_task = rows_per_task(width);
    let pairs: Vec<(f32, f32)> = logits
        .par_chunks(width * per_task)
        .zip(targets.par_chunks(per_task))
        .flat_map_iter(|(rows, targets)| {
            rows.chunks(width)
                .zip(targets)
                .map(|(row, &t)| row_forward(row, t))
                .collect::<Vec<_>>()
        })
        .collect();
    pairs.into_iter().unzip()
}

/// Gradient of the summed [`forward`] losses weighted by `grad` (one per row) with respect to
/// the logits: `grad_i (exp(x_ij - lse_i) - [j = t_i])`, 0 on ignored rows.
pub fn backward(
    logits: &[f32],
    width: usize,
    targets: &[u32],
    lse: &[f32],
    grad: &[f32],
) -> Vec<f32> {
    let rows = targets.len();
    assert_eq!(logits.len(), rows * width, "logits are rows x width");
    assert_eq!(
        (lse.len(), grad.len()),
        (rows, rows),
        "one lse and grad per row"
    );
    let mut dx = vec![0.0f32; logits.len()];
    if width == 0 {
        return dx;
    }
    let per_task = rows_per_task(width);
    dx.par_chunks_mut(width * per_task)
        .zip(logits.par_chunks(width * per_task))
        .enumerate()
        .for_each(|(task, (out, x))| {
            let first = task * per_task;
            for (r, (out_row, x_row)) in out.chunks_mut(width).zip(x.chunks(width)).enumerate() {
                let i = first + r;
                let (target, g, lse) = (targets[i], grad[i], lse[i]);
                if target == IGNORED {
                    continue;
                }
                for (o, &x) in out_row.iter_mut().zip(x_row) {
                    *o = g * exp_nonpositive(x - lse);
                }
                out_row[target as usize] -= g;
            }
        });
    dx
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The definition in f64: each row's log-sum-exp and its loss.
    fn reference(logits: &[f32], width: usize, targets: &[u32]) -> Vec<(f64, f64)> {
        logits
            .chunks(width)
            .zip(targets)
            .map(|(row, &t)| {
                let max = row
                    .iter()
                    .fold(f64::NEG_INFINITY, |m, &x| m.max(f64::from(x)));
                let lse = max
                    + row
                        .iter()
                        .map(|&x| (f64::from(x) - max).exp())
                        .sum::<f64>()
                        .ln();
                let loss = if t == IGNORED {
                    0.0
                } else {
                    lse - f64::from(row[t as usize])
                };
                (loss, lse)
            })
            .collect()
    }

    fn logits(rows: usize, width: usize, scale: f32) -> Vec<f32> {
        (0..rows * width)
            .map(|i| ((i as f32 * 0.618_034).fract() - 0.5) * scale + (i % 7) as f32 * 0.1)
            .collect()
    }

    #[test]
    fn losses_and_log_sum_exps_match_the_definition() {
        // Widths below, at and past the lanes and blocks; rows of several tasks; large logits.
        for (rows, width, scale) in [(3, 1, 1.0), (5, 7, 4.0), (9, 33, 30.0), (4, 1000, 80.0)] {
            let x = logits(rows, width, scale);
            let targets: Vec<u32> = (0..rows).map(|i| ((i * 5) % width) as u32).collect();
            let (losses, lse) = forward(&x, width, &targets);
            for (i, (loss, l)) in reference(&x, width, &targets).into_iter().enumerate() {
                assert!((f64::from(losses[i]) - loss).abs() < 2e-5 * loss.abs().max(1.0));
                assert!((f64::from(lse[i]) - l).abs() < 2e-5 * l.abs().max(1.0));
            }
        }
    }

    #[test]
    fn ignored_rows_count_nothing_and_bad_rows_give_nan() {
        let width = 4;
        let mut x = logits(4, width, 2.0);
        x[width + 2] = f32::NAN;
        x[2 * width + 1] = f32::INFINITY;
        let targets = [IGNORED, 0, 3, 1];
        let (losses, lse) = forward(&x, width, &targets);
        assert_eq!(losses[0], 0.0);
        assert!(lse[0].is_finite());
        assert!(losses[1].is_nan() && losses[2].is_nan());
        assert!(losses[3].is_finite());
        let dx = backward(&x, width, &targets, &lse, &[1.0; 4]);
        assert!(dx[..width].iter().all(|&v| v == 0.0));
    }

    #[test]
    fn the_gradient_is_softmax_minus_onehot() {
        for (rows, width) in [(2, 1), (5, 7), (6, 37), (3, 600)] {
            let x = logits(rows, width, 9.0);
            let targets: Vec<u32> = (0..rows)
                .map(|i| {
                    if i == 1 {
                        IGNORED
                    } else {
                        ((i * 3) % width) as u32
                    }
                })
                .collect();
            let grad: Vec<f32> = (0..rows).map(|i| 0.5 + i as f32 * 0.25).collect();
            let (_, lse) = forward(&x, width, &targets);
            let dx = backward(&x, width, &targets, &lse, &grad);
            let want = reference(&x, width, &targets);
            for i in 0..rows {
                for j in 0..width {
                    let expected = if targets[i] == IGNORED {
                        0.0
                    } else {
                        let p = (f64::from(x[i * width + j]) - want[i].1).exp();
                        f64::from(grad[i]) * (p - f64::from(u8::from(j == targets[i] as usize)))
                    };
                    let got = f64::from(dx[i * width + j]);
                    assert!(
                        (got - expected).abs() < 1e-6,
                        "{i} {j}: {got} vs {expected}"
                    );
                }
            }
        }
    }
}
