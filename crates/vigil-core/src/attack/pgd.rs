//! Projected gradient attacks on inputs (PGD), through a frozen model.
//!
//! [`Pgd`] maximises any per-sample objective of the inputs inside an L-infinity or L2 ball
//! around them, kept in the image range `[0, 1]`: cross-entropy, the TRADES KL to the clean
//! prediction, cross-entropy to the uniform distribution pushed down (ID made to look OOD) or up
//! (OOD made to look ID), or a detector's own differentiable score ([`objective`]).
//!
//! One L-infinity step: `x <- clip_[0,1]( proj_{||x - x0||_inf <= eps}( x + alpha * sign(grad) ) )`,
//! the order of the HALO reference (project to the ball, then clip to the image range). An L2 step
//! moves `alpha` along the per-sample unit gradient, then projects and clips the same way.
//!
//! vigil returns the best iterate **per sample**, the final one included. The HALO reference keeps
//! the iterate with the best *batch-summed* objective and never considers the final iterate, and
//! does not clip its random start to `[0, 1]`; [`Pgd::reference`] selects both behaviours.

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use crate::loss::{
    cross_entropy_per_sample, cross_entropy_to_uniform_per_sample, kl_divergence_per_sample,
};
use crate::models::{BnMode, Classifier};

/// Errors of an input attack's settings.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid PGD settings: {0}")]
pub struct PgdError(pub String);

/// The ball the perturbation stays in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Norm {
    /// `max |x - x0| <= eps` per pixel.
    Linf,
    /// `||x - x0||_2 <= eps` per sample.
    L2,
}

/// Where the iterates start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RandomStart {
    /// At the clean input.
    None,
    /// At a uniform draw from the ball, clipped to `[0, 1]` (vigil's default).
    Clipped,
    /// At a uniform draw from the ball, not clipped (the HALO reference).
    Unclipped,
}

/// Which iterate an attack returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Keep {
    /// Per sample, the iterate with the highest objective, the final one included (vigil).
    BestPerSample,
    /// The iterate whose batch-summed objective is highest, the final iterate not considered
    /// (the HALO reference's rule).
    BestBatch,
    /// The last iterate.
    Final,
}

/// Projected gradient ascent on inputs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Pgd {
    /// The ball.
    pub norm: Norm,
    /// Its radius, in `[0, 1]` pixel units (L-infinity) or per-sample Euclidean length (L2).
    pub eps: f64,
    /// Step size `alpha`.
    pub step_size: f64,
    /// Number of gradient steps.
    pub steps: usize,
    /// Where the iterates start.
    pub start: RandomStart,
    /// Which iterate is returned.
    pub keep: Keep,
}

impl Pgd {
    /// L-infinity PGD as HALO and TRADES use it: `steps` steps of `2.5 eps / steps` from a
    /// uniform random start, best iterate per sample.
    pub fn linf(eps: f64, steps: usize) -> Self {
        Self {
            norm: Norm::Linf,
            eps,
            step_size: 2.5 * eps / steps.max(1) as f64,
            steps,
            start: RandomStart::Clipped,
            keep: Keep::BestPerSample,
        }
    }

    /// The same attack with the HALO reference's rules: unclipped random start, best iterate by
    /// the batch-summed objective, final iterate not considered.
    pub fn reference(self) -> Self {
        Self {
            start: RandomStart::Unclipped,
            keep: Keep::BestBatch,
            ..self
        }
    }

    /// Checks the settings can work.
    pub fn validate(&self) -> Result<(), PgdError> {
        if !(self.eps.is_finite() && self.eps >= 0.0) {
            return Err(PgdError(format!(
                "eps must be finite and >= 0, got {}",
                self.eps
            )));
        }
        if !(self.step_size.is_finite() && self.step_size >= 0.0) {
            return Err(PgdError(format!(
                "the step size must be finite and >= 0, got {}",
                self.step_size
            )));
        }
        if self.keep == Keep::BestBatch && self.steps == 0 {
            return Err(PgdError(
                "the reference rule keeps one of the iterates before a step: it needs at least one step".into(),
            ));
        }
        Ok(())
    }

