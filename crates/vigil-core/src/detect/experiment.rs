//! One detection experiment, as `vigil detect` runs it: fit every chosen detector on the trusted
//! data with thresholds at a target false-positive rate, score the inputs, flag them, and, when
//! the ground truth is known, measure each score column against it.

use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{
    DetectError, DetectorSettings, FitData, GroundTruth, ScoreTable, ThresholdConfig,
    fit_thresholds_and_score,
};
use crate::data::ImageSet;
use crate::metrics::{PrArea, aupr_out, auroc, fpr_at_tpr};
use crate::models::Classifier;
use crate::progress::Progress;
use crate::report::csv_field;

/// What to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectConfig {
    /// The detectors, in report order.
    pub detectors: Vec<DetectorSettings>,
    /// How thresholds are set from the trusted data.
    pub thresholds: ThresholdConfig,
    /// Batch size of forward passes.
    pub batch_size: usize,
    /// Seed of every random choice (held-out split, MAD-FA's chains, ...).
    pub seed: u64,
}

/// The data of one experiment: what the detectors may see, and the ground truth they may not.
pub struct DetectData<'a> {
    /// The model under inspection.
    pub model: &'a Classifier,
    /// Clean inputs the user trusts, with their true labels.
    pub trusted: &'a ImageSet,
    /// More clean labelled inputs, disjoint from `trusted`.
    pub sampling: &'a ImageSet,
    /// The inputs to check (their labels are not read).
    pub inputs: &'a ImageSet,
    /// Which inputs are anomalous, when known: for the evaluation only.
    pub truth: Option<&'a GroundTruth>,
}

/// A detector's results on the inputs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectorResult {
    /// The detector's name.
    pub detector: String,
    /// Its settings.
    pub settings: DetectorSettings,
    /// Trusted samples the detector that scored the inputs was fitted on.
    pub fitted_on: usize,
    /// Trusted scores the thresholds were set on (held back, or scored out of fold).
    #[serde(alias = "held_out")]
    pub threshold_samples: usize,
    /// Per column: its threshold, the inputs it flags, and its measurements when the truth is
    /// known.
    pub columns: Vec<ColumnResult>,
    /// The scores of every input.
    pub scores: ScoreTable,
    /// Seconds to fit and score.
    pub seconds: f64,
    /// Why the detector gave no scores: it does not apply to this model (IBD-PSC without
    /// BatchNorm) or could not be fitted on this data (IBD-PSC when no amplification reaches
    /// its error rate). Then it has no columns and no scores, reports show "n/a" and the
    /// reason, never a number, and the other detectors go on.
    #[serde(alias = "not_applicable")]
    pub no_scores: Option<String>,
}

/// One score column's results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnResult {
    /// Column name.
    pub column: String,
    /// Inputs scoring at or above it are flagged; set on trusted scores the detector was not fitted on.
    pub threshold: f64,
    /// With randomised ties, the inputs just under the threshold flagged at random.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tie_break: Option<crate::metrics::TieBreak>,
    /// Number of inputs flagged.
    pub flagged: usize,
    /// Per input, whether it is flagged.
    pub flags: Vec<bool>,
    /// Against the ground truth, when known.
    pub evaluation: Option<ColumnEvaluation>,
}

/// A column against the ground truth (anomalous inputs are the positive class).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnEvaluation {
    /// Area under the ROC curve (no threshold).
    pub auroc: f64,
    /// Area under the precision-recall curve, anomalous positive (trapezoidal).
    pub aupr: f64,
    /// False-positive rate at 95% true-positive rate (exact threshold).
    pub fpr_at_95_tpr: f64,
    /// Fraction of anomalous inputs flagged at the trusted-set threshold.
    pub tpr: f64,
    /// Fraction of normal inputs flagged at the trusted-set threshold (the target was
    /// [`ThresholdConfig::target_fpr`]).
    pub fpr: f64,
}

/// Everything one experiment found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectReport {
    /// vigil's version.
    pub vigil_version: String,
    /// The settings.
    pub config: DetectConfig,
    /// Number of inputs, and of anomalous ones when known.
    pub inputs: usize,
    /// Number of anomalous inputs, when known.
    pub anomalous: Option<usize>,
    /// What the positive class is in the evaluation.
    pub positive_class: String,
    /// Per detector.
    pub detectors: Vec<DetectorResult>,
}

