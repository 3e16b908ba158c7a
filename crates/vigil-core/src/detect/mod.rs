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
//! [`fit_with_thresholds`] holds back part of the trusted set, fits on the rest, scores the
//! held-back part and puts each column's threshold at the target false-positive rate on it
//! (default 5%, [`ThresholdConfig`]). Method notes: `docs/detectors.md`.
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

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::data::ImageSet;
use crate::metrics::{MetricsError, TieBreak, threshold_for_fpr, tie_break_for_fpr};
use crate::models::Classifier;

pub use registry::DetectorSettings;

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
    /// that cost once (MAD-FA walks its chains once for the held-back trusted samples and the
    /// inputs together, which halves `vigil detect`'s time).
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

/// How thresholds are set from trusted data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdConfig {
    /// False-positive rate to aim for on clean inputs.
    pub target_fpr: f64,
    /// Fraction of each class's trusted samples held back to set thresholds (not fitted on).
    pub holdout_fraction: f64,
    /// What happens at the boundary (default: conservative).
    #[serde(default, skip_serializing_if = "TieRule::is_conservative")]
    pub ties: TieRule,
}

/// How a threshold treats the held-back scores at its boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TieRule {
    /// Flag at most the target rate of the held-back trusted scores ([`threshold_for_fpr`]):
    /// a tie group at the boundary is left unflagged whole, so a score with few values may
    /// flag far fewer, or none.
    #[default]
    Conservative,
    /// Also flag inputs just under that threshold at random (seeded by the input's pixels), so
    /// the expected rate on the held-back scores is the target exactly
    /// ([`crate::metrics::tie_break_for_fpr`]).
    Randomised,
}

impl TieRule {
    /// Whether this is the default rule.
    pub fn is_conservative(&self) -> bool {
        *self == Self::Conservative
    }
}

impl std::str::FromStr for TieRule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "conservative" => Ok(Self::Conservative),
            "randomised" | "randomized" => Ok(Self::Randomised),
            other => Err(format!("`{other}`: give conservative or randomised")),
        }
    }
}

impl Default for ThresholdConfig {
    fn default() -> Self {
        Self {
            target_fpr: 0.05,
            holdout_fraction: 0.25,
            ties: TieRule::Conservative,
        }
    }
}

impl ThresholdConfig {
    /// Refuses a target outside `[0, 1)` or a fraction outside `(0, 1)`.
    pub fn validate(&self) -> Result<(), DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: "thresholds".into(),
            reason,
        };
        if !(0.0..1.0).contains(&self.target_fpr) {
            return Err(bad(format!(
                "the target false-positive rate must be in [0, 1), got {}",
                self.target_fpr
            )));
        }
        if !(self.holdout_fraction > 0.0 && self.holdout_fraction < 1.0) {
            return Err(bad(format!(
                "the held-out fraction of the trusted set must be in (0, 1), got {}",
                self.holdout_fraction
            )));
        }
        Ok(())
    }
}

/// A fitted detector with a threshold per column, set on held-out trusted data.
pub struct ThresholdedDetector {
    /// The fitted detector.
    pub fitted: Box<dyn FittedDetector>,
    /// Per column, the score above which (`>=`) an input is flagged.
    pub thresholds: Vec<(String, f64)>,
    /// Per column with one ([`TieRule::Randomised`]), the random part of its threshold.
    pub tie_breaks: Vec<(String, TieBreak)>,
    /// Seed of the per-input draws of the tie breaks.
    pub seed: u64,
    /// The settings the thresholds were set with.
    pub config: ThresholdConfig,
    /// Number of trusted samples the detector was fitted on, and held back.
    pub fitted_on: usize,
    /// Number of trusted samples held back to set the thresholds.
    pub held_out: usize,
}

impl ThresholdedDetector {
    /// The threshold of column `name`.
    pub fn threshold(&self, name: &str) -> Option<f64> {
        self.thresholds
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }

    /// The random part of column `name`'s threshold, if it has one.
    pub fn tie_break(&self, name: &str) -> Option<TieBreak> {
        self.tie_breaks
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| *t)
    }

    /// Per column, whether each input of `table` is flagged (score `>=` threshold).
    pub fn flags(&self, table: &ScoreTable) -> Vec<(String, Vec<bool>)> {
        table
            .columns
            .iter()
            .filter_map(|(name, values)| {
                let t = self.threshold(name)?;
                Some((name.clone(), values.iter().map(|&v| v >= t).collect()))
            })
            .collect()
    }

    /// Per column, whether each input of `table` (scores of `inputs`) is flagged: score `>=`
    /// threshold or, with a tie break, score in `[below, threshold)` and the input's draw
    /// under the fraction. An input's draw depends only on its pixels and the seed, so the same
    /// image gets the same decision wherever it stands in a set.
    pub fn flags_for(&self, table: &ScoreTable, inputs: &ImageSet) -> Vec<(String, Vec<bool>)> {
        let draws = (!self.tie_breaks.is_empty()).then(|| input_draws(inputs, self.seed));
        table
            .columns
            .iter()
            .filter_map(|(name, values)| {
                let t = self.threshold(name)?;
                let tie = self.tie_break(name);
                let flags = values
                    .iter()
                    .enumerate()
                    .map(|(i, &v)| {
                        v >= t
                            || tie.is_some_and(|tie| {
                                v >= tie.below
                                    && draws
                                        .as_ref()
                                        .and_then(|d| d.get(i))
                                        .is_some_and(|&u| u < tie.fraction)
                            })
                    })
                    .collect();
                Some((name.clone(), flags))
            })
            .collect()
    }
}

