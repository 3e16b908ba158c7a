//! Thresholds from trusted data alone: each score column's threshold at a target
//! false-positive rate on trusted samples the detector was not fitted on.

use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable};
use crate::data::ImageSet;
use crate::metrics::{TieBreak, threshold_for_fpr, tie_break_for_fpr};

/// How thresholds are set from trusted data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ThresholdConfig {
    /// False-positive rate to aim for on clean inputs.
    pub target_fpr: f64,
    /// Which trusted samples' scores the thresholds are set on, and what is fitted on.
    pub split: ThresholdSplit,
    /// What happens at the boundary (default: randomised, so the expected rate is the target
    /// for every score, including one with few values).
    pub ties: TieRule,
}

/// Where the trusted scores that set a threshold come from. Every score is of a trusted sample
/// the scoring detector was not fitted on, so it stands for a fresh clean input's score.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum ThresholdSplit {
    /// Default: every trusted sample when the detector's scores allow it
    /// ([`TrustedDependence::None`]: the scores ignore the trusted set;
    /// [`TrustedDependence::LeaveOneOut`]: MAD-FA scores its own trusted samples leave-one-out),
    /// else `fraction` of each class held back as in [`Self::Holdout`]. The detector is fitted
    /// once either way.
    Auto {
        /// Fraction held back from a detector whose scores depend on what it is fitted on.
        fraction: f64,
    },
    /// Hold back `fraction` of each class's trusted samples from every detector, fit on the rest
    /// and set the thresholds on the held-back part (the reference setting).
    Holdout {
        /// Fraction held back, in `(0, 1)`.
        fraction: f64,
    },
    /// As [`Self::Auto`], but a detector whose scores depend on its fit is cut into `folds`
    /// per-class folds, each scored by the detector fitted on the others, and the detector that
    /// scores the inputs is fitted on all. Sound only when the fitted score barely changes
    /// between fits: on the small CNN it broke SentiNet (its boundary is fitted to the top
    /// trusted points) and SCALE-UP's `spc_z` (a discrete score shifted by fitted statistics),
    /// `docs/detectors.md`.
    CrossFit {
        /// Number of folds, at least 2.
        folds: usize,
    },
}

/// How a detector's scores depend on the trusted set it is fitted on, which decides how its
/// thresholds can get trusted scores it was not fitted on ([`ThresholdSplit`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrustedDependence {
    /// The scores do not read the trusted set (MSP, energy, max logit, ODIN, STRIP, TeCo): every
    /// trusted sample is scored by the one fitted detector, as any input is.
    None,
    /// The fitted detector scores its trusted samples leave-one-out
    /// ([`FittedDetector::score_sets_and_trusted`]; MAD-FA).
    LeaveOneOut,
    /// The scores come from statistics of the trusted set (Mahalanobis, k-NN, ReAct, SCALE-UP's
    /// `spc_z`, SentiNet, IBD-PSC, spectral, QUE): a held-back part, or cross-fitting.
    Fitted,
}

impl ThresholdSplit {
    /// The trusted scores a threshold is set on, in words for reports.
    pub fn describe(&self) -> String {
        let held = |fraction: f64| {
            format!(
                "{:.0}% of each class's trusted samples held back from fitting",
                fraction * 100.0
            )
        };
        match self {
            Self::Auto { fraction } => format!(
                "every trusted sample for detectors whose scores ignore the trusted set and MAD-FA (leave-one-out), else {}",
                held(*fraction)
            ),
            Self::Holdout { fraction } => held(*fraction),
            Self::CrossFit { folds } => format!(
                "every trusted sample: scored by the one fit where the scores allow it (MAD-FA leave-one-out), else {folds}-fold cross-fitting"
            ),
        }
    }
}

impl Default for ThresholdSplit {
    fn default() -> Self {
        Self::Auto { fraction: 0.25 }
    }
}

/// How a threshold treats the trusted scores at its boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TieRule {
    /// Flag at most the target rate of the trusted scores ([`threshold_for_fpr`]): a tie
    /// group at the boundary is left unflagged whole, so a score with few values may flag far
    /// fewer, or none (SCALE-UP's six values flag no clean input at 5%), and a continuous one
    /// flags `floor(target * n) / n` of them.
    Conservative,
    /// Also flag inputs just under that threshold at random, so the expected rate on the
    /// trusted scores is the target exactly (Neyman-Pearson's randomised test,
    /// [`crate::metrics::tie_break_for_fpr`]). Each input's draw comes from its pixels and the
    /// seed, so an image gets the same decision in any set and on every rerun. Only inputs
    /// tied with the boundary score are decided at random: with continuous scores, one value.
    #[default]
    Randomised,
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
            split: ThresholdSplit::default(),
            ties: TieRule::default(),
        }
    }
}