    /// Maximises `objective` around `x0` (`[n, c, h, w]`, values in `[0, 1]`). `objective` maps
    /// inputs on an autodiff device to one value per sample (`[n]`); the ascent follows the
    /// gradient of their sum, so samples do not interact unless the objective makes them. The
    /// random start draws from `rng`. Returns the kept iterate, without autodiff.
    pub fn attack(
        &self,
        x0: Tensor<4>,
        objective: impl Fn(Tensor<4>) -> Tensor<1>,
        rng: &mut impl Rng,
    ) -> Result<Tensor<4>, PgdError> {
        self.validate()?;
        let x0 = x0.without_autodiff();
        let device = x0.device();
        let dims = x0.dims();
        let n = dims[0];
        let mut x = match self.start {
            RandomStart::None => x0.clone(),
            start => {
                let noise = self.random_start(dims, rng, &device);
                let x = x0.clone() + noise;
                if start == RandomStart::Clipped {
                    x.clamp(0.0, 1.0)
                } else {
                    x
                }
            }
        };
        let mut best = BestIterate::new(n, self.keep);
        for _ in 0..self.steps {
            let (values, grad) = value_and_gradient(x.clone(), &objective);
            best.offer(&x, &host(values));
            x = match self.norm {
                Norm::Linf => linf_step(x, x0.clone(), grad, self.step_size, self.eps),
                Norm::L2 => l2_step(x, x0.clone(), grad, self.step_size, self.eps),
            };
        }
        if self.keep == Keep::BestPerSample {
            let values = objective(x.clone().autodiff());
            best.offer(&x, &host(values.without_autodiff()));
        }
        Ok(best.into_tensor(x))
    }

    /// A uniform draw from the ball, `dims`-shaped (L2: a Gaussian direction scaled to a radius
    /// `eps u^(1/d)`, uniform over the ball's volume).
    fn random_start(&self, dims: [usize; 4], rng: &mut impl Rng, device: &Device) -> Tensor<4> {
        let per_sample = dims[1] * dims[2] * dims[3];
        let mut values = vec![0.0f32; dims[0] * per_sample];
        match self.norm {
            Norm::Linf => {
                for v in &mut values {
                    *v = ((2.0 * rng.random::<f64>() - 1.0) * self.eps) as f32;
                }
            }
            Norm::L2 => {
                for sample in values.chunks_exact_mut(per_sample.max(1)) {
                    let direction: Vec<f64> = (0..sample.len())
                        .map(|_| StandardNormal.sample(rng))
                        .collect();
                    let length = direction.iter().map(|d| d * d).sum::<f64>().sqrt();
                    let radius =
                        self.eps * rng.random::<f64>().powf(1.0 / sample.len().max(1) as f64);
                    let scale = if length > 0.0 { radius / length } else { 0.0 };
                    for (v, d) in sample.iter_mut().zip(direction) {
                        *v = (d * scale) as f32;
                    }
                }
            }
        }
        Tensor::from_data(TensorData::new(values, dims), device)
    }
}

/// The iterate kept so far, on the host (a copy per step is small next to a forward pass).
struct BestIterate {
    keep: Keep,
    /// Per-sample best values (BestPerSample) or one batch total (BestBatch).
    values: Vec<f64>,
    images: Option<Vec<f32>>,
}

impl BestIterate {
    fn new(n: usize, keep: Keep) -> Self {
        let slots = if keep == Keep::BestBatch { 1 } else { n };
        Self {
            keep,
            values: vec![f64::NEG_INFINITY; slots],
            images: None,
        }
    }

