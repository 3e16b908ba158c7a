//! Losses on logits, shared by training, attacks and detectors.
//!
//! Each is a small pure function over tensors; the formulas are those of `docs/halo.md` and `docs/madfa.md` and of PyTorch.

use burn::tensor::activation::{log_softmax, softmax};
use burn::tensor::{Int, Tensor};

/// Per-sample cross-entropy `-log softmax(z)_y`, shape `[n]` (PyTorch `reduction='none'`).
pub fn cross_entropy_per_sample(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, _] = logits.dims();
    log_softmax(logits, 1)
        .gather(1, labels.reshape([n, 1]))
        .reshape([n])
        .neg()
}

/// Per-sample cross-entropy in a form that keeps its precision for confident samples, shape `[n]`.
///
/// `log1p(sum_{j != y} exp(z_j - z_y))`, computed as `softplus(L)` with
/// `L = logsumexp_{j != y}(z_j - z_y)`. Mathematically equal to [`cross_entropy_per_sample`], but
/// where that form rounds to exactly 0 in float32 once `p_y` is within 6e-8 of 1 (`-log_softmax`
/// subtracts two nearly equal numbers), this one stays positive down to float32's smallest
/// numbers, so a confident sample's loss still moves when the weights do (MAD-FA's traces).
pub fn cross_entropy_per_sample_precise(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    softplus(log_odds_against_label(logits, labels))
}

/// Natural log of the per-sample cross-entropy, shape `[n]`, finite for any finite logits.
///
/// `ln(softplus(L))` with `L = logsumexp_{j != y}(z_j - z_y)`. For a confident sample (`L` far
/// below 0) this is `L` itself, the soft margin of the other classes over the label, which
/// moves linearly with the logits; the loss itself moves exponentially, so one draw that pushes
/// a confident sample towards the boundary can multiply its loss a thousandfold and dominate
/// every correlation of its trace (MAD-FA's `--loss log`, docs/madfa.md). Below `L = -15`
/// `ln(softplus(L)) = L + ln(1 - e^L/2 + ...)` differs from `L` by less than float32's rounding,
/// and computing it directly would underflow, so `L` is returned there.
pub fn log_cross_entropy_per_sample(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let odds = log_odds_against_label(logits, labels);
    let far = odds.clone().lower_elem(-15.0);
    // The masked-out branch still runs on every element; clamping keeps it finite (and its
    // gradient zero rather than NaN) where `L` is used instead.
    let direct = softplus(odds.clone().clamp_min(-15.0)).log();
    direct.mask_where(far, odds)
}

/// `L = logsumexp_{j != y}(z_j - z_y)` per row, shape `[n]`: the log of the other classes'
/// odds against the label; the cross-entropy is `softplus(L)`.
fn log_odds_against_label(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    let [n, k] = logits.dims();
    let is_label = labels.clone().one_hot::<2>(k).equal_elem(1);
    let z_y = logits.clone().gather(1, labels.reshape([n, 1]));
    let others = (logits - z_y).mask_fill(is_label, f32::NEG_INFINITY);
    let max = others.clone().max_dim(1);
    let lse = (others - max.clone()).exp().sum_dim(1).log() + max;
    lse.reshape([n])
}

/// `softplus(x) = max(x, 0) + log1p(exp(-|x|))`, exact for x of either sign.
fn softplus(x: Tensor<1>) -> Tensor<1> {
    x.clone().clamp_min(0.0) + x.abs().neg().exp().log1p()
}

/// Mean cross-entropy over the batch, shape `[1]`.
pub fn cross_entropy(logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
    cross_entropy_per_sample(logits, labels).mean()
}

/// Per-sample cross-entropy to the uniform distribution, `logsumexp(z) - mean(z)`, shape `[n]`
/// (outlier exposure; HALO's OOD attacks push this up or down).
pub fn cross_entropy_to_uniform_per_sample(logits: Tensor<2>) -> Tensor<1> {
    let [n, k] = logits.dims();
    // -mean_c log_softmax(z)_c = logsumexp(z) - mean(z).
    log_softmax(logits, 1)
        .sum_dim(1)
        .reshape([n])
        .div_scalar(k as f64)
        .neg()
}

