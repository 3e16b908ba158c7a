//! Low-frequency universal trigger (LF; Zeng et al. 2021, "Rethinking the backdoor attacks'
//! triggers: a frequency perspective"; BackdoorBench `lf`).
//!
//! The trigger is one additive perturbation, the same for every image, optimised against a clean
//! model to push non-target images towards the target class while containing only low spatial
//! frequencies (so it survives low-pass defences and looks like a smooth tint). Poison-label.
//!
//! How vigil computes it (the reference ships precomputed perturbations made by its own
//! search; this is vigil's documented procedure): `iterations` targeted signed-gradient steps
//! of size `step` on the mean cross-entropy to the target over batches of non-target training
//! images, each followed by a projection onto the low-frequency subspace (2-D orthonormal DCT,
//! coefficients with `u + v >= window` set to zero) and onto the L-infinity ball of radius
//! `eps`. Test-time trigger: `clip(x + delta, 0, 1)`.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::{AttackError, BackdoorAttack, TargetRule, fits};
use crate::attack::pgd::{frozen, input_gradient};
use crate::data::sampler::CycledShuffle;
use crate::data::{ImageSet, ImageShape, images_tensor};
use crate::models::{BnMode, Classifier};

/// Registry name.
pub const NAME: &str = "lf";

/// Search settings of the LF perturbation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LfSearch {
    /// L-infinity bound of the perturbation (default 0.1).
    pub eps: f64,
    /// DCT coefficients with `u + v` below this are kept (default 6).
    pub window: usize,
    /// Signed-gradient steps (default 100).
    pub iterations: usize,
    /// Step size (default 0.01).
    pub step: f64,
    /// Images per step (default 128).
    pub batch: usize,
    /// Seed of the batch order.
    pub seed: u64,
}

impl Default for LfSearch {
    fn default() -> Self {
        Self {
            eps: 0.1,
            window: 6,
            iterations: 100,
            step: 0.01,
            batch: 128,
            seed: 0,
        }
    }
}

/// The LF attack: an additive low-frequency perturbation.
#[derive(Debug, Clone)]
pub struct LowFrequency {
    delta: Vec<f32>,
    shape: ImageShape,
}

impl LowFrequency {
    /// An attack with a given perturbation (`C x H x W`).
    pub fn from_perturbation(delta: Vec<f32>, shape: ImageShape) -> Result<Self, AttackError> {
        if delta.len() != shape.num_values() || delta.iter().any(|v| !v.is_finite()) {
            return Err(invalid(format!(
                "{} finite values needed for a {shape} perturbation",
                shape.num_values()
            )));
        }
        Ok(Self { delta, shape })
    }

    /// Searches the perturbation against `clean` on the non-target images of `train`.
    pub fn search(
        clean: &Classifier,
        train: &ImageSet,
        rule: TargetRule,
        search: LfSearch,
        device: &Device,
    ) -> Result<Self, AttackError> {
        let TargetRule::AllToOne { target } = rule else {
            return Err(invalid("a universal trigger needs one target class".into()));
        };
        if search.eps <= 0.0 || search.window == 0 || search.batch == 0 {
            return Err(invalid("eps, window and batch must be positive".into()));
        }
        let shape = train.shape();
        let device = device.clone().autodiff();
        let model = frozen(clean, &device);
        let pool: Vec<usize> = (0..train.len())
            .filter(|&i| train.label(i) != target)
            .collect();
        if pool.is_empty() {
            return Err(invalid("no non-target training images".into()));
        }
        let mut batches = CycledShuffle::new(pool, search.seed);
        let mut delta = vec![0.0f32; shape.num_values()];
        let [c, h, w] = [shape.channels, shape.height, shape.width];
        for _ in 0..search.iterations {
            let chunk = batches.next_batch(search.batch);
            let x = images_tensor(train, chunk, &device);
            let d = Tensor::<1>::from_data(TensorData::new(delta.clone(), [c * h * w]), &device)
                .reshape([1, c, h, w]);
            let xs = (x + d).clamp(0.0, 1.0);
            let labels = Tensor::<1, Int>::from_data(
                TensorData::new(vec![i64::from(target); chunk.len()], [chunk.len()]),
                &device,
            );
            // Descend the cross-entropy to the target: the opposite of the ascent direction.
            let grad = input_gradient(&model, xs, labels, BnMode::Eval)
                .sum_dim(0)
                .into_data()
                .iter::<f32>()
                .collect::<Vec<f32>>();
            for (d, g) in delta.iter_mut().zip(&grad) {
                *d -= (search.step as f32) * g.signum() * f32::from(u8::from(*g != 0.0));
            }
            low_pass(&mut delta, shape, search.window);
            let eps = search.eps as f32;
            delta.iter_mut().for_each(|v| *v = v.clamp(-eps, eps));
        }
        Self::from_perturbation(delta, shape)
    }

    /// The perturbation, `C x H x W`.
    pub fn perturbation(&self) -> &[f32] {
        &self.delta
    }
}