    /// Offers iterate `x` with per-sample objective `values`. Strictly higher values replace
    /// the kept ones, so ties keep the earlier iterate and NaN never wins.
    fn offer(&mut self, x: &Tensor<4>, values: &[f32]) {
        match self.keep {
            Keep::Final => {}
            Keep::BestBatch => {
                let total: f64 = values.iter().map(|&v| f64::from(v)).sum();
                if total > self.values[0] || self.images.is_none() {
                    self.values[0] = total;
                    self.images = Some(host(x.clone()));
                }
            }
            Keep::BestPerSample => {
                let n = values.len();
                let better: Vec<bool> = values
                    .iter()
                    .zip(&self.values)
                    .map(|(&v, &b)| f64::from(v) > b)
                    .collect();
                if !better.iter().any(|&b| b) && self.images.is_some() {
                    return;
                }
                let current = host(x.clone());
                let per_sample = current.len() / n.max(1);
                match &mut self.images {
                    None => {
                        for (kept, &v) in self.values.iter_mut().zip(values) {
                            *kept = f64::from(v);
                        }
                        self.images = Some(current);
                    }
                    Some(images) => {
                        for (i, &b) in better.iter().enumerate() {
                            if b {
                                self.values[i] = f64::from(values[i]);
                                let range = i * per_sample..(i + 1) * per_sample;
                                images[range.clone()].copy_from_slice(&current[range]);
                            }
                        }
                    }
                }
            }
        }
    }

    fn into_tensor(self, last: Tensor<4>) -> Tensor<4> {
        match self.images {
            Some(images) if self.keep != Keep::Final => {
                let dims = last.dims();
                Tensor::from_data(TensorData::new(images, dims), &last.device())
            }
            _ => last,
        }
    }
}

fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().iter::<f32>().collect()
}

/// Per-sample values of `objective` at `x` and the gradient of their sum (both without autodiff;
/// the gradient is zeros if the objective does not depend on `x`). `x` may live on the plain or
/// the autodiff device; the objective sees it on the autodiff device.
fn value_and_gradient(
    x: Tensor<4>,
    objective: impl FnOnce(Tensor<4>) -> Tensor<1>,
) -> (Tensor<1>, Tensor<4>) {
    let plain = x.without_autodiff();
    let xa = plain.clone().autodiff().require_grad();
    let values = objective(xa.clone());
    let grads = values.clone().sum().backward();
    let grad = xa.grad(&grads).unwrap_or_else(|| plain.zeros_like());
    (values.detach().without_autodiff(), grad)
}

/// Per-sample objectives of the standard attacks, each a closure for [`Pgd::attack`] over a
/// [`frozen`] model (in eval mode unless told otherwise).
pub mod objective {
    use super::*;

    /// Cross-entropy of `labels` (untargeted misclassification).
    pub fn cross_entropy<'a>(
        model: &'a Classifier,
        labels: Tensor<1, Int>,
    ) -> impl Fn(Tensor<4>) -> Tensor<1> + 'a {
        move |x| cross_entropy_per_sample(model.forward(x, BnMode::Eval), labels.clone())
    }

    /// Cross-entropy of `targets` pushed down (targeted misclassification); the objective is its
    /// negative.
    pub fn towards_class<'a>(
        model: &'a Classifier,
        targets: Tensor<1, Int>,
    ) -> impl Fn(Tensor<4>) -> Tensor<1> + 'a {
        move |x| cross_entropy_per_sample(model.forward(x, BnMode::Eval), targets.clone()).neg()
    }

    /// TRADES: `KL(softmax(clean) || softmax(f(x)))` per sample, from the clean logits (held
    /// constant), with BatchNorm in `bn` mode: eval, or train to reproduce the HALO reference's
    /// train-mode attack.
    pub fn kl_from_clean<'a>(
        model: &'a Classifier,
        clean_logits: Tensor<2>,
        bn: BnMode,
    ) -> impl Fn(Tensor<4>) -> Tensor<1> + 'a {
        let clean = clean_logits.detach();
        move |x| kl_divergence_per_sample(clean.clone(), model.forward(x, bn))
    }

    /// ID to OOD: minimise the cross-entropy to the uniform distribution (push an input's
    /// prediction towards uniform); the objective is its negative.
    pub fn towards_uniform(model: &Classifier) -> impl Fn(Tensor<4>) -> Tensor<1> + '_ {
        move |x| cross_entropy_to_uniform_per_sample(model.forward(x, BnMode::Eval)).neg()
    }

    /// OOD to ID: maximise the cross-entropy to the uniform distribution (make an input look
    /// confidently in-distribution).
    pub fn away_from_uniform(model: &Classifier) -> impl Fn(Tensor<4>) -> Tensor<1> + '_ {
        move |x| cross_entropy_to_uniform_per_sample(model.forward(x, BnMode::Eval))
    }
}

