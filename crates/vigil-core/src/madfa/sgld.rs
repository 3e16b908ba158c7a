//! Localized SGLD: the parameter sampler of MAD-FA (`docs/madfa.md`, "The pieces"), as an [`UpdateRule`].
//!
//! One step at `w_t`, with `g` the gradient of the mean cross-entropy over a minibatch of the
//! sampling set:
//!
//! ```text
//! V = a V + (1 - a) g^2                 (RMSprop only; V starts at 0, updated before G is used)
//! G = 1 / (eps + sqrt(V))               (RMSprop; G = 1 for plain SGLD)
//! w <- w - (lr/2) G (n_beta g + gamma (w - w*)) + sqrt(lr) sqrt(G) N(0, I)
//! ```
//!
//! w* (the trained weights) and `V` live in [`ParamSlots`] beside each parameter. The noise comes
//! from a host generator the caller seeds ([`NoiseDraws`]), never from burn's process-global
//! device RNG, so a chain is reproducible whatever else runs in the process.

use burn::module::ParamId;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::MadError;
use super::noise::NoiseDraws;
use crate::kernels::{self, SgldScalars};
use crate::optim::{ParamSlots, UpdateRule};

/// Slot holding w*, the weights the chain is localized at.
pub const W_STAR_SLOT: &str = "w_star";
/// Slot holding RMSprop's running average of squared gradients `V`.
pub const SQUARED_GRADIENT_SLOT: &str = "rmsprop_v";

/// How the step is preconditioned.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Preconditioner {
    /// RMSprop: `G = 1 / (eps + sqrt(V))` (devinterp's `rmsprop_sgld`, the reference).
    RmsProp {
        /// Decay of the squared-gradient average (0.99).
        alpha: f64,
        /// Added outside the square root (0.1); bounds `G` by `1 / eps`.
        eps: f64,
    },
    /// Plain SGLD, `G = 1`.
    Identity,
}

impl Preconditioner {
    /// The reference RMSprop preconditioner (alpha 0.99, eps 0.1).
    pub fn reference() -> Self {
        Preconditioner::RmsProp {
            alpha: 0.99,
            eps: 0.1,
        }
    }

    /// The largest value `G` can take: `1 / eps` for RMSprop (when `V = 0`), 1 for plain SGLD.
    pub fn max_gain(&self) -> f64 {
        match *self {
            Preconditioner::RmsProp { eps, .. } => 1.0 / eps,
            Preconditioner::Identity => 1.0,
        }
    }
}

/// Settings of the sampler's update.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgldConfig {
    /// Step size `lr` (reference 1e-6).
    pub lr: f64,
    /// Effective inverse temperature `n_beta` (reference 100).
    pub n_beta: f64,
    /// Localization strength `gamma` (reference 1e4).
    pub gamma: f64,
    /// Preconditioning (reference: RMSprop, alpha 0.99, eps 0.1).
    pub preconditioner: Preconditioner,
    /// Minibatch size of the sampling set (reference 256).
    pub batch_size: usize,
}

impl SgldConfig {
    /// The reference settings: lr 1e-6, n_beta 100, gamma 1e4, RMSprop, batch 256.
    pub fn reference() -> Self {
        Self {
            lr: 1e-6,
            n_beta: 100.0,
            gamma: 1e4,
            preconditioner: Preconditioner::reference(),
            batch_size: 256,
        }
    }

    /// The largest stable step size. The localization term alone maps `w - w*` to
    /// `(1 - (lr/2) gamma G)(w - w*)`, which grows without bound once `(lr/2) gamma max G >= 2`;
    /// so `lr` must stay below `4 / (gamma max G)` (infinite without localization).
    pub fn max_stable_lr(&self) -> f64 {
        if self.gamma <= 0.0 {
            return f64::INFINITY;
        }
        4.0 / (self.gamma * self.preconditioner.max_gain())
    }

