//! Detectors of anomalous inputs behind one vocabulary: settings, fit, score, threshold.
//!
//! Every detector, MAD-FA and the baselines alike, answers the same two questions, the way
//! linfa and scikit-learn estimators do:
//!
//! 1. **Fit** on the model and clean data the user trusts ([`FitData`]): a [`Detector`] (its
//!    settings, checked once when built by the [`registry`]) returns a separate
//!    [`FittedDetector`], so "not fitted" cannot happen at run time.
//! 2. **Score** a whole set of inputs into named columns, one value per input per column,
//!    **higher = more anomalous** ([`ScoreTable`]).
//!
//! A detector never sees ground truth: it is given images only, and whatever says which inputs
//! are anomalous ([`GroundTruth`]) is read by the evaluation alone.
//!
//! A deployable detector also needs a threshold, set from trusted data alone:
//! [`fit_with_thresholds`] puts each column's threshold at the target false-positive rate
//! (default 5%, [`ThresholdConfig`]) on scores of trusted samples the scoring detector was not
//! fitted on: every trusted sample when the detector's scores ignore the trusted set or it
//! scores them leave-one-out (MAD-FA), else a held-back part ([`ThresholdSplit`]). Method notes:
//! `docs/detectors.md`.
//!
//! A new detector is one file (its settings and its [`Detector`] impl) and one
//! [`registry::DetectorSettings`] variant.

pub mod experiment;
pub mod files;
pub mod ibd_psc;
pub mod latent;
pub mod madfa;
pub mod ood_score;
pub mod page;
pub mod que;
pub mod registry;
pub mod scale_up;
pub mod sentinet;
pub mod spectral;
pub mod strip;
pub mod teco;
pub mod threshold;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::metrics::MetricsError;
use crate::models::Classifier;

pub use registry::DetectorSettings;
pub use threshold::{
    ThresholdConfig, ThresholdSplit, ThresholdedDetector, TieRule, TrustedDependence,
    fit_thresholds_and_score, fit_with_thresholds, holdout_indices, holdout_split,
};

/// Errors of building, fitting or applying a detector.
#[derive(Debug, thiserror::Error)]
pub enum DetectError {
    /// The detector's settings are invalid.
    #[error("invalid settings for {detector}: {reason}")]
    Settings {
        /// The detector's name.
        detector: String,
        /// What is wrong.
        reason: String,
    },
    /// The data cannot support the detector (too few samples, wrong shape, ...).
    #[error("{detector} cannot be fitted: {reason}")]
    Fit {
        /// The detector's name.
        detector: String,
        /// Why.
        reason: String,
    },
    /// The detector does not apply to this model (e.g. IBD-PSC needs BatchNorm layers).
    #[error("{detector} does not apply to this model: {reason}")]
    NotApplicable {
        /// The detector's name.
        detector: String,
        /// Why.
        reason: String,
    },
    /// No detector has this name.
    #[error("unknown detector `{name}` (one of {known})")]
    Unknown {
        /// The name asked for.
        name: String,
        /// The names there are, comma-separated.
        known: String,
    },
    /// A score, threshold or metric could not be computed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// An OOD score failed.
    #[error(transparent)]
    Ood(#[from] crate::ood::OodError),
    /// MAD-FA failed.
    #[error(transparent)]
    Madfa(#[from] crate::madfa::MadError),
    /// Data could not be prepared.
    #[error(transparent)]
    Data(#[from] crate::data::DataError),
    /// An output file could not be written.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// The caller's [`Progress`](crate::progress::Progress) asked to stop between detectors.
    #[error("stopped before every detector ran")]
    Stopped,
}

/// What a detector is fitted on.
pub struct FitData<'a> {
    /// The model under inspection.
    pub model: &'a Classifier,
    /// Clean inputs the user trusts, labelled with their true classes.
    pub trusted: &'a ImageSet,
    /// More clean labelled inputs, disjoint from `trusted`: MAD-FA's chain draws its minibatches
    /// from them; STRIP superimposes them.
    pub sampling: &'a ImageSet,
    /// Batch size of forward passes.
    pub batch_size: usize,
    /// Seed of every random choice the detector makes.
    pub seed: u64,
    /// Where tensors live.
    pub device: &'a Device,
}

/// A detector's settings, checked: fitting it gives a [`FittedDetector`].
pub trait Detector {
    /// Short name for reports and the command line (`madfa`, `strip`, `mahalanobis`, ...).
    fn name(&self) -> &str;

    /// Fits the detector on clean data; never sees an anomalous input.
    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError>;

    /// How its scores depend on the trusted set it is fitted on (default: they do), which
    /// decides where its thresholds' trusted scores come from ([`ThresholdSplit`]).
    fn trusted_dependence(&self) -> TrustedDependence {
        TrustedDependence::Fitted
    }
}

/// A fitted detector: scores inputs, higher = more anomalous.
pub trait FittedDetector {
    /// The detector's name.
    fn name(&self) -> &str;

    /// Names of the score columns, in [`ScoreTable`] order.
    fn columns(&self) -> Vec<String>;

    /// Scores every input of `inputs` (their labels are not read).
    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError>;

    /// Scores several input sets, one table each: the same tables as [`Self::score`] on each
    /// set in turn. A detector whose cost is mostly shared between sets overrides it to pay
    /// that cost once (MAD-FA walks its chains once for all the sets).
    fn score_sets(
        &self,
        model: &Classifier,
        sets: &[&ImageSet],
        device: &Device,
    ) -> Result<Vec<ScoreTable>, DetectError> {
        sets.iter()
            .map(|set| self.score(model, set, device))
            .collect()
    }

    /// [`Self::score_sets`], and the scores of the trusted samples the detector was fitted on,
    /// each scored as if it had been left out of the fit (leave-one-out), in one pass. `None`
    /// (the default) when the detector cannot do that cheaply: the thresholds then come from
    /// a held-back part or cross-fitting ([`ThresholdSplit`]). MAD-FA can: its trusted traces are
    /// recorded along every walk, and a trusted sample's coupling to the others is its score
    /// against the trusted set without it.
    fn score_sets_and_trusted(
        &self,
        model: &Classifier,
        sets: &[&ImageSet],
        device: &Device,
    ) -> Result<(Vec<ScoreTable>, Option<ScoreTable>), DetectError> {
        Ok((self.score_sets(model, sets, device)?, None))
    }
}

/// Scores of a set of inputs: named columns of one value per input, higher = more anomalous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreTable {
    /// `(column name, one value per input)`.
    pub columns: Vec<(String, Vec<f64>)>,
    /// For a detector that explains its scores by trusted samples (MAD-FA): per input, the
    /// trusted samples it is most and least attributed to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attributions: Option<TrustedAttributions>,
}

/// Per input, the trusted samples whose traces move most and least with its own.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrustedAttributions {
    /// Per input, the most attributed trusted samples, strongest first. `trusted` indexes the
    /// trusted set given to the detector's fit; in results of [`fit_thresholds_and_score`] and
    /// of an experiment, the whole trusted set of [`FitData`].
    pub most: Vec<Vec<crate::madfa::Attribution>>,
    /// Per input, the least attributed trusted samples, most negative correlation first.
    pub least: Vec<Vec<crate::madfa::Attribution>>,
}

