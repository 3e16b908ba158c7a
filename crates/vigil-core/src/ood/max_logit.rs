//! Maximum logit (Hendrycks et al. 2022): `-max_c z_c`.

use burn::tensor::Tensor;

use super::{OodError, OodScore, ScoreKind};
use crate::models::{BnMode, Classifier};

/// Max logit: a large top logit is ID.
#[derive(Debug, Clone, Copy, Default)]
pub struct MaxLogit;

impl OodScore for MaxLogit {
    fn name(&self) -> &'static str {
        ScoreKind::MaxLogit.name()
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        let logits = model.forward(x, BnMode::Eval);
        let [n, _] = logits.dims();
        Ok(logits.max_dim(1).reshape([n]).neg())
    }
}