    /// The fraction by which the localization pulls `w - w*` back per step where the
    /// preconditioner gain is largest, `(lr/2) gamma max G`: draws stay correlated over about
    /// `1/pull` steps, and the chain diverges at 2 (`calibrate::lr_for_pull` is its inverse).
    pub fn pull(&self) -> f64 {
        self.lr / 2.0 * self.gamma * self.preconditioner.max_gain()
    }

    /// The constants of one step as the update's kernel takes them.
    pub fn scalars(&self) -> SgldScalars {
        let half_lr = self.lr / 2.0;
        SgldScalars {
            drift: (half_lr * self.n_beta) as f32,
            pull: (half_lr * self.gamma) as f32,
            noise: self.lr.sqrt() as f32,
            rmsprop: match self.preconditioner {
                Preconditioner::RmsProp { alpha, eps } => {
                    Some([alpha as f32, (1.0 - alpha) as f32, eps as f32])
                }
                Preconditioner::Identity => None,
            },
        }
    }

    /// Checks the values, and refuses settings whose localization term alone diverges.
    pub fn validate(&self) -> Result<(), MadError> {
        let bad = |reason: String| Err(MadError::InvalidConfig(reason));
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return bad(format!("lr must be positive, got {}", self.lr));
        }
        if !(self.n_beta.is_finite() && self.n_beta >= 0.0) {
            return bad(format!("n_beta must be >= 0, got {}", self.n_beta));
        }
        if !(self.gamma.is_finite() && self.gamma >= 0.0) {
            return bad(format!("gamma must be >= 0, got {}", self.gamma));
        }
        if self.batch_size == 0 {
            return bad("the sampling batch size must be at least 1".into());
        }
        if let Preconditioner::RmsProp { alpha, eps } = self.preconditioner {
            if !(0.0..1.0).contains(&alpha) {
                return bad(format!("RMSprop alpha must lie in [0, 1), got {alpha}"));
            }
            if !(eps.is_finite() && eps > 0.0) {
                return bad(format!("RMSprop eps must be positive, got {eps}"));
            }
        }
        let max_lr = self.max_stable_lr();
        if self.lr >= max_lr {
            return Err(MadError::Unstable {
                lr: self.lr,
                gamma: self.gamma,
                max_gain: self.preconditioner.max_gain(),
                max_lr,
            });
        }
        Ok(())
    }
}

/// Euclidean norms of one step's three terms and of the distance from w* after it, over all
/// parameters: whether the gradient drift matters against the noise, and how far the chain is.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct StepNorms {
    /// `|| (lr/2) G n_beta g ||`.
    pub drift: f64,
    /// `|| (lr/2) G gamma (w - w*) ||`.
    pub localization: f64,
    /// `|| sqrt(lr) sqrt(G) N ||`.
    pub noise: f64,
    /// `|| w_{t+1} - w* ||`.
    pub distance: f64,
}

/// One localized SGLD step, applied parameter by parameter through
/// [`crate::optim::apply_update`]. Every parameter must have a [`W_STAR_SLOT`]; the RMSprop
/// average is created on the first step.
pub struct LocalizedSgld<'a> {
    config: &'a SgldConfig,
    noise: NoiseDraws,
    /// Squared norms of drift, localization, noise and distance, one entry per parameter.
    squared: Vec<[f64; 4]>,
    missing_w_star: usize,
    /// The standard-normal draws of each updated parameter, kept only when asked for
    /// ([`LocalizedSgld::keeping_noise`]).
    kept_noise: Option<Vec<(ParamId, Vec<f32>)>>,
}

impl<'a> LocalizedSgld<'a> {
    /// A step with `config`, its Gaussian noise drawn from a generator seeded with `noise_seed`
    /// (parameters in visiting order, each element in order).
    pub fn new(config: &'a SgldConfig, noise_seed: u64) -> Self {
        Self {
            config,
            noise: NoiseDraws::on_the_spot(noise_seed),
            squared: Vec::new(),
            missing_w_star: 0,
            kept_noise: None,
        }
    }

