//! Every post-hoc OOD score of [`crate::ood`] (MSP, energy, max logit, ODIN, Mahalanobis, k-NN,
//! ReAct) as a detector, through one adapter: fit the score on the trusted set, score inputs.
//! The OOD scores already follow the convention higher = more anomalous. Mahalanobis on the
//! penultimate features is the latent-space baseline of cupbearer and BackdoorBench.

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable, TrustedDependence};
use crate::data::ImageSet;
use crate::models::Classifier;
use crate::ood::{OodScore, ScoreKind, score_set};

/// Settings: which OOD score, with the papers' settings ([`ScoreKind::build`]).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OodScoreSettings {
    /// The score.
    pub score: ScoreKind,
}

/// An OOD score as a detector.
pub struct OodScoreDetector {
    settings: OodScoreSettings,
}

impl OodScoreDetector {
    /// The detector of `settings` (nothing to check: every score kind is valid).
    pub fn new(settings: OodScoreSettings) -> Self {
        Self { settings }
    }
}

/// A fitted OOD score.
pub struct FittedOodScore {
    kind: ScoreKind,
    score: Box<dyn OodScore>,
    batch_size: usize,
}

impl Detector for OodScoreDetector {
    fn name(&self) -> &str {
        self.settings.score.name()
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        let mut score = self.settings.score.build(data.batch_size);
        score.fit(data.model, data.trusted, data.device)?;
        Ok(Box::new(FittedOodScore {
            kind: self.settings.score,
            score,
            batch_size: data.batch_size,
        }))
    }

    /// MSP, energy, max logit and ODIN read only the model's outputs; Mahalanobis, k-NN and
    /// ReAct fit statistics of the trusted set.
    fn trusted_dependence(&self) -> TrustedDependence {
        match self.settings.score {
            ScoreKind::Mahalanobis | ScoreKind::Knn | ScoreKind::React => TrustedDependence::Fitted,
            ScoreKind::Msp | ScoreKind::Energy | ScoreKind::MaxLogit | ScoreKind::Odin => {
                TrustedDependence::None
            }
        }
    }
}

impl FittedDetector for FittedOodScore {
    fn name(&self) -> &str {
        self.kind.name()
    }

    fn columns(&self) -> Vec<String> {
        vec![self.kind.name().to_string()]
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let values = score_set(self.score.as_ref(), model, inputs, self.batch_size, device)?;
        ScoreTable::new(vec![(self.kind.name().to_string(), values)])
    }
}