/// A uniform draw in `[0, 1)` per input from its pixels and `seed` (BLAKE3).
fn input_draws(inputs: &ImageSet, seed: u64) -> Vec<f64> {
    (0..inputs.len())
        .map(|i| {
            let mut hasher = blake3::Hasher::new();
            hasher.update(&seed.to_le_bytes());
            for v in inputs.image(i) {
                hasher.update(&v.to_bits().to_le_bytes());
            }
            let bytes = hasher.finalize();
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes.as_bytes()[..8]);
            (u64::from_le_bytes(word) >> 11) as f64 / (1u64 << 53) as f64
        })
        .collect()
}

/// Splits `trusted` per class into a part to fit on and a held-out part (seeded): each class
/// with at least two samples gives `ceil(fraction * n)` of them, at most `n - 1`, to the
/// held-out part.
pub fn holdout_split(
    trusted: &ImageSet,
    fraction: f64,
    seed: u64,
) -> Result<(ImageSet, ImageSet), DetectError> {
    let (fit, held) = holdout_indices(trusted, fraction, seed)?;
    Ok((trusted.subset(&fit), trusted.subset(&held)))
}

/// The positions in `trusted` of [`holdout_split`]'s two parts, each in increasing order.
pub fn holdout_indices(
    trusted: &ImageSet,
    fraction: f64,
    seed: u64,
) -> Result<(Vec<usize>, Vec<usize>), DetectError> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0x7417_E5E7);
    let (mut fit, mut held) = (Vec::new(), Vec::new());
    for mut indices in trusted.indices_by_class() {
        indices.shuffle(&mut rng);
        let n = indices.len();
        let k = if n < 2 {
            0
        } else {
            ((fraction * n as f64).ceil() as usize).clamp(1, n - 1)
        };
        held.extend_from_slice(&indices[..k]);
        fit.extend_from_slice(&indices[k..]);
    }
    if held.is_empty() || fit.is_empty() {
        return Err(DetectError::Fit {
            detector: "thresholds".into(),
            reason: format!(
                "{} trusted samples leave nothing to hold back for thresholds (a class needs at least 2)",
                trusted.len()
            ),
        });
    }
    fit.sort_unstable();
    held.sort_unstable();
    Ok((fit, held))
}

/// Fits `detector` on part of the trusted data and sets each column's threshold at
/// `config.target_fpr` on the held-back rest ([`holdout_split`], [`threshold_for_fpr`]).
pub fn fit_with_thresholds(
    detector: &dyn Detector,
    data: &FitData<'_>,
    config: &ThresholdConfig,
) -> Result<ThresholdedDetector, DetectError> {
    Ok(fit_thresholds_and_score(detector, data, config, &[])?.0)
}

/// [`fit_with_thresholds`], then scores `inputs` too: the held-back trusted samples and the
/// inputs go to the fitted detector in one [`FittedDetector::score_sets`] call, so a detector
/// with a shared cost pays it once. Returns one table per input set.
pub fn fit_thresholds_and_score(
    detector: &dyn Detector,
    data: &FitData<'_>,
    config: &ThresholdConfig,
    inputs: &[&ImageSet],
) -> Result<(ThresholdedDetector, Vec<ScoreTable>), DetectError> {
    config.validate()?;
    let (fit_indices, held_indices) =
        holdout_indices(data.trusted, config.holdout_fraction, data.seed)?;
    let (fit_part, held_out) = (
        data.trusted.subset(&fit_indices),
        data.trusted.subset(&held_indices),
    );
    let fitted = detector.fit(&FitData {
        trusted: &fit_part,
        ..*data
    })?;
    let mut sets = vec![&held_out];
    sets.extend_from_slice(inputs);
    let mut tables = fitted.score_sets(data.model, &sets, data.device)?;
    if tables.len() != sets.len() {
        return Err(DetectError::Fit {
            detector: detector.name().into(),
            reason: format!("scored {} sets of {}", tables.len(), sets.len()),
        });
    }
    let held_out_table = tables.remove(0);
    // Attributions name trusted samples by their place in the whole trusted set.
    for table in &mut tables {
        if let Some(a) = &mut table.attributions {
            a.remap(&fit_indices);
        }
    }
    let thresholds = held_out_table
        .columns
        .iter()
        .map(|(name, values)| Ok((name.clone(), threshold_for_fpr(values, config.target_fpr)?)))
        .collect::<Result<Vec<_>, DetectError>>()?;
    let mut tie_breaks = Vec::new();
    if config.ties == TieRule::Randomised {
        for ((name, values), (_, t)) in held_out_table.columns.iter().zip(&thresholds) {
            if let Some(tie) = tie_break_for_fpr(values, *t, config.target_fpr)? {
                tie_breaks.push((name.clone(), tie));
            }
        }
    }
    let detector = ThresholdedDetector {
        fitted,
        thresholds,
        tie_breaks,
        seed: data.seed,
        config: config.clone(),
        fitted_on: fit_part.len(),
        held_out: held_out.len(),
    };
    Ok((detector, tables))
}

#[cfg(test)]
pub(crate) mod test_models;
#[cfg(test)]
mod tests;