impl DetectReport {
    /// One row per input: its index, its file (`paths`, when it came from one), whether it is
    /// anomalous (when known), then for every detector and column its score and whether it is
    /// flagged (`<detector>.<column>` and `<detector>.<column>.flagged`); for a detector with
    /// attributions (MAD-FA), the most and least attributed trusted samples (named by
    /// `trusted_names`, else by position) and their correlations, `;`-separated.
    pub fn scores_csv(
        &self,
        paths: &[String],
        truth: Option<&GroundTruth>,
        trusted_names: &[String],
    ) -> String {
        use std::fmt::Write as _;
        let mut csv = String::from("index,path");
        if truth.is_some() {
            csv.push_str(",is_anomalous");
        }
        for d in &self.detectors {
            for c in &d.columns {
                let _ = write!(csv, ",{0}.{1},{0}.{1}.flagged", d.detector, c.column);
            }
            if d.scores.attributions.is_some() {
                let _ = write!(
                    csv,
                    ",{0}.most_attributed,{0}.most_attributed_r,{0}.least_attributed,{0}.least_attributed_r",
                    d.detector
                );
            }
        }
        csv.push('\n');
        let name = |t: usize| {
            trusted_names
                .get(t)
                .cloned()
                .unwrap_or_else(|| format!("trusted #{t}"))
        };
        let listed = |list: &[crate::madfa::Attribution]| {
            let names: Vec<String> = list.iter().map(|a| name(a.trusted)).collect();
            let r: Vec<String> = list
                .iter()
                .map(|a| format!("{:.4}", a.correlation))
                .collect();
            format!("{},{}", csv_field(&names.join(";")), r.join(";"))
        };
        for i in 0..self.inputs {
            let path = paths.get(i).map_or("", String::as_str);
            let _ = write!(csv, "{i},{}", csv_field(path));
            if let Some(t) = truth {
                let anomalous = t.is_anomalous.get(i).copied().unwrap_or_default();
                let _ = write!(csv, ",{}", u8::from(anomalous));
            }
            for d in &self.detectors {
                for c in &d.columns {
                    let score = d.scores.column(&c.column).and_then(|v| v.get(i));
                    let flagged = c.flags.get(i).copied().unwrap_or_default();
                    let _ = write!(
                        csv,
                        ",{},{}",
                        score.copied().unwrap_or(f64::NAN),
                        u8::from(flagged)
                    );
                }
                if let Some(a) = &d.scores.attributions {
                    let most = a.most.get(i).map_or(&[][..], Vec::as_slice);
                    let least = a.least.get(i).map_or(&[][..], Vec::as_slice);
                    let _ = write!(csv, ",{},{}", listed(most), listed(least));
                }
            }
            csv.push('\n');
        }
        csv
    }
}

