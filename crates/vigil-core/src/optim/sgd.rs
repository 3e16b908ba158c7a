//! Stochastic gradient descent exactly as PyTorch's `torch.optim.SGD` (dampening 0).
//!
//! Per parameter, with gradient g:
//! `g += wd * w; buf = g (first step) or mu * buf + g; g = g + mu * buf (Nesterov) or buf;
//! w -= lr * g`. Learning rate and momentum are set per step so schedules that cycle momentum
//! (one-cycle) work.

use burn::module::ParamId;
use burn::tensor::Tensor;
use serde::{Deserialize, Serialize};

use super::{ParamSlots, UpdateRule};

/// Name of the momentum-buffer slot.
pub const MOMENTUM_SLOT: &str = "momentum";

/// Hyper-parameters of [`Sgd`].
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct SgdConfig {
    /// Momentum coefficient mu (0 = plain SGD). A schedule may override it per step.
    pub momentum: f64,
    /// Nesterov momentum.
    pub nesterov: bool,
    /// L2 weight decay added to the gradient (PyTorch `weight_decay`).
    pub weight_decay: f64,
}

impl Default for SgdConfig {
    fn default() -> Self {
        Self {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 5e-4,
        }
    }
}

/// One SGD step with a given learning rate and momentum.
#[derive(Debug, Clone, Copy)]
pub struct Sgd {
    /// Fixed hyper-parameters.
    pub config: SgdConfig,
    /// Learning rate of this step.
    pub lr: f64,
    /// Momentum of this step (normally `config.momentum`).
    pub momentum: f64,
}

impl UpdateRule for Sgd {
    fn update(
        &mut self,
        id: ParamId,
        value: Tensor<1>,
        grad: Tensor<1>,
        slots: &mut ParamSlots,
    ) -> Tensor<1> {
        let mut g = grad;
        if self.config.weight_decay != 0.0 {
            g = g + value.clone().mul_scalar(self.config.weight_decay);
        }
        if self.momentum != 0.0 {
            let buf = match slots.take(id, MOMENTUM_SLOT) {
                Some(buf) => buf.mul_scalar(self.momentum) + g.clone(),
                None => g.clone(),
            };
            g = if self.config.nesterov {
                g + buf.clone().mul_scalar(self.momentum)
            } else {
                buf.clone()
            };
            slots.insert(id, MOMENTUM_SLOT, buf);
        }
        value - g.mul_scalar(self.lr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    fn t(v: &[f32]) -> Tensor<1> {
        Tensor::from_data(TensorData::new(v.to_vec(), [v.len()]), &default_device())
    }

    /// Three steps by hand: w0 = 1, grads 0.5, -0.2, 0.1, lr 0.1, mu 0.9, wd 0.01, Nesterov.
    #[test]
    fn nesterov_momentum_with_weight_decay_matches_hand_computation() {
        let config = SgdConfig {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.01,
        };
        let mut sgd = Sgd {
            config,
            lr: 0.1,
            momentum: 0.9,
        };
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        let (mut w, mut buf, mut expected) = (1.0f64, None::<f64>, Vec::new());
        let mut value = t(&[1.0]);
        for grad in [0.5f64, -0.2, 0.1] {
            let g = grad + 0.01 * w;
            let b = buf.map_or(g, |b| 0.9 * b + g);
            buf = Some(b);
            w -= 0.1 * (g + 0.9 * b);
            expected.push(w);
            value = sgd.update(id, value, t(&[grad as f32]), &mut slots);
            let got = value.to_data().try_to_vec::<f32>().unwrap()[0] as f64;
            assert!((got - w).abs() < 1e-6, "got {got}, expected {w}");
        }
        // PyTorch 2.15, float64:
        //   w = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
        //   opt = torch.optim.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
        //   for g in [0.5, -0.2, 0.1]: w.grad = torch.tensor([g], dtype=torch.float64); opt.step()
        let torch = [0.9031, 0.89807411, 0.855657258191];
        for (hand, torch) in expected.iter().zip(torch) {
            assert!((hand - torch).abs() < 1e-12, "hand {hand} vs torch {torch}");
        }
    }

    #[test]
    fn plain_momentum_uses_the_buffer_as_the_step() {
        let mut sgd = Sgd {
            config: SgdConfig {
                momentum: 0.5,
                nesterov: false,
                weight_decay: 0.0,
            },
            lr: 1.0,
            momentum: 0.5,
        };
        let id = ParamId::new();
        let mut slots = ParamSlots::new();
        let w1 = sgd.update(id, t(&[0.0]), t(&[1.0]), &mut slots);
        let w2 = sgd.update(id, w1, t(&[1.0]), &mut slots);
        // buf1 = 1 -> w1 = -1; buf2 = 0.5 + 1 = 1.5 -> w2 = -2.5
        assert!((w2.to_data().try_to_vec::<f32>().unwrap()[0] + 2.5).abs() < 1e-6);
    }
}