    /// The same step with its noise drawn ahead on a background thread from now on
    /// ([`NoiseDraws::prefetched`]; the same values): create it before the step's forward pass,
    /// with `count` the number of values the step updates ([`crate::optim::trainable_values`]).
    pub fn prefetched(config: &'a SgldConfig, noise_seed: u64, count: usize) -> Self {
        Self {
            noise: NoiseDraws::prefetched(noise_seed, count),
            ..Self::new(config, noise_seed)
        }
    }

    /// The same step, also keeping a copy of every parameter's standard-normal draw `N` (before
    /// the scaling by `sqrt(lr) sqrt(G)`) for [`LocalizedSgld::take_noise`]: what another
    /// implementation needs to replay the chain. The draws themselves do not change.
    pub fn keeping_noise(mut self) -> Self {
        self.kept_noise = Some(Vec::new());
        self
    }

    /// The draws kept so far, one per updated parameter in update order (empty unless
    /// [`LocalizedSgld::keeping_noise`]).
    pub fn take_noise(&mut self) -> Vec<(ParamId, Vec<f32>)> {
        self.kept_noise
            .as_mut()
            .map(std::mem::take)
            .unwrap_or_default()
    }

    /// The norms of the step just taken; an error if a parameter had no w* to be pulled to.
    pub fn finish(self) -> Result<StepNorms, MadError> {
        if self.missing_w_star > 0 {
            return Err(MadError::InvalidConfig(format!(
                "{} parameters have no w* slot: take the snapshot before the first step",
                self.missing_w_star
            )));
        }
        let mut sums = [0.0f64; 4];
        for terms in self.squared {
            for (sum, t) in sums.iter_mut().zip(terms) {
                *sum += t;
            }
        }
        Ok(StepNorms {
            drift: sums[0].sqrt(),
            localization: sums[1].sqrt(),
            noise: sums[2].sqrt(),
            distance: sums[3].sqrt(),
        })
    }
}

