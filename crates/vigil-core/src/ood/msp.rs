//! Maximum softmax probability (Hendrycks and Gimpel 2017): `-max_c softmax(z)_c`.

use burn::tensor::Tensor;
use burn::tensor::activation::softmax;

use super::{OodError, OodScore, ScoreKind};
use crate::models::{BnMode, Classifier};

/// MSP: confident predictions are ID.
#[derive(Debug, Clone, Copy, Default)]
pub struct Msp;

impl OodScore for Msp {
    fn name(&self) -> &'static str {
        ScoreKind::Msp.name()
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        Ok(msp_of_logits(model.forward(x, BnMode::Eval)))
    }
}

/// `-max softmax(z)` of each row.
pub fn msp_of_logits(logits: Tensor<2>) -> Tensor<1> {
    let [n, _] = logits.dims();
    softmax(logits, 1).max_dim(1).reshape([n]).neg()
}
