//! Causal attention's softmax, `softmax(s / divisor)` over the keys a query may see (key `j`
//! for query `i` when `j <= i`; 0 beyond), forward and backward in one pass over each row.
//!
//! burn ran it as a division by the scale, a mask filled with minus infinity (the mask itself
//! built on the host each call) and a softmax of five operations (max, subtract, `expf`, sum,
//! divide), each a fresh buffer and a parallel region, with as many again backward; on the tiny
//! LM those hand-offs, not the arithmetic, set the cost (docs/performance.md, "The tiny LM").
//! Here each row is read twice forward while it is in cache (its maximum, then the
//! exponentials, normalised in place), keys past the query are written as 0 without being
//! read, and the backward `ds_j = p_j (g_j - sum_k g_k p_k) / divisor` reads the output and
//! its gradient once.
//!
//! Rows are `[.., groups x queries, keys]`: query heads that share a key/value head are stacked
//! along the rows (see `lm::llama`), so row `r` is query `r mod queries`, which sits at key
//! position `keys - queries + r mod queries` (the last `queries` of `keys` positions, as after
//! a cache of earlier ones).

use rayon::prelude::*;

use super::exp::exp_nonpositive;

/// Rows per rayon task: about 16,384 values, enough to amortise a task.
fn rows_per_task(keys: usize) -> usize {
    (16_384 / keys.max(1)).max(1)
}

/// Keys that row `row` may see.
#[inline]
fn visible(row: usize, queries: usize, keys: usize) -> usize {
    keys - queries + row % queries + 1
}

/// The causal softmax of each row of `scores` (`rows x keys`, rows in groups of `queries`, as
/// the module doc says) divided by `divisor`. As burn's softmax: a score of minus infinity
/// weighs 0, and a row whose visible scores hold a NaN or plus infinity, or are all minus
/// infinity, is NaN on its visible keys.
pub fn forward(scores: &[f32], queries: usize, keys: usize, divisor: f32) -> Vec<f32> {
    assert!(
        (1..=keys).contains(&queries),
        "1 to {keys} queries, got {queries}"
    );
    assert_eq!(scores.len() % keys, 0, "scores are rows x keys");
    let per_task = rows_per_task(keys);
    let mut out = vec![0.0f32; scores.len()];
    out.par_chunks_mut(keys * per_task)
        .zip(scores.par_chunks(keys * per_task))
        .enumerate()
        .for_each(|(task, (out, scores))| {
            let first_row = task * per_task;
            for (k, (out, row)) in out.chunks_mut(keys).zip(scores.chunks(keys)).enumerate() {
                let seen = visible(first_row + k, queries, keys);
                row_forward(&row[..seen], &mut out[..seen], divisor);
            }
        });
    out
}

/// Lanes of the row loops: sixteen independent maxima and sums, which the compiler keeps in
/// vector registers (a single running `f32` sum or maximum cannot be vectorised without
/// reordering it).
const LANES: usize = 16;

/// One row's visible part: `out = softmax(row / divisor)`.
#[inline]
fn row_forward(row: &[f32], out: &mut [f32], divisor: f32) {
    // The scaled scores, their maximum, and whether any is NaN or plus infinity.
    let whole = row.len() / LANES * LANES;
    let mut maxima = [f32::NEG_INFINITY; LANES];
    let mut bad = [false; LANES];
    for (out, row) in out[..whole]
        .chunks_exact_mut(LANES)
        .zip(row[..whole].chunks_exact(LANES))
    {
        for k in 0..LANES {
            let t = row[k] / divisor;
            out[k] = t;
            maxima[k] = if t > maxima[k] { t } else { maxima[k] };
            bad[k] |= t.is_nan() | (t == f32::INFINITY);
        }
    }
    let mut max = f32::NEG_INFINITY;
    let mut any_bad = bad.iter().any(|&b| b);
    for m in maxima {
        max = if m > max { m } else { max };
    }
    for (o, &s) in out[whole..].iter_mut().zip(&row[whole..]) {
        let t = s / divisor;
        *o = t;
        max = if t > max { t } else { max };
        any_bad |= t.is_nan() | (t == f32::INFINITY);
    }
    if any_bad || max == f32::NEG_INFINITY {
        out.fill(f32::NAN);
        return;
    }
    // A score of minus infinity weighs exactly 0, as `exp` gives it (the polynomial bottoms
    // out near 1e-38).
    let weight = |t: f32| {
        let shifted = t - max;
        let e = exp_nonpositive(shifted);
        if shifted == f32::NEG_INFINITY { 0.0 } else { e }
    };
    let mut sums = [0.0f32; LANES];
    for out in out[..whole].chunks_exact_mut(LANES) {
        for k in 0..LANES {
            out[k] = weight(out[k]);
            sums[k] += out[k];
        }
    }
    let mut sum: f32 = sums.iter().sum();
    for o in out[whole..].iter_mut() {
        *o = weight(*o);
        sum += *o;
    }
    let inverse = 1.0 / sum;
    for o in out.iter_mut() {
        *o *= inverse;
    }
}

