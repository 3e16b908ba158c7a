//! ODIN (Liang et al. 2018): temperature scaling plus a small input perturbation that raises
//! the top softmax score, `x~ = x - eps sign(-grad_x log S_y(x; T))`; the score is
//! `-max softmax(f(x~) / T)`. ID inputs gain more confidence from the perturbation than OOD ones.
//!
//! The perturbation's sign is computed on a detached copy, so the score is differentiable in `x`
//! through `x~ = x + constant`: the straight-through view an adaptive attack on ODIN takes.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

use super::msp::msp_of_logits;
use super::{OodError, OodScore, ScoreKind};
use crate::attack::pgd::gradient_wrt_input;
use crate::models::{BnMode, Classifier};

/// ODIN with temperature `temperature` and perturbation size `eps` (the paper's CIFAR values:
/// 1000 and 0.0014).
#[derive(Debug, Clone, Copy)]
pub struct Odin {
    /// Temperature `T`.
    pub temperature: f64,
    /// Input perturbation size, in `[0, 1]` pixel units.
    pub eps: f64,
}

impl Default for Odin {
    fn default() -> Self {
        Self {
            temperature: 1000.0,
            eps: 0.0014,
        }
    }
}

impl OodScore for Odin {
    fn name(&self) -> &'static str {
        ScoreKind::Odin.name()
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        let t = self.temperature;
        // The gradient of log S_yhat(x; T) with yhat the predicted class, on a frozen copy.
        let device = x.device();
        let frozen = crate::attack::pgd::frozen(model, &device);
        let grad = gradient_wrt_input(x.clone().without_autodiff().autodiff(), |xa| {
            let logits = frozen.forward(xa, BnMode::Eval).div_scalar(t);
            let [n, _] = logits.dims();
            log_softmax(logits, 1)
                .max_dim(1)
                .reshape([n])
                .sum()
                .reshape([1])
        });
        // Step towards higher confidence: x + eps sign(grad log S) = x - eps sign(-grad log S).
        let step = grad.sign().mul_scalar(self.eps).without_autodiff();
        let step = if x.is_autodiff() {
            step.autodiff()
        } else {
            step
        };
        let logits = model.forward(x + step, BnMode::Eval).div_scalar(t);
        Ok(msp_of_logits(logits))
    }
}