impl UpdateRule for LocalizedSgld<'_> {
    fn update(
        &mut self,
        id: ParamId,
        value: Tensor<1>,
        grad: Tensor<1>,
        slots: &mut ParamSlots,
    ) -> Tensor<1> {
        let [n] = value.dims();
        let Some(w_star) = slots.get(id, W_STAR_SLOT).cloned() else {
            self.missing_w_star += 1;
            return value;
        };
        let noise = self.noise.take(n);
        if let Some(kept) = &mut self.kept_noise {
            kept.push((id, noise.clone()));
        }
        let average = slots.take(id, SQUARED_GRADIENT_SLOT);
        let (next, average, squared) =
            kernels::sgld_step(&self.config.scalars(), value, grad, w_star, average, noise);
        if let Some(v) = average {
            slots.insert(id, SQUARED_GRADIENT_SLOT, v);
        }
        self.squared.push(squared);
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use rand_distr::StandardNormal;

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &default_device())
    }

    fn values(t: Tensor<1>) -> Vec<f64> {
        t.into_data()
            .iter::<f32>()
            .map(f64::from)
            .collect::<Vec<_>>()
    }

    /// Two steps on a 2-parameter "model" (a flat parameter with given gradients), against the
    /// update written out by hand in f64 with the same noise draw.
    #[test]
    fn rmsprop_steps_match_hand_computation() {
        let config = SgldConfig {
            lr: 1e-3,
            n_beta: 10.0,
            gamma: 100.0,
            preconditioner: Preconditioner::RmsProp {
                alpha: 0.9,
                eps: 0.1,
            },
            batch_size: 1,
        };
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        let w_star = [0.5f64, -1.0];
        slots.insert(id, W_STAR_SLOT, t(&[0.5, -1.0]));
        let mut w = [0.6f64, -1.2];
        let mut value = t(&[0.6, -1.2]);
        let mut v = [0.0f64; 2];
        for (step, grad) in [[0.3f64, -2.0], [0.1, 0.4]].into_iter().enumerate() {
            let seed = 7 + step as u64;
            let mut rng = StdRng::seed_from_u64(seed);
            let draw: Vec<f32> = (0..2).map(|_| rng.sample(StandardNormal)).collect();
            let mut expected = [0.0f64; 2];
            for i in 0..2 {
                v[i] = 0.9 * v[i] + 0.1 * grad[i] * grad[i];
                let g = 1.0 / (0.1 + v[i].sqrt());
                expected[i] = w[i] - 0.5e-3 * g * (10.0 * grad[i] + 100.0 * (w[i] - w_star[i]))
                    + 1e-3f64.sqrt() * g.sqrt() * f64::from(draw[i]);
            }
            let mut rule = LocalizedSgld::new(&config, seed);
            let grad_t = t(&[grad[0] as f32, grad[1] as f32]);
            value = rule.update(id, value, grad_t, &mut slots);
            let norms = rule.finish().unwrap();
            let got = values(value.clone());
            for i in 0..2 {
                assert!(
                    (got[i] - expected[i]).abs() < 1e-6,
                    "step {step}, w[{i}]: {} vs {}",
                    got[i],
                    expected[i]
                );
            }
            let dist =
                ((expected[0] - w_star[0]).powi(2) + (expected[1] - w_star[1]).powi(2)).sqrt();
            assert!((norms.distance - dist).abs() < 1e-6);
            w = expected;
        }
        let v_slot = values(slots.get(id, SQUARED_GRADIENT_SLOT).unwrap().clone());
        assert!((v_slot[0] - v[0]).abs() < 1e-7 && (v_slot[1] - v[1]).abs() < 1e-7);
    }

    #[test]
    fn plain_sgld_has_unit_gain_and_the_norms_of_its_terms() {
        let config = SgldConfig {
            lr: 0.01,
            n_beta: 2.0,
            gamma: 4.0,
            preconditioner: Preconditioner::Identity,
            batch_size: 1,
        };
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        slots.insert(id, W_STAR_SLOT, t(&[0.0, 0.0]));
        let mut rule = LocalizedSgld::new(&config, 3);
        let next = values(rule.update(id, t(&[1.0, 2.0]), t(&[0.5, 0.5]), &mut slots));
        let norms = rule.finish().unwrap();
        let mut rng = StdRng::seed_from_u64(3);
        let draw: Vec<f64> = (0..2)
            .map(|_| f64::from(rng.sample::<f32, _>(StandardNormal)))
            .collect();
        // drift = 0.005 * 2 * 0.5 = 0.005 per element; pull = 0.005 * 4 * w.
        assert!((norms.drift - (2.0f64 * 0.005f64.powi(2)).sqrt()).abs() < 1e-7);
        assert!((norms.localization - (0.02f64.powi(2) + 0.04f64.powi(2)).sqrt()).abs() < 1e-7);
        let noise = 0.1 * (draw[0].powi(2) + draw[1].powi(2)).sqrt();
        assert!((norms.noise - noise).abs() < 1e-6);
        assert!((next[0] - (1.0 - 0.005 - 0.02 + 0.1 * draw[0])).abs() < 1e-6);
        assert!(slots.get(id, SQUARED_GRADIENT_SLOT).is_none());
    }

    #[test]
    fn unstable_settings_are_refused_with_the_largest_stable_lr() {
        let reference = SgldConfig::reference();
        reference.validate().unwrap();
        assert!((reference.max_stable_lr() - 4e-5).abs() < 1e-15);
        let too_fast = SgldConfig {
            lr: 4e-5,
            ..reference
        };
        let err = too_fast.validate().unwrap_err().to_string();
        assert!(err.contains("4.0e-5") || err.contains("4e-5"), "{err}");
        let missing = SgldConfig::reference();
        let mut rule = LocalizedSgld::new(&missing, 0);
        let mut slots = ParamSlots::new();
        rule.update(ParamId::new(), t(&[1.0]), t(&[1.0]), &mut slots);
        assert!(rule.finish().is_err());
    }
}