impl ThresholdConfig {
    /// Refuses a target outside `[0, 1)`, fewer than 2 folds or a fraction outside `(0, 1)`.
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
        match self.split {
            ThresholdSplit::CrossFit { folds } if folds < 2 => Err(bad(format!(
                "cross-fitting needs at least 2 folds, got {folds}"
            ))),
            ThresholdSplit::Auto { fraction } | ThresholdSplit::Holdout { fraction }
                if !(fraction > 0.0 && fraction < 1.0) =>
            {
                Err(bad(format!(
                    "the held-out fraction of the trusted set must be in (0, 1), got {fraction}"
                )))
            }
            _ => Ok(()),
        }
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
    /// Number of trusted samples the detector that scores inputs was fitted on.
    pub fitted_on: usize,
    /// Number of trusted scores the thresholds were set on (held back, or scored out of fold).
    pub threshold_samples: usize,
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
        return Err(DetectError::Settings {
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

/// Fits `detector` on the trusted data and sets each column's threshold at
/// `config.target_fpr` on trusted scores it was not fitted on ([`ThresholdSplit`],
/// [`threshold_for_fpr`]).
pub fn fit_with_thresholds(
    detector: &dyn Detector,
    data: &FitData<'_>,
    config: &ThresholdConfig,
) -> Result<ThresholdedDetector, DetectError> {
    Ok(fit_thresholds_and_score(detector, data, config, &[])?.0)
}

/// [`fit_with_thresholds`], then scores `inputs` too, with the detector the thresholds belong
/// to, in the same call as the trusted scores that set them (so a detector with a shared cost,
/// MAD-FA's chain walk, pays it once). Returns one table per input set.
pub fn fit_thresholds_and_score(
    detector: &dyn Detector,
    data: &FitData<'_>,
    config: &ThresholdConfig,
    inputs: &[&ImageSet],
) -> Result<(ThresholdedDetector, Vec<ScoreTable>), DetectError> {
    config.validate()?;
    let dependence = detector.trusted_dependence();
    let (fitted, tables, trusted_scores, fitted_on) = match (config.split, dependence) {
        (ThresholdSplit::Holdout { fraction }, _)
        | (ThresholdSplit::Auto { fraction }, TrustedDependence::Fitted) => {
            let (fit_indices, held_indices) = holdout_indices(data.trusted, fraction, data.seed)?;
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
            let mut tables = checked_tables(
                detector,
                fitted.score_sets(data.model, &sets, data.device)?,
                sets.len(),
            )?;
            let held_out_table = tables.remove(0);
            // Attributions name trusted samples by their place in the whole trusted set.
            for table in &mut tables {
                if let Some(a) = &mut table.attributions {
                    a.remap(&fit_indices);
                }
            }
            (fitted, tables, held_out_table, fit_part.len())
        }
        (ThresholdSplit::CrossFit { folds }, TrustedDependence::Fitted) => {
            let fitted = detector.fit(data)?;
            let tables = fitted.score_sets(data.model, inputs, data.device)?;
            let trusted_scores = out_of_fold_scores(detector, data, folds)?;
            (fitted, tables, trusted_scores, data.trusted.len())
        }
        (_, TrustedDependence::LeaveOneOut) => {
            let fitted = detector.fit(data)?;
            let (tables, own) = fitted.score_sets_and_trusted(data.model, inputs, data.device)?;
            let own = own.ok_or_else(|| DetectError::Fit {
                detector: detector.name().into(),
                reason: "it scores its trusted samples leave-one-out but gave no such scores"
                    .into(),
            })?;
            (fitted, tables, own, data.trusted.len())
        }
        (_, TrustedDependence::None) => {
            let fitted = detector.fit(data)?;
            let mut sets = inputs.to_vec();
            sets.push(data.trusted);
            let mut tables = checked_tables(
                detector,
                fitted.score_sets(data.model, &sets, data.device)?,
                sets.len(),
            )?;
            let trusted_scores = tables.pop().unwrap_or(ScoreTable::new(Vec::new())?);
            (fitted, tables, trusted_scores, data.trusted.len())
        }
    };
    let tables = checked_tables(detector, tables, inputs.len())?;
    let thresholds = trusted_scores
        .columns
        .iter()
        .map(|(name, values)| Ok((name.clone(), threshold_for_fpr(values, config.target_fpr)?)))
        .collect::<Result<Vec<_>, DetectError>>()?;
    let mut tie_breaks = Vec::new();
    if config.ties == TieRule::Randomised {
        for ((name, values), (_, t)) in trusted_scores.columns.iter().zip(&thresholds) {
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
        fitted_on,
        threshold_samples: trusted_scores.len(),
    };
    Ok((detector, tables))
}

/// Refuses a detector that returned another number of tables than sets it was given.
fn checked_tables(
    detector: &dyn Detector,
    tables: Vec<ScoreTable>,
    sets: usize,
) -> Result<Vec<ScoreTable>, DetectError> {
    if tables.len() == sets {
        Ok(tables)
    } else {
        Err(DetectError::Fit {
            detector: detector.name().into(),
            reason: format!("scored {} sets of {sets}", tables.len()),
        })
    }
}

/// Every trusted sample's scores from the detector fitted on the other folds
/// ([`fold_indices`]), in trusted order.
pub fn out_of_fold_scores(
    detector: &dyn Detector,
    data: &FitData<'_>,
    folds: usize,
) -> Result<ScoreTable, DetectError> {
    let n = data.trusted.len();
    let mut columns: Vec<(String, Vec<f64>)> = Vec::new();
    for (k, fold) in fold_indices(data.trusted, folds, data.seed)?
        .iter()
        .enumerate()
    {
        let rest: Vec<usize> = (0..n).filter(|i| fold.binary_search(i).is_err()).collect();
        let fit_part = data.trusted.subset(&rest);
        let fitted = detector.fit(&FitData {
            trusted: &fit_part,
            ..*data
        })?;
        let table = fitted.score(data.model, &data.trusted.subset(fold), data.device)?;
        if k == 0 {
            columns = table
                .columns
                .iter()
                .map(|(name, _)| (name.clone(), vec![f64::NAN; n]))
                .collect();
        }
        let names_agree = table.columns.len() == columns.len()
            && table.columns.iter().zip(&columns).all(|(a, b)| a.0 == b.0);
        if !names_agree || table.len() != fold.len() {
            return Err(DetectError::Fit {
                detector: detector.name().into(),
                reason: format!(
                    "fold {k} gave {} scores in columns {:?}, expected {} in {:?}",
                    table.len(),
                    table.columns.iter().map(|c| &c.0).collect::<Vec<_>>(),
                    fold.len(),
                    columns.iter().map(|c| &c.0).collect::<Vec<_>>()
                ),
            });
        }
        for ((_, all), (_, part)) in columns.iter_mut().zip(&table.columns) {
            for (&i, &v) in fold.iter().zip(part) {
                all[i] = v;
            }
        }
    }
    ScoreTable::new(columns)
}

/// The trusted set cut into `folds` parts (positions, each increasing), per class: each class's
/// samples are shuffled (seeded) and dealt in turn, continuing where the previous class
/// stopped, so the folds differ in size by at most one. Refuses fewer than 2 folds or fewer
/// trusted samples than folds.
pub fn fold_indices(
    trusted: &ImageSet,
    folds: usize,
    seed: u64,
) -> Result<Vec<Vec<usize>>, DetectError> {
    use rand::SeedableRng;
    use rand::seq::SliceRandom;
    if folds < 2 || trusted.len() < folds {
        return Err(DetectError::Settings {
            detector: "thresholds".into(),
            reason: format!(
                "{} trusted samples cannot be cut into {folds} folds (at least 2 folds, and a sample per fold)",
                trusted.len()
            ),
        });
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ 0xF01D_5EED);
    let mut parts = vec![Vec::new(); folds];
    let mut next = 0;
    for mut indices in trusted.indices_by_class() {
        indices.shuffle(&mut rng);
        for i in indices {
            parts[next].push(i);
            next = (next + 1) % folds;
        }
    }
    for part in &mut parts {
        part.sort_unstable();
    }
    Ok(parts)
}