/// `KL(softmax(p_logits) || softmax(q_logits))` of each row, summed over classes, shape `[n]`.
pub fn kl_divergence_per_sample(p_logits: Tensor<2>, q_logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = p_logits.dims();
    let log_p = log_softmax(p_logits.clone(), 1);
    let log_q = log_softmax(q_logits, 1);
    (softmax(p_logits, 1) * (log_p - log_q))
        .sum_dim(1)
        .reshape([n])
}

/// `KL(softmax(p_logits) || softmax(q_logits))` summed over classes and divided by the batch
/// size (PyTorch `KLDivLoss(reduction='batchmean')`, as TRADES and HALO use it).
pub fn kl_divergence_batchmean(p_logits: Tensor<2>, q_logits: Tensor<2>) -> Tensor<1> {
    kl_divergence_per_sample(p_logits, q_logits).mean()
}

/// Row-wise argmax of logits, shape `[n]`.
pub fn predictions(logits: Tensor<2>) -> Tensor<1, Int> {
    let [n, _] = logits.dims();
    logits.argmax(1).reshape([n])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    fn logits() -> Tensor<2> {
        Tensor::from_data(
            TensorData::new(vec![1.0f32, 2.0, 3.0, -1.0, 0.5, 0.0], [2, 3]),
            &default_device(),
        )
    }

    fn to_vec(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    // Expected values are computed independently in f64 from the textbook formulas
    // (log-sum-exp written out), not with the tensor code under test.
    #[test]
    fn cross_entropy_matches_hand_computation() {
        let labels =
            Tensor::<1, Int>::from_data(TensorData::new(vec![2i64, 0], [2]), &default_device());
        let got = to_vec(cross_entropy_per_sample(logits(), labels));
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let lse1 = ((-1f64).exp() + 0.5f64.exp() + 1.0).ln();
        assert!((got[0] as f64 - (lse0 - 3.0)).abs() < 1e-5);
        assert!((got[1] as f64 - (lse1 + 1.0)).abs() < 1e-5);
    }

    /// Values from the textbook formula in f64 (log1p of the sum over the other classes); a
    /// confident row whose float32 `-log_softmax` is exactly 0 keeps its tiny positive loss.
    #[test]
    fn precise_cross_entropy_matches_f64_and_survives_confidence() {
        let device = default_device();
        let rows: [[f64; 3]; 3] = [[1.0, 2.0, 3.0], [-1.0, 0.5, 0.0], [0.0, 25.0, -3.0]];
        let labels = [2i64, 0, 1];
        let flat: Vec<f32> = rows.iter().flatten().map(|&v| v as f32).collect();
        let logits = Tensor::<2>::from_data(TensorData::new(flat, [3, 3]), &device);
        let labels_t = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [3]), &device);
        let precise = to_vec(cross_entropy_per_sample_precise(
            logits.clone(),
            labels_t.clone(),
        ));
        let plain = to_vec(cross_entropy_per_sample(logits, labels_t));
        for (r, (row, &y)) in rows.iter().zip(&labels).enumerate() {
            let y = y as usize;
            let s: f64 = (0..3)
                .filter(|&j| j != y)
                .map(|j| (row[j] - row[y]).exp())
                .sum();
            let expected = s.ln_1p();
            let rel = (f64::from(precise[r]) - expected).abs() / expected;
            assert!(rel < 1e-5, "row {r}: {} vs {expected}", precise[r]);
        }
        // Row 2: p_y = 1 - 1.4e-11; float32 log-softmax gives exactly 0.
        assert_eq!(plain[2], 0.0);
        assert!(precise[2] > 1e-12);
    }

    /// numpy 2.4.6, in f64, for the rows and labels below:
    /// ```python
    /// import numpy as np
    /// for r, y in zip(rows, labels):
    ///     L = np.log(np.exp(np.delete(r, y) - r[y]).sum())
    ///     print(np.log(np.log1p(np.exp(L))))
    /// ```
    /// Rows 2 and 3 are confident (float32's `-log_softmax` is 0 there), row 3 past the switch
    /// to `L` itself; rows 0, 1 and 4 are near or past the boundary.
    #[test]
    fn log_cross_entropy_matches_numpy_from_confident_to_wrong() {
        let device = default_device();
        let rows: [[f32; 3]; 5] = [
            [1.0, 2.0, 3.0],
            [-1.0, 0.5, 0.0],
            [0.0, 25.0, -3.0],
            [0.0, 40.0, -3.0],
            [4.0, -2.0, 3.9],
        ];
        let labels = [2i64, 0, 1, 1, 0];
        let want = [
            -0.8974543446582444,
            0.7439023677287179,
            -24.951412648433546,
            -39.951412648426256,
            -0.4374247591043482,
        ];
        let flat: Vec<f32> = rows.iter().flatten().copied().collect();
        let logits = Tensor::<2>::from_data(TensorData::new(flat, [5, 3]), &device);
        let labels = Tensor::<1, Int>::from_data(TensorData::new(labels.to_vec(), [5]), &device);
        let got = to_vec(log_cross_entropy_per_sample(logits, labels));
        for (r, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((f64::from(*g) - w).abs() < 1e-5, "row {r}: {g} vs {w}");
        }
    }

    /// The gradient is finite on both sides of the switch at `L = -15` (the unused branch is
    /// clamped, so no NaN leaks through the mask) and is the label's `-(1 - p_y)/loss`-scaled
    /// softmax gradient; for a far row it is `d L / d z`: -1 on the label.
    #[test]
    fn log_cross_entropy_gradient_is_finite_and_correct_far_from_the_boundary() {
        let device = crate::device::autodiff_device();
        let flat = vec![0.0f32, 40.0, -3.0, 1.0, 2.0, 3.0];
        let logits = Tensor::<2>::from_data(TensorData::new(flat, [2, 3]), &device).require_grad();
        let labels = Tensor::<1, Int>::from_data(TensorData::new(vec![1i64, 2], [2]), &device);
        let grads = log_cross_entropy_per_sample(logits.clone(), labels)
            .sum()
            .backward();
        let g: Vec<f32> = logits
            .grad(&grads)
            .unwrap()
            .into_data()
            .iter::<f32>()
            .collect();
        assert!(g.iter().all(|v| v.is_finite()), "{g:?}");
        // Row 0: L = log(e^-40 + e^-43): dL/dz_y = -1, the others share +1 by their odds.
        assert!((g[1] + 1.0).abs() < 1e-6, "{g:?}");
        assert!((g[0] + g[2] - 1.0).abs() < 1e-6, "{g:?}");
        // Row 1 against numpy: d/dz ln(CE) = (softmax(z) - onehot) / CE.
        let z = [1.0f64, 2.0, 3.0];
        let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
        let ce = lse - z[2];
        for j in 0..3 {
            let want = ((z[j] - lse).exp() - f64::from(u8::from(j == 2))) / ce;
            assert!((f64::from(g[3 + j]) - want).abs() < 1e-5, "{j}: {g:?}");
        }
    }

    #[test]
    fn cross_entropy_to_uniform_is_logsumexp_minus_mean() {
        let got = to_vec(cross_entropy_to_uniform_per_sample(logits()));
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        let lse1 = ((-1f64).exp() + 0.5f64.exp() + 1.0).ln();
        assert!((got[0] as f64 - (lse0 - 2.0)).abs() < 1e-5);
        assert!((got[1] as f64 - (lse1 - (-0.5 / 3.0))).abs() < 1e-5);
    }

    #[test]
    fn kl_divergence_is_batchmean_and_zero_on_itself() {
        let same = to_vec(kl_divergence_batchmean(logits(), logits()));
        assert!(same[0].abs() < 1e-6);
        let flipped = logits().flip([1]);
        let got = to_vec(kl_divergence_batchmean(logits(), flipped))[0] as f64;
        let rows = [[1.0f64, 2.0, 3.0], [-1.0, 0.5, 0.0]];
        let mut expected = 0.0;
        for r in rows {
            let q = [r[2], r[1], r[0]];
            let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
            let (lp, lq) = (lse(r), lse(q));
            for c in 0..3 {
                let p = (r[c] - lp).exp();
                expected += p * ((r[c] - lp) - (q[c] - lq));
            }
        }
        assert!(
            (got - expected / 2.0).abs() < 1e-5,
            "{got} vs {}",
            expected / 2.0
        );
    }
}