impl TrustedAttributions {
    /// Inputs `range` only.
    pub fn slice(&self, range: std::ops::Range<usize>) -> Self {
        Self {
            most: self.most[range.clone()].to_vec(),
            least: self.least[range].to_vec(),
        }
    }

    /// Each trusted position `i` replaced by `map[i]`.
    fn remap(&mut self, map: &[usize]) {
        for a in self.most.iter_mut().chain(&mut self.least).flatten() {
            a.trusted = map[a.trusted];
        }
    }
}

impl ScoreTable {
    /// A table of `columns`; every column must have the same length.
    pub fn new(columns: Vec<(String, Vec<f64>)>) -> Result<Self, DetectError> {
        if let Some(((first, a), (other, b))) = columns.first().and_then(|f| {
            columns
                .iter()
                .find(|c| c.1.len() != f.1.len())
                .map(|c| (f, c))
        }) {
            return Err(DetectError::Fit {
                detector: "score table".into(),
                reason: format!(
                    "column {first} has {} values but {other} has {}",
                    a.len(),
                    b.len()
                ),
            });
        }
        Ok(Self {
            columns,
            attributions: None,
        })
    }

    /// The table with per-input trusted attributions (one entry per input).
    pub fn with_attributions(mut self, a: TrustedAttributions) -> Result<Self, DetectError> {
        if a.most.len() != self.len() || a.least.len() != self.len() {
            return Err(DetectError::Fit {
                detector: "score table".into(),
                reason: format!(
                    "{} and {} attributions for {} inputs",
                    a.most.len(),
                    a.least.len(),
                    self.len()
                ),
            });
        }
        self.attributions = Some(a);
        Ok(self)
    }

    /// Number of inputs scored.
    pub fn len(&self) -> usize {
        self.columns.first().map_or(0, |c| c.1.len())
    }

    /// Whether no input was scored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The values of column `name`.
    pub fn column(&self, name: &str) -> Option<&[f64]> {
        self.columns
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Which inputs are anomalous: read by the evaluation only, never given to a detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroundTruth {
    /// Per input, whether it is anomalous (e.g. carries a trigger).
    pub is_anomalous: Vec<bool>,
}

impl GroundTruth {
    /// `scores` (one per input) split into the normal inputs' and the anomalous inputs', each in
    /// input order.
    pub fn split_scores(&self, scores: &[f64]) -> (Vec<f64>, Vec<f64>) {
        split_by(scores, &self.is_anomalous)
    }
}

/// `values` split by `is_anomalous` into (normal, anomalous), each in order.
fn split_by(values: &[f64], is_anomalous: &[bool]) -> (Vec<f64>, Vec<f64>) {
    let (mut normal, mut anomalous) = (Vec::new(), Vec::new());
    for (&v, &a) in values.iter().zip(is_anomalous) {
        if a {
            anomalous.push(v);
        } else {
            normal.push(v);
        }
    }
    (normal, anomalous)
}

#[cfg(test)]
pub(crate) mod test_models;
#[cfg(test)]
mod tests;
