//! Checking a language model's prompts for anomalies (`vigil detect --text`): every detector of
//! [`super::detection::score_prompts`] scores the prompts, its threshold is set on the trusted
//! prompts' scores at a target false-positive rate, and prompts at or above it are flagged.
//! When which prompts are anomalous is known, each column is measured too.
//!
//! Only the columns a user can read without labels are flagged: MAD-FA's scores, the
//! perplexity filter, the response confidence, and each latent detector at the last block
//! (the benchmark's "best layer" is chosen on labels, so it has no place here).

use std::path::Path;
use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::detection::{DetectionStage, TextDetectionConfig, TextInputs, score_prompts};
use super::{LanguageModel, LmError};
use crate::io::{write_atomic, write_json_atomic};
use crate::madfa::ChainDiagnostics;
use crate::metrics::{auroc, threshold_for_fpr, tpr_fpr_at_threshold};
use crate::progress::Progress;

/// One detector column's threshold and flags.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlaggedColumn {
    /// The detector (and layer).
    pub column: String,
    /// Scores at or above it are flagged: the trusted prompts' `target_fpr` quantile.
    pub threshold: f64,
    /// Prompts flagged.
    pub flagged: usize,
    /// Each prompt's score.
    pub scores: Vec<f64>,
    /// When the truth is known: AUROC (anomalous prompts positive), and the TPR and FPR at
    /// the threshold.
    pub evaluation: Option<ColumnEvaluation>,
}

/// A column measured against the truth.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ColumnEvaluation {
    /// Area under the ROC curve.
    pub auroc: f64,
    /// Fraction of anomalous prompts flagged.
    pub tpr: f64,
    /// Fraction of normal prompts flagged.
    pub fpr: f64,
}

/// What [`detect_prompts`] found.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PromptDetectReport {
    /// The false-positive rate the thresholds aim at on the trusted prompts.
    pub target_fpr: f64,
    /// One entry per flagged column.
    pub columns: Vec<FlaggedColumn>,
    /// The model's greedy response at `w*` to each prompt.
    pub responses: Vec<String>,
    /// Whether each prompt is anomalous, when known.
    pub truth: Option<Vec<bool>>,
    /// The settings.
    pub config: TextDetectionConfig,
    /// How each chain went (per-step sampling loss, distance from `w*`, update norms).
    pub chains: Vec<ChainDiagnostics>,
    /// Wall time.
    pub seconds: f64,
}