/// What the experiment is doing (for progress lines; [`Progress`]).
pub enum DetectProgress<'a> {
    /// A detector is being fitted, thresholded and run on the inputs.
    Started(&'a str),
    /// A detector is done.
    Done(&'a DetectorResult),
}

/// Runs the experiment: every detector fitted with thresholds, the inputs scored and flagged,
/// and measured against the ground truth when given. `progress` is asked before each detector
/// whether to stop ([`DetectError::Stopped`]).
pub fn run(
    config: &DetectConfig,
    data: &DetectData<'_>,
    device: &Device,
    progress: &mut dyn for<'e> Progress<DetectProgress<'e>>,
) -> Result<DetectReport, DetectError> {
    config.thresholds.validate()?;
    if data.inputs.is_empty() {
        return Err(DetectError::Fit {
            detector: "detect".into(),
            reason: "there are no inputs to check".into(),
        });
    }
    if let Some(truth) = data.truth
        && truth.is_anomalous.len() != data.inputs.len()
    {
        return Err(DetectError::Fit {
            detector: "detect".into(),
            reason: format!(
                "the ground truth has {} entries for {} inputs",
                truth.is_anomalous.len(),
                data.inputs.len()
            ),
        });
    }
    // Settings are checked for every detector before any is fitted.
    for settings in &config.detectors {
        settings.clone().build()?;
    }
    let detectors = config
        .detectors
        .iter()
        .map(|settings| {
            if progress.should_stop() {
                return Err(DetectError::Stopped);
            }
            run_detector(settings, config, data, device, progress)
        })
        .collect::<Result<Vec<_>, DetectError>>()?;
    Ok(DetectReport {
        vigil_version: env!("CARGO_PKG_VERSION").into(),
        config: config.clone(),
        inputs: data.inputs.len(),
        anomalous: data
            .truth
            .map(|t| t.is_anomalous.iter().filter(|&&a| a).count()),
        positive_class: POSITIVE_CLASS.into(),
        detectors,
    })
}

/// What the evaluation counts as positive.
pub const POSITIVE_CLASS: &str = "anomalous (FPR at 95% TPR: the fraction of normal inputs flagged when 95% of anomalous inputs are)";

/// One detector of an experiment: fitted with thresholds (`config.thresholds`,
/// [`fit_thresholds_and_score`]), the inputs flagged, and measured against
/// the truth when known. A detector that does not apply to the model is reported as such.
pub fn run_detector(
    settings: &DetectorSettings,
    config: &DetectConfig,
    data: &DetectData<'_>,
    device: &Device,
    progress: &mut dyn for<'e> Progress<DetectProgress<'e>>,
) -> Result<DetectorResult, DetectError> {
    let detector = settings.clone().build()?;
    let started = Instant::now();
    let fit = FitData {
        model: data.model,
        trusted: data.trusted,
        sampling: data.sampling,
        batch_size: config.batch_size,
        seed: config.seed,
        device,
    };
    progress.report(DetectProgress::Started(detector.name()));
    let (fitted, scores) =
        match fit_thresholds_and_score(detector.as_ref(), &fit, &config.thresholds, &[data.inputs])
        {
            Err(e @ (DetectError::NotApplicable { .. } | DetectError::Fit { .. })) => {
                let result = DetectorResult {
                    detector: detector.name().to_string(),
                    settings: settings.clone(),
                    fitted_on: 0,
                    threshold_samples: 0,
                    columns: Vec::new(),
                    scores: ScoreTable::new(Vec::new())?,
                    seconds: started.elapsed().as_secs_f64(),
                    no_scores: Some(e.to_string()),
                };
                progress.report(DetectProgress::Done(&result));
                return Ok(result);
            }
            other => other?,
        };
    let scores = match scores.into_iter().next() {
        Some(table) => table,
        None => ScoreTable::new(Vec::new())?,
    };
    let columns = fitted
        .flags_for(&scores, data.inputs)
        .into_iter()
        .map(|(column, flags)| {
            let threshold = fitted.threshold(&column).unwrap_or(f64::INFINITY);
            let values = scores.column(&column).unwrap_or_default();
            let evaluation = data
                .truth
                .map(|t| evaluate(values, &t.is_anomalous, &flags))
                .transpose()?;
            Ok(ColumnResult {
                flagged: flags.iter().filter(|&&f| f).count(),
                tie_break: fitted.tie_break(&column),
                column,
                threshold,
                flags,
                evaluation,
            })
        })
        .collect::<Result<Vec<_>, DetectError>>()?;
    let result = DetectorResult {
        detector: detector.name().to_string(),
        settings: settings.clone(),
        fitted_on: fitted.fitted_on,
        threshold_samples: fitted.threshold_samples,
        columns,
        scores,
        seconds: started.elapsed().as_secs_f64(),
        no_scores: None,
    };
    progress.report(DetectProgress::Done(&result));
    Ok(result)
}

/// One column's measurements against the truth (anomalous inputs positive).
fn evaluate(
    scores: &[f64],
    is_anomalous: &[bool],
    flags: &[bool],
) -> Result<ColumnEvaluation, DetectError> {
    let (normal, anomalous) = super::split_by(scores, is_anomalous);
    let (mut normal_flagged, mut anomalous_flagged) = (0usize, 0usize);
    for (&a, &f) in is_anomalous.iter().zip(flags) {
        if a {
            anomalous_flagged += usize::from(f);
        } else {
            normal_flagged += usize::from(f);
        }
    }
    // AUROC and friends check both classes are present and the scores finite.
    let auroc = auroc(&normal, &anomalous)?;
    Ok(ColumnEvaluation {
        auroc,
        aupr: aupr_out(&normal, &anomalous, PrArea::Trapezoidal)?,
        fpr_at_95_tpr: fpr_at_tpr(&normal, &anomalous, 0.95)?,
        tpr: anomalous_flagged as f64 / anomalous.len() as f64,
        fpr: normal_flagged as f64 / normal.len() as f64,
    })
}
