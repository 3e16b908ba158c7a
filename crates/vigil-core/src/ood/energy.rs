//! Energy (Liu et al. 2020): `E(x) = -T logsumexp(z / T)`; ID inputs have lower energy.

use burn::tensor::Tensor;

use super::{OodError, OodScore, ScoreKind};
use crate::models::{BnMode, Classifier};

/// The energy score at temperature `temperature` (1 in the paper).
#[derive(Debug, Clone, Copy)]
pub struct Energy {
    /// Temperature `T`.
    pub temperature: f64,
}

impl Default for Energy {
    fn default() -> Self {
        Self { temperature: 1.0 }
    }
}

impl OodScore for Energy {
    fn name(&self) -> &'static str {
        ScoreKind::Energy.name()
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        Ok(energy_of_logits(
            model.forward(x, BnMode::Eval),
            self.temperature,
        ))
    }
}

/// `-T logsumexp(z / T)` of each row, computed stably.
pub fn energy_of_logits(logits: Tensor<2>, temperature: f64) -> Tensor<1> {
    let [n, _] = logits.dims();
    let z = logits.div_scalar(temperature);
    let max = z.clone().max_dim(1);
    let lse = (z - max.clone()).exp().sum_dim(1).log() + max;
    lse.reshape([n]).mul_scalar(-temperature)
}