/// Scores, thresholds and flags the `inputs.test` prompts; `truth` (one per test prompt,
/// `true` = anomalous) adds each column's AUROC, TPR and FPR. `partial` and stopping as in
/// [`score_prompts`].
#[allow(clippy::too_many_arguments)] // score_prompts' six, and the labels and FPR it thresholds by
pub fn detect_prompts(
    lm: &LanguageModel,
    inputs: &TextInputs<'_>,
    truth: Option<&[bool]>,
    target_fpr: f64,
    config: &TextDetectionConfig,
    device: &Device,
    partial: Option<&Path>,
    progress: &mut impl Progress<DetectionStage>,
) -> Result<PromptDetectReport, LmError> {
    let started = Instant::now();
    if !(0.0..=1.0).contains(&target_fpr) {
        return Err(LmError::Config(format!(
            "target FPR {target_fpr} is outside [0, 1]"
        )));
    }
    if let Some(truth) = truth
        && truth.len() != inputs.test.len()
    {
        return Err(LmError::Input(format!(
            "{} truth labels for {} prompts",
            truth.len(),
            inputs.test.len()
        )));
    }
    let scores = score_prompts(lm, inputs, config, device, partial, progress)?;
    let mut columns = Vec::new();
    for column in &scores.columns {
        let name = match &column.latent {
            Some(latent) if !latent.last_block => continue,
            Some(latent) => format!("{} (last block)", latent.detector),
            None => column.name.clone(),
        };
        let metric = |e: crate::metrics::MetricsError| LmError::Input(format!("{name}: {e}"));
        let threshold = threshold_for_fpr(&column.trusted, target_fpr).map_err(metric)?;
        let evaluation = match truth {
            Some(truth) if truth.iter().any(|&t| t) && truth.iter().any(|&t| !t) => {
                Some(evaluate_column(&name, &column.test, truth, threshold)?)
            }
            _ => None,
        };
        columns.push(FlaggedColumn {
            flagged: column.test.iter().filter(|&&s| s >= threshold).count(),
            column: name,
            threshold,
            scores: column.test.clone(),
            evaluation,
        });
    }
    let n_trusted = inputs.trusted.len();
    Ok(PromptDetectReport {
        target_fpr,
        columns,
        responses: scores.responses[n_trusted..].to_vec(),
        truth: truth.map(<[bool]>::to_vec),
        config: config.clone(),
        chains: scores.chains,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `test` scores measured against `truth` (anomalous prompts positive) at `threshold`; `name`
/// names the column in errors.
pub(super) fn evaluate_column(
    name: &str,
    test: &[f64],
    truth: &[bool],
    threshold: f64,
) -> Result<ColumnEvaluation, LmError> {
    let metric = |e: crate::metrics::MetricsError| LmError::Input(format!("{name}: {e}"));
    let pick = |want: bool| -> Vec<f64> {
        test.iter()
            .zip(truth)
            .filter(|&(_, &t)| t == want)
            .map(|(&s, _)| s)
            .collect()
    };
    let (normal, anomalous) = (pick(false), pick(true));
    let point = tpr_fpr_at_threshold(&normal, &anomalous, threshold).map_err(metric)?;
    Ok(ColumnEvaluation {
        auroc: auroc(&normal, &anomalous).map_err(metric)?,
        tpr: point.tpr,
        fpr: point.fpr,
    })
}

/// Writes `report.json`, `report.md` (one row per column) and `scores.csv` (one row per
/// prompt: its index, the prompt, the truth when known, then each column's score and flag)
/// into `out`, each atomically.
pub fn write_prompt_report(
    out: &Path,
    report: &PromptDetectReport,
    prompts: &[String],
) -> Result<(), LmError> {
    write_json_atomic(&out.join("report.json"), report)?;
    let mut md = format!(
        "# Prompt detection\n\n{} prompts; thresholds flag {:.1}% of the trusted prompts' \
         scores.\n\n| column | threshold | flagged | AUROC | TPR | FPR |\n|---|---|---|---|---|---|\n",
        prompts.len(),
        100.0 * report.target_fpr
    );
    for c in &report.columns {
        let (auroc, tpr, fpr) =
            c.evaluation
                .map_or(("-".to_string(), "-".to_string(), "-".to_string()), |e| {
                    (
                        format!("{:.3}", e.auroc),
                        format!("{:.3}", e.tpr),
                        format!("{:.3}", e.fpr),
                    )
                });
        md.push_str(&format!(
            "| {} | {:.4e} | {} | {auroc} | {tpr} | {fpr} |\n",
            c.column, c.threshold, c.flagged
        ));
    }
    md.push('\n');
    md.push_str(&super::detection::describe_chains(&report.chains));
    write_atomic(&out.join("report.md"), md.as_bytes())?;
    let quote = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let mut csv = String::from("index,prompt");
    if report.truth.is_some() {
        csv.push_str(",anomalous");
    }
    for c in &report.columns {
        csv.push_str(&format!(
            ",{},{}",
            quote(&c.column),
            quote(&format!("{} flag", c.column))
        ));
    }
    csv.push('\n');
    for (i, prompt) in prompts.iter().enumerate() {
        csv.push_str(&format!("{i},{}", quote(prompt)));
        if let Some(truth) = &report.truth {
            csv.push_str(if truth[i] { ",1" } else { ",0" });
        }
        for c in &report.columns {
            let flag = u8::from(c.scores[i] >= c.threshold);
            csv.push_str(&format!(",{},{flag}", c.scores[i]));
        }
        csv.push('\n');
    }
    write_atomic(&out.join("scores.csv"), csv.as_bytes())?;
    Ok(())
}
