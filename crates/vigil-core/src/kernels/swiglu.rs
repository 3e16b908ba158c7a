//! SwiGLU's gating, `silu(gate) * up` with `silu(x) = x sigmoid(x)`, forward and backward in one
//! pass each: the element-wise part of every Llama block's MLP.
//!
//! burn computes it as `silu` (a sigmoid through glibc's `expf`, one call per value, and a
//! product) and then a second product, each into a fresh buffer, and its autodiff walks them
//! again backward; on SmolLM2 that was the larger part of the 5% of a forward pass spent in
//! `expf` (docs/performance.md, "SwiGLU in one pass"). Here each value of `gate` and `up` is
//! read once forward, and once backward (with the incoming gradient) to write both gradients.
//!
//! The sigmoid uses [`exp_nonpositive`] on `-|x|`, so the exponential never overflows:
//! `sigmoid(x) = 1 / (1 + e)` for `x >= 0` and `e / (1 + e)` below, with `e = exp(-|x|)`.

use rayon::prelude::*;

use super::exp::exp_nonpositive;

/// Values per rayon task: 64 KiB of each operand, enough to amortise a task.
const PER_TASK: usize = 16_384;

/// `sigmoid(x)` (NaN gives a meaningless finite value: every caller multiplies by `x`, which
/// carries the NaN through).
#[inline(always)]
fn sigmoid(x: f32) -> f32 {
    let e = exp_nonpositive(-x.abs());
    let r = 1.0 / (1.0 + e);
    if x >= 0.0 { r } else { e * r }
}

/// `silu(gate) * up`, element by element.
pub fn forward(gate: &[f32], up: &[f32]) -> Vec<f32> {
    assert_eq!(gate.len(), up.len(), "gate and up have one shape");
    let mut out = vec![0.0f32; gate.len()];
    out.par_chunks_mut(PER_TASK)
        .zip(gate.par_chunks(PER_TASK).zip(up.par_chunks(PER_TASK)))
        .for_each(|(out, (gate, up))| {
            for ((o, &g), &u) in out.iter_mut().zip(gate).zip(up) {
                *o = g * sigmoid(g) * u;
            }
        });
    out
}

/// Gradients of `sum(grad * silu(gate) * up)` with respect to `gate` and `up`:
/// `grad * up * s (1 + gate (1 - s))` and `grad * gate * s`, with `s = sigmoid(gate)`.
pub fn backward(gate: &[f32], up: &[f32], grad: &[f32]) -> (Vec<f32>, Vec<f32>) {
    assert_eq!(gate.len(), up.len(), "gate and up have one shape");
    assert_eq!(
        gate.len(),
        grad.len(),
        "the gradient has the output's shape"
    );
    let mut d_gate = vec![0.0f32; gate.len()];
    let mut d_up = vec![0.0f32; gate.len()];
    d_gate
        .par_chunks_mut(PER_TASK)
        .zip(d_up.par_chunks_mut(PER_TASK))
        .zip(
            gate.par_chunks(PER_TASK)
                .zip(up.par_chunks(PER_TASK))
                .zip(grad.par_chunks(PER_TASK)),
        )
        .for_each(|((d_gate, d_up), ((gate, up), grad))| {
            for (((dg, du), (&g, &u)), &d) in d_gate
                .iter_mut()
                .zip(d_up.iter_mut())
                .zip(gate.iter().zip(up))
                .zip(grad)
            {
                let s = sigmoid(g);
                let silu = g * s;
                *du = d * silu;
                *dg = d * u * (s + silu * (1.0 - s));
            }
        });
    (d_gate, d_up)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sigmoid64(x: f64) -> f64 {
        1.0 / (1.0 + (-x).exp())
    }

    /// Values across the sigmoid's range, both signs, past where `exp` saturates.
    fn values(n: usize, scale: f32, shift: f32) -> Vec<f32> {
        (0..n)
            .map(|i| ((i as f32 * 0.618_034 + shift).fract() - 0.5) * scale)
            .collect()
    }

    #[test]
    fn forward_and_gradients_match_the_definition_in_f64() {
        // Lengths below, at and past a vector's lanes and a task; gates up to +-60.
        for (n, scale) in [(1, 1.0), (7, 4.0), (33, 20.0), (PER_TASK + 5, 120.0)] {
            let (gate, up, grad) = (
                values(n, scale, 0.0),
                values(n, 3.0, 0.3),
                values(n, 2.0, 0.7),
            );
            let out = forward(&gate, &up);
            let (d_gate, d_up) = backward(&gate, &up, &grad);
            for i in 0..n {
                let (g, u, d) = (f64::from(gate[i]), f64::from(up[i]), f64::from(grad[i]));
                let s = sigmoid64(g);
                let want = [g * s * u, d * u * s * (1.0 + g * (1.0 - s)), d * g * s];
                let got = [out[i], d_gate[i], d_up[i]].map(f64::from);
                for (k, (got, want)) in got.iter().zip(want).enumerate() {
                    assert!(
                        (got - want).abs() <= 2e-6 * want.abs().max(1.0),
                        "n {n}, value {i}, output {k}: {got} vs {want}"
                    );
                }
            }
        }
    }

    #[test]
    fn nan_and_infinite_gates_behave_as_x_times_sigmoid() {
        let gate = [f32::NAN, f32::INFINITY, -1e30, 0.0];
        let out = forward(&gate, &[1.0; 4]);
        assert!(out[0].is_nan());
        assert_eq!(out[1], f32::INFINITY);
        assert!(out[2].abs() < 1e-6, "{}", out[2]);
        assert_eq!(out[3], 0.0);
        let (d_gate, _) = backward(&gate, &[1.0; 4], &[1.0; 4]);
        assert!(d_gate[0].is_nan());
        assert_eq!(d_gate[3], 0.5);
    }
}
