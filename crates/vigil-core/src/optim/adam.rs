//! Adam (Kingma and Ba 2015) as PyTorch's `torch.optim.Adam` without weight decay or amsgrad:
//! `m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
//! w -= lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)`.
//! With `weight_decay` it is `torch.optim.AdamW` (decoupled decay: `w -= lr wd w` before the
//! step). Used to train the small auxiliary networks of attacks (SSBA's encoder) and language
//! models.

use burn::module::ParamId;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{ParamSlots, UpdateRule};

/// Slot of the first-moment average.
pub const FIRST: &str = "adam_m";
/// Slot of the second-moment average.
pub const SECOND: &str = "adam_v";

/// One Adam step at step number `t` (1-based).
#[derive(Debug, Clone, Copy)]
pub struct Adam {
    /// Learning rate.
    pub lr: f64,
    /// First-moment decay (0.9).
    pub beta1: f64,
    /// Second-moment decay (0.999).
    pub beta2: f64,
    /// Added to the denominator (1e-8).
    pub eps: f64,
    /// Step number, from 1.
    pub t: i32,
    /// Decoupled weight decay (AdamW); 0 for Adam.
    pub weight_decay: f64,
}

/// AdamW's settings, as a training run records them.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Added to the denominator.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamConfig {
    /// `torch.optim.AdamW`'s defaults: betas (0.9, 0.999), eps 1e-8, weight decay 0.01.
    fn default() -> Self {
        Self {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

impl AdamConfig {
    /// The step of these settings at learning rate `lr`, step number `t` (from 1).
    pub fn at(&self, lr: f64, t: i32) -> Adam {
        Adam {
            lr,
            beta1: self.beta1,
            beta2: self.beta2,
            eps: self.eps,
            t,
            weight_decay: self.weight_decay,
        }
    }

    /// Why these settings cannot train, if they cannot.
    pub fn problem(&self) -> Option<String> {
        for (name, b) in [("beta1", self.beta1), ("beta2", self.beta2)] {
            if !(0.0..1.0).contains(&b) {
                return Some(format!("Adam's {name} must lie in [0, 1), got {b}"));
            }
        }
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Some(format!(
                "Adam's eps must be finite and > 0, got {}",
                self.eps
            ));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Some(format!(
                "weight decay must be finite and >= 0, got {}",
                self.weight_decay
            ));
        }
        None
    }
}

impl Adam {
    /// PyTorch's defaults at learning rate `lr`, step `t`.
    pub fn new(lr: f64, t: i32) -> Self {
        Self {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t,
            weight_decay: 0.0,
        }
    }
}

impl UpdateRule for Adam {
    fn update(
        &mut self,
        id: ParamId,
        value: Tensor<1>,
        grad: Tensor<1>,
        slots: &mut ParamSlots,
    ) -> Tensor<1> {
        let m = match slots.take(id, FIRST) {
            Some(m) => m.mul_scalar(self.beta1) + grad.clone().mul_scalar(1.0 - self.beta1),
            None => grad.clone().mul_scalar(1.0 - self.beta1),
        };
        let g2 = grad.clone() * grad;
        let v = match slots.take(id, SECOND) {
            Some(v) => v.mul_scalar(self.beta2) + g2.mul_scalar(1.0 - self.beta2),
            None => g2.mul_scalar(1.0 - self.beta2),
        };
        let m_hat = m.clone().div_scalar(1.0 - self.beta1.powi(self.t));
        let v_hat = v.clone().div_scalar(1.0 - self.beta2.powi(self.t));
        slots.insert(id, FIRST, m);
        slots.insert(id, SECOND, v);
        let value = if self.weight_decay > 0.0 {
            value.mul_scalar(1.0 - self.lr * self.weight_decay)
        } else {
            value
        };
        value - (m_hat / v_hat.sqrt().add_scalar(self.eps)).mul_scalar(self.lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    /// Two steps by hand, w0 = 1, grads 0.5 then -1, lr 0.1.
    #[test]
    fn two_steps_match_hand_computation() {
        let t = |v: f32| Tensor::<1>::from_data(TensorData::new(vec![v], [1]), &default_device());
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        let w1 = Adam::new(0.1, 1).update(id, t(1.0), t(0.5), &mut slots);
        let w2 = Adam::new(0.1, 2).update(id, w1.clone(), t(-1.0), &mut slots);
        let (b1, b2, eps) = (0.9f64, 0.999f64, 1e-8);
        // Step 1: m_hat = g, v_hat = g^2 -> w1 = 1 - 0.1 * 0.5 / (0.5 + eps).
        let e1 = 1.0 - 0.1 * 0.5 / (0.5 + eps);
        // m2 = b1 m1 + (1 - b1) g2, v2 = b2 v1 + (1 - b2) g2^2 with m1 = 0.05, v1 = 0.00025.
        let (m, v) = (b1 * 0.05 - 0.1, b2 * 0.00025 + 0.001);
        let e2 = e1 - 0.1 * (m / (1.0 - b1 * b1)) / ((v / (1.0 - b2 * b2)).sqrt() + eps);
        let got1 = f64::from(w1.into_scalar::<f32>());
        let got2 = f64::from(w2.into_scalar::<f32>());
        assert!((got1 - e1).abs() < 1e-6, "{got1} vs {e1}");
        assert!((got2 - e2).abs() < 1e-6, "{got2} vs {e2}");
    }

    /// `torch.optim.AdamW` with lr 0.1, weight decay 0.5 from w = [1, -2] over three gradients:
    /// `w = torch.nn.Parameter(torch.tensor([1., -2.])); opt = torch.optim.AdamW([w], lr=0.1,
    /// weight_decay=0.5)`, then `w.grad = torch.tensor(g); opt.step()` for each g below.
    #[test]
    fn adamw_matches_pytorch() {
        let device = default_device();
        let t = |v: [f32; 2]| Tensor::<1>::from_data(TensorData::new(v.to_vec(), [2]), &device);
        let config = AdamConfig {
            weight_decay: 0.5,
            ..AdamConfig::default()
        };
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        let mut w = t([1.0, -2.0]);
        let expected = [
            [0.85_f32, -2.0],
            [0.844_110_37, -1.982_146_5],
            [0.812_671_96, -1.922_053_5],
        ];
        let grads = [[0.5, 0.25], [-1.0, 2.0], [0.3, -0.7]];
        for (step, (g, want)) in grads.iter().zip(expected).enumerate() {
            w = config
                .at(0.1, step as i32 + 1)
                .update(id, w, t(*g), &mut slots);
            let got: Vec<f32> = w.to_data().try_to_vec().unwrap();
            for (a, b) in got.iter().zip(want) {
                assert!((a - b).abs() < 1e-6, "step {step}: {got:?} vs {want:?}");
            }
        }
    }
}