/// A copy of `classifier` on `device` with autodiff enabled and parameters that do not require
/// gradients, so a backward pass computes only the input gradient.
pub fn frozen(classifier: &Classifier, device: &Device) -> Classifier {
    Classifier {
        network: classifier
            .network
            .clone()
            .fork(&device.clone().autodiff())
            .no_grad(),
        spec: classifier.spec.clone(),
    }
}

/// Gradient of the summed cross-entropy with respect to the inputs `x` (no autodiff in the
/// result). `model` should be [`frozen`] and live on an autodiff device.
pub fn input_gradient(
    model: &Classifier,
    x: Tensor<4>,
    labels: Tensor<1, Int>,
    bn: BnMode,
) -> Tensor<4> {
    gradient_wrt_input(x, |x| {
        cross_entropy_per_sample(model.forward(x, bn), labels).sum()
    })
}

/// Gradient of a scalar `objective` of the inputs `x` (no autodiff in the result; zeros if the
/// objective does not depend on `x`). `x` may live on the plain or the autodiff device.
pub fn gradient_wrt_input(
    x: Tensor<4>,
    objective: impl FnOnce(Tensor<4>) -> Tensor<1>,
) -> Tensor<4> {
    value_and_gradient(x, objective).1
}

/// One ascent step of size `alpha` along `sign(grad)`, projected to the `eps`-ball around `x0`
/// and clipped to `[0, 1]`.
pub fn linf_step(x: Tensor<4>, x0: Tensor<4>, grad: Tensor<4>, alpha: f64, eps: f64) -> Tensor<4> {
    let stepped = x + grad.sign().mul_scalar(alpha);
    let lower = x0.clone().sub_scalar(eps);
    let upper = x0.add_scalar(eps);
    stepped.max_pair(lower).min_pair(upper).clamp(0.0, 1.0)
}

/// One L2 ascent step: `alpha` along the per-sample unit gradient, then the per-sample
/// projection to the `eps`-ball around `x0` and the clip to `[0, 1]`.
pub fn l2_step(x: Tensor<4>, x0: Tensor<4>, grad: Tensor<4>, alpha: f64, eps: f64) -> Tensor<4> {
    let stepped = x + grad
        .clone()
        .div(per_sample_norm(grad).add_scalar(1e-12))
        .mul_scalar(alpha);
    let delta = stepped - x0.clone();
    let norm = per_sample_norm(delta.clone());
    // Scale by min(1, eps / |delta|): deltas inside the ball are kept as they are.
    let scale = norm.clone().recip().mul_scalar(eps).clamp_max(1.0);
    let scale = scale.mask_fill(norm.equal_elem(0.0), 1.0);
    (x0 + delta * scale).clamp(0.0, 1.0)
}

