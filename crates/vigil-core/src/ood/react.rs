//! ReAct (Sun et al. 2021): penultimate activations clipped at a high percentile of their ID
//! training values, then the energy score of the logits the head computes from them.

use burn::tensor::{Device, Tensor};

use super::energy::energy_of_logits;
use super::{OodError, OodScore, ScoreKind, features_of};
use crate::data::ImageSet;
use crate::models::{BnMode, Classifier};

/// ReAct with the clipping threshold at percentile `percentile` of the ID training activations
/// (0.9 in the paper); [`OodScore::fit`] sets the threshold.
#[derive(Debug, Clone)]
pub struct React {
    /// Percentile in `[0, 1]` of all ID training activations.
    pub percentile: f64,
    /// Batch size of the feature pass while fitting.
    pub batch_size: usize,
    threshold: Option<f64>,
}

impl React {
    /// An unfitted score clipping at `percentile`.
    pub fn new(percentile: f64, batch_size: usize) -> Self {
        Self {
            percentile,
            batch_size,
            threshold: None,
        }
    }

    /// Sets the threshold from ID training activations (any shape, flattened).
    pub fn fit_activations(&mut self, activations: &[f64]) -> Result<(), OodError> {
        if activations.is_empty() || !(0.0..=1.0).contains(&self.percentile) {
            return Err(OodError::Fit {
                score: "react",
                reason: format!(
                    "needs activations and a percentile in [0, 1], got {} values and {}",
                    activations.len(),
                    self.percentile
                ),
            });
        }
        let mut sorted = activations.to_vec();
        sorted.sort_by(f64::total_cmp);
        let index = (self.percentile * (sorted.len() - 1) as f64).floor() as usize;
        self.threshold = Some(sorted[index]);
        Ok(())
    }

    /// The fitted clipping threshold.
    pub fn threshold(&self) -> Option<f64> {
        self.threshold
    }
}

impl OodScore for React {
    fn name(&self) -> &'static str {
        ScoreKind::React.name()
    }

    fn fit(
        &mut self,
        model: &Classifier,
        id_train: &ImageSet,
        device: &Device,
    ) -> Result<(), OodError> {
        let (features, _, _) = features_of(model, id_train, self.batch_size.max(1), device);
        self.fit_activations(&features)
    }

    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError> {
        let threshold = self.threshold.ok_or(OodError::NotFitted("react"))?;
        let clipped = model.features(x, BnMode::Eval).clamp_max(threshold);
        let [n, _] = clipped.dims();
        let mut logits = clipped.matmul(model.network.head_weight());
        if let Some(bias) = model.network.head_bias() {
            let k = bias.dims()[0];
            logits = logits + bias.reshape([1, k]);
        }
        debug_assert_eq!(logits.dims()[0], n);
        Ok(energy_of_logits(logits, 1.0))
    }
}