/// Gradient of `sum(grad * forward(s))` with respect to the scores `s`, from the forward's
/// output `probs`: `p_j (g_j - sum_k g_k p_k) / divisor` on the visible keys, 0 beyond.
pub fn backward(
    probs: &[f32],
    grad: &[f32],
    queries: usize,
    keys: usize,
    divisor: f32,
) -> Vec<f32> {
    assert!(
        (1..=keys).contains(&queries),
        "1 to {keys} queries, got {queries}"
    );
    assert_eq!(probs.len() % keys, 0, "probabilities are rows x keys");
    assert_eq!(
        grad.len(),
        probs.len(),
        "the gradient has the output's shape"
    );
    let per_task = rows_per_task(keys);
    let mut ds = vec![0.0f32; probs.len()];
    ds.par_chunks_mut(keys * per_task)
        .zip(probs.par_chunks(keys * per_task))
        .zip(grad.par_chunks(keys * per_task))
        .enumerate()
        .for_each(|(task, ((ds, probs), grad))| {
            let first_row = task * per_task;
            for (k, ((ds, p), g)) in ds
                .chunks_mut(keys)
                .zip(probs.chunks(keys))
                .zip(grad.chunks(keys))
                .enumerate()
            {
                let seen = visible(first_row + k, queries, keys);
                let (p, g) = (&p[..seen], &g[..seen]);
                let dot: f32 = p.iter().zip(g).map(|(&p, &g)| p * g).sum();
                for ((d, &p), &g) in ds[..seen].iter_mut().zip(p).zip(g) {
                    *d = p * (g - dot) / divisor;
                }
            }
        });
    ds
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(n: usize, seed: u64) -> Vec<f32> {
        super::super::pseudo_random(n, seed)
            .iter()
            .map(|v| v * 6.0)
            .collect()
    }

    /// Output and score gradient in `f64` by the definition: a row's visible scores divided,
    /// exponentiated against their maximum, normalised; the softmax's Jacobian applied to `grad`.
    fn reference(
        scores: &[f32],
        grad: &[f32],
        queries: usize,
        keys: usize,
        divisor: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        let mut out = vec![0.0; scores.len()];
        let mut ds = vec![0.0; scores.len()];
        for row in 0..scores.len() / keys {
            let i = keys - queries + row % queries;
            let t: Vec<f64> = (0..=i)
                .map(|j| f64::from(scores[row * keys + j]) / divisor)
                .collect();
            let max = t.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
            let e: Vec<f64> = t.iter().map(|v| (v - max).exp()).collect();
            let sum: f64 = e.iter().sum();
            let p: Vec<f64> = e.iter().map(|v| v / sum).collect();
            let dot: f64 = (0..=i)
                .map(|j| p[j] * f64::from(grad[row * keys + j]))
                .sum();
            for j in 0..=i {
                out[row * keys + j] = p[j];
                ds[row * keys + j] = p[j] * (f64::from(grad[row * keys + j]) - dot) / divisor;
            }
        }
        (out, ds)
    }

    #[test]
    fn forward_and_gradient_match_the_definition_in_f64() {
        // (matrices x groups, queries, keys): a full square, queries after a cache of earlier
        // keys, one query, key counts below and past the lanes, rows past a task.
        for (stacks, queries, keys) in [
            (1, 1, 1),
            (2, 5, 5),
            (3, 3, 7),
            (4, 1, 9),
            (2, 17, 17),
            (8, 128, 128),
        ] {
            let n = stacks * queries * keys;
            let (scores, grad) = (values(n, 1), values(n, 2));
            let divisor = 32f32.sqrt();
            let out = forward(&scores, queries, keys, divisor);
            let ds = backward(&out, &grad, queries, keys, divisor);
            let (want_out, want_ds) = reference(&scores, &grad, queries, keys, f64::from(divisor));
            for (i, ((&o, &d), (&wo, &wd))) in out
                .iter()
                .zip(&ds)
                .zip(want_out.iter().zip(&want_ds))
                .enumerate()
            {
                assert!(
                    (f64::from(o) - wo).abs() <= 1e-6,
                    "{queries}x{keys} out {i}: {o} vs {wo}"
                );
                assert!(
                    (f64::from(d) - wd).abs() <= 1e-6,
                    "{queries}x{keys} ds {i}: {d} vs {wd}"
                );
            }
        }
    }

    #[test]
    fn hidden_keys_are_zero_and_bad_rows_are_nan() {
        // Two queries on two keys: row 0 sees key 0 only; row 1 both.
        let out = forward(&[1.0, f32::NAN, 2.0, 3.0], 2, 2, 1.0);
        assert_eq!(out[..2], [1.0, 0.0], "the NaN lies past the query");
        assert!((out[2] + out[3] - 1.0).abs() < 1e-6);
        let out = forward(&[1.0, 0.0, f32::INFINITY, 3.0], 2, 2, 1.0);
        assert_eq!(out[..2], [1.0, 0.0]);
        assert!(out[2..].iter().all(|v| v.is_nan()));
        let out = forward(&[f32::NEG_INFINITY, 5.0], 1, 2, 1.0);
        assert_eq!(out, [0.0, 1.0], "minus infinity weighs nothing");
        let out = forward(&[f32::NEG_INFINITY, f32::NEG_INFINITY], 1, 2, 1.0);
        assert!(
            out.iter().all(|v| v.is_nan()),
            "as burn's softmax: -inf - -inf"
        );
    }
}