impl BackdoorAttack for LowFrequency {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) || shape != self.shape {
            return;
        }
        for ((o, x), d) in out.iter_mut().zip(image).zip(&self.delta) {
            *o = (x + d).clamp(0.0, 1.0);
        }
    }
}

/// Orthonormal DCT-II matrix of size `n` (row `k` is frequency `k`).
pub fn dct_matrix(n: usize) -> Vec<f64> {
    let mut m = vec![0.0; n * n];
    for k in 0..n {
        let scale = if k == 0 {
            (1.0 / n as f64).sqrt()
        } else {
            (2.0 / n as f64).sqrt()
        };
        for i in 0..n {
            m[k * n + i] = scale
                * (std::f64::consts::PI * (2 * i + 1) as f64 * k as f64 / (2 * n) as f64).cos();
        }
    }
    m
}

/// Keeps only the 2-D DCT coefficients `(u, v)` with `u + v < window`, per channel.
pub fn low_pass(values: &mut [f32], shape: ImageShape, window: usize) {
    let (h, w) = (shape.height, shape.width);
    let (dh, dw) = (dct_matrix(h), dct_matrix(w));
    for plane in values.chunks_exact_mut(h * w) {
        // Coefficients C = Dh X Dw^T.
        let mut tmp = vec![0.0f64; h * w];
        for u in 0..h {
            for j in 0..w {
                tmp[u * w + j] = (0..h)
                    .map(|i| dh[u * h + i] * f64::from(plane[i * w + j]))
                    .sum();
            }
        }
        let mut coef = vec![0.0f64; h * w];
        for u in 0..h {
            for v in 0..w {
                if u + v < window {
                    coef[u * w + v] = (0..w).map(|j| tmp[u * w + j] * dw[v * w + j]).sum();
                }
            }
        }
        // X = Dh^T C Dw.
        for u in 0..h {
            for j in 0..w {
                tmp[u * w + j] = (0..w).map(|v| coef[u * w + v] * dw[v * w + j]).sum();
            }
        }
        for i in 0..h {
            for j in 0..w {
                plane[i * w + j] =
                    (0..h).map(|u| dh[u * h + i] * tmp[u * w + j]).sum::<f64>() as f32;
            }
        }
    }
}

fn invalid(reason: String) -> AttackError {
    AttackError::InvalidConfig {
        attack: NAME.into(),
        reason,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dct_matrix_is_orthonormal() {
        let n = 7;
        let m = dct_matrix(n);
        for a in 0..n {
            for b in 0..n {
                let dot: f64 = (0..n).map(|i| m[a * n + i] * m[b * n + i]).sum();
                let expected = if a == b { 1.0 } else { 0.0 };
                assert!((dot - expected).abs() < 1e-12, "rows {a},{b}: {dot}");
            }
        }
        // DCT-II row 1, element 0 for n = 4: sqrt(2/4) cos(pi/8) (scipy.fft.dct(norm='ortho')).
        let m4 = dct_matrix(4);
        assert!((m4[4] - 0.5f64.sqrt() * (std::f64::consts::PI / 8.0).cos()).abs() < 1e-12);
    }

    #[test]
    fn low_pass_keeps_smooth_planes_and_removes_checkerboards() {
        let shape = ImageShape::new(1, 6, 6);
        let mut constant = vec![0.3f32; 36];
        low_pass(&mut constant, shape, 1);
        assert!(constant.iter().all(|v| (v - 0.3).abs() < 1e-6));
        // A pure DCT basis image (u, v) survives exactly when u + v < window.
        let d = dct_matrix(6);
        let basis = |u: usize, v: usize| -> Vec<f32> {
            (0..36)
                .map(|i| (d[u * 6 + i / 6] * d[v * 6 + i % 6]) as f32)
                .collect()
        };
        for (u, v, window, kept) in [
            (5, 5, 10, false),
            (5, 5, 11, true),
            (1, 0, 2, true),
            (1, 0, 1, false),
        ] {
            let mut plane = basis(u, v);
            let original = plane.clone();
            low_pass(&mut plane, shape, window);
            let expected: Vec<f32> = if kept { original } else { vec![0.0; 36] };
            assert!(
                plane
                    .iter()
                    .zip(&expected)
                    .all(|(a, b)| (a - b).abs() < 1e-6),
                "basis ({u}, {v}) with window {window}"
            );
        }
        // A full window is the identity.
        let mut ramp: Vec<f32> = (0..36).map(|i| i as f32 / 36.0).collect();
        let before = ramp.clone();
        low_pass(&mut ramp, shape, 11);
        assert!(ramp.iter().zip(&before).all(|(a, b)| (a - b).abs() < 1e-5));
    }

    #[test]
    fn trigger_adds_and_clips() {
        let shape = ImageShape::new(1, 1, 3);
        let attack = LowFrequency::from_perturbation(vec![0.2, -0.2, 0.0], shape).unwrap();
        let mut out = vec![0.0; 3];
        attack.apply_trigger(&[0.9, 0.1, 0.5], shape, 0, &mut out);
        assert_eq!(out, vec![1.0, 0.0, 0.5]);
        assert!(LowFrequency::from_perturbation(vec![0.0; 2], shape).is_err());
    }
}