/// Euclidean norm of each sample, shaped `[n, 1, 1, 1]` to broadcast against it.
fn per_sample_norm(x: Tensor<4>) -> Tensor<4> {
    let [n, ..] = x.dims();
    x.powi_scalar(2)
        .reshape([n as i32, -1])
        .sum_dim(1)
        .sqrt()
        .reshape([n, 1, 1, 1])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    fn t(v: Vec<f32>) -> Tensor<4> {
        let n = v.len();
        Tensor::from_data(TensorData::new(v, [1, 1, 1, n]), &default_device())
    }

    #[test]
    fn step_moves_by_sign_then_projects_then_clips() {
        let x0 = t(vec![0.5, 0.5, 0.98, 0.02, 0.5]);
        let x = x0.clone();
        let grad = t(vec![3.0, -0.1, 1.0, -1.0, 0.0]);
        let out = linf_step(x, x0, grad, 0.2, 0.1);
        let got = out.into_data().try_to_vec::<f32>().unwrap();
        // +0.2 capped at +eps; -0.2 capped at -eps; 0.98+0.1 clipped to 1; 0.02-0.1 clipped to 0;
        // sign(0) = 0 leaves the pixel.
        let expected = [0.6, 0.4, 1.0, 0.0, 0.5];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
    }

    /// A tiny CNN with host-seeded weights (no device RNG), frozen for attacks, and 6 images.
    fn setup(seed: u64) -> (Classifier, Tensor<4>, Tensor<1, Int>) {
        use rand::SeedableRng;
        let device = default_device().autodiff();
        let spec = crate::attack::test_data::tiny_cnn_spec();
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let classifier = crate::models::test_util::host_seeded(spec, &mut rng, &device);
        let model = frozen(&classifier, &device);
        let pixels: Vec<f32> = (0..6 * 64).map(|_| rng.random::<f32>()).collect();
        let x0 = Tensor::<4>::from_data(TensorData::new(pixels, [6, 1, 8, 8]), &device);
        let y =
            Tensor::<1, Int>::from_data(TensorData::new(vec![0i64, 1, 0, 1, 0, 1], [6]), &device);
        (model, x0, y)
    }

    fn values(model: &Classifier, x: Tensor<4>, y: &Tensor<1, Int>) -> Vec<f32> {
        host(objective::cross_entropy(model, y.clone())(x.autodiff()).without_autodiff())
    }

    fn rng(seed: u64) -> rand::rngs::StdRng {
        use rand::SeedableRng;
        rand::rngs::StdRng::seed_from_u64(seed)
    }

    #[test]
    fn pgd_raises_the_loss_and_stays_in_the_ball_and_the_image_range() {
        let (model, x0, y) = setup(1);
        for (norm, eps) in [(Norm::Linf, 0.05), (Norm::L2, 0.5)] {
            let pgd = Pgd {
                norm,
                step_size: eps / 4.0,
                ..Pgd::linf(eps, 8)
            };
            let adv = pgd
                .attack(
                    x0.clone(),
                    objective::cross_entropy(&model, y.clone()),
                    &mut rng(3),
                )
                .unwrap();
            let before: f32 = values(&model, x0.clone(), &y).iter().sum();
            let after: f32 = values(&model, adv.clone(), &y).iter().sum();
            assert!(after > before, "{norm:?}: {after} <= {before}");
            let delta = host(adv.clone() - x0.clone().without_autodiff());
            for sample in delta.chunks(64) {
                let size = match norm {
                    Norm::Linf => sample.iter().fold(0f32, |m, d| m.max(d.abs())),
                    Norm::L2 => sample.iter().map(|d| d * d).sum::<f32>().sqrt(),
                };
                assert!(size <= eps as f32 + 1e-5, "{norm:?} left the ball: {size}");
            }
            let pixels = host(adv);
            assert!(pixels.iter().all(|&p| (0.0..=1.0).contains(&p)));
        }
    }

    #[test]
    fn the_best_iterate_per_sample_is_never_worse_than_the_final_one() {
        let (model, x0, y) = setup(2);
        // Large steps, so the objective does not rise monotonically.
        let base = Pgd {
            step_size: 0.2,
            ..Pgd::linf(0.3, 6)
        };
        let best = base
            .attack(
                x0.clone(),
                objective::cross_entropy(&model, y.clone()),
                &mut rng(5),
            )
            .unwrap();
        let last = Pgd {
            keep: Keep::Final,
            ..base
        }
        .attack(
            x0.clone(),
            objective::cross_entropy(&model, y.clone()),
            &mut rng(5),
        )
        .unwrap();
        let (b, l) = (values(&model, best, &y), values(&model, last, &y));
        for (i, (b, l)) in b.iter().zip(&l).enumerate() {
            assert!(b >= l, "sample {i}: best {b} < final {l}");
        }
    }

    #[test]
    fn the_reference_rule_keeps_a_pre_step_iterate_and_an_unclipped_start() {
        let (model, x0, y) = setup(3);
        // One step: the only candidate is the start itself.
        let pgd = Pgd {
            start: RandomStart::None,
            ..Pgd::linf(0.1, 1).reference()
        };
        let kept = pgd
            .attack(
                x0.clone(),
                objective::cross_entropy(&model, y.clone()),
                &mut rng(0),
            )
            .unwrap();
        assert_eq!(host(kept), host(x0.clone()));
        // The unclipped random start leaves [0, 1] for pixels near its edges; one step keeps it.
        let edge = x0.clone().mul_scalar(0.0).add_scalar(1.0);
        let kept = Pgd::linf(0.1, 1)
            .reference()
            .attack(
                edge.clone(),
                objective::cross_entropy(&model, y.clone()),
                &mut rng(0),
            )
            .unwrap();
        assert!(host(kept).iter().any(|&p| p > 1.0));
        let clipped = Pgd::linf(0.1, 1)
            .attack(edge, objective::cross_entropy(&model, y), &mut rng(0))
            .unwrap();
        assert!(host(clipped).iter().all(|&p| p <= 1.0));
    }

    #[test]
    fn l2_step_moves_along_the_unit_gradient_then_projects_and_clips() {
        let x0 = t(vec![0.5, 0.5, 0.5, 0.5]);
        let grad = t(vec![3.0, 4.0, 0.0, 0.0]);
        // Unit gradient (0.6, 0.8); a step of 0.1 stays inside a ball of 1.
        let got = host(l2_step(x0.clone(), x0.clone(), grad.clone(), 0.1, 1.0));
        let expected = [0.56, 0.58, 0.5, 0.5];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        // A step of 1 leaves a ball of 0.25: scaled back to length 0.25, (0.15, 0.2).
        let got = host(l2_step(x0.clone(), x0.clone(), grad, 1.0, 0.25));
        let expected = [0.65, 0.7, 0.5, 0.5];
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{got:?}");
        }
        // Clipped to [0, 1] after the projection.
        let near_edge = t(vec![0.95, 0.5, 0.5, 0.5]);
        let got = host(l2_step(
            near_edge.clone(),
            near_edge,
            t(vec![1.0, 0.0, 0.0, 0.0]),
            0.2,
            1.0,
        ));
        assert_eq!(got[0], 1.0);
        // A zero gradient leaves the input.
        let got = host(l2_step(x0.clone(), x0.clone(), t(vec![0.0; 4]), 0.2, 1.0));
        assert_eq!(got, host(x0));
    }

    #[test]
    fn random_starts_fill_the_ball() {
        let dims = [50, 1, 4, 4];
        for (norm, eps) in [(Norm::Linf, 0.1), (Norm::L2, 0.5)] {
            let pgd = Pgd {
                norm,
                ..Pgd::linf(eps, 1)
            };
            let noise = host(pgd.random_start(dims, &mut rng(9), &default_device()));
            let sizes: Vec<f64> = noise
                .chunks(16)
                .map(|s| match norm {
                    Norm::Linf => s.iter().fold(0f64, |m, d| m.max(f64::from(d.abs()))),
                    Norm::L2 => s.iter().map(|d| f64::from(d * d)).sum::<f64>().sqrt(),
                })
                .collect();
            assert!(sizes.iter().all(|&s| s <= eps + 1e-6), "{norm:?}");
            // Uniform over the ball: in 16 dimensions most of the volume lies near the surface.
            let mean = sizes.iter().sum::<f64>() / sizes.len() as f64;
            assert!(mean > 0.8 * eps, "{norm:?}: mean size {mean}");
        }
    }

    #[test]
    fn settings_that_cannot_work_are_refused() {
        let x = t(vec![0.5]);
        let bad = [
            Pgd {
                eps: -0.1,
                ..Pgd::linf(0.1, 3)
            },
            Pgd {
                eps: f64::NAN,
                ..Pgd::linf(0.1, 3)
            },
            Pgd {
                step_size: f64::INFINITY,
                ..Pgd::linf(0.1, 3)
            },
            Pgd::linf(0.1, 0).reference(),
        ];
        for pgd in bad {
            assert!(
                pgd.attack(x.clone(), |x| x.sum_dim(1).reshape([1]), &mut rng(0))
                    .is_err(),
                "{pgd:?}"
            );
        }
    }
}
