//! An attacker who knows MAD-FA: triggered inputs pushed, within an L-infinity ball, to couple
//! with the trusted samples while the backdoor keeps working (issue 27's adaptive attack).
//!
//! **The attacker's knowledge** (white box, the strongest attacker): the model, the trusted
//! set, the score and its threshold rule, and the defender's chains themselves (their
//! displacements: the same sampler settings and seed). It attacks MAD-FA's score through
//! linearised traces ([`super::input_gradient`]): projected sign-gradient descent on
//! `s(x) + keep * l(x)`, where `s` is the anomaly score and `l` the trace loss of the backdoor's
//! target (so the input stays in the target class), in the ball `|x - x0|_inf <= eps` around
//! the triggered input `x0`, clipped to `[0, 1]`, step `2.5 eps / steps`, no random start. The
//! kept iterate is the one of least score among those w* still puts in the target class (the
//! start if none). The defender scores with the same linearised traces, so before and after are
//! measured on one footing.

use std::time::Instant;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::MadError;
use super::chain::{ChainConfig, ChainOutcome, TraceForm, TraceInputs, run_chain};
use super::input_gradient::{InputScore, LinearisedScorer};
use super::task::MadTask;
use crate::metrics::auroc;
use crate::models::Classifier;
use crate::progress::Progress;

/// The adaptive attack's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EvasionConfig {
    /// L-infinity radius around the triggered input, in `[0, 1]` pixel units.
    pub eps: f64,
    /// Projected sign-gradient steps.
    pub steps: usize,
    /// The score attacked (and measured).
    pub score: InputScore,
    /// Weight of the target's trace loss in the objective (keeps the backdoor working).
    pub keep: f64,
    /// Triggered inputs attacked at most (evenly spread over the task's triggered inputs).
    pub max_inputs: usize,
    /// Trusted false-positive rate of the threshold the true-positive rates are read at.
    pub fpr: f64,
}

impl EvasionConfig {
    /// 8/255, 20 steps, the recommended score, keep 1, 100 inputs, 5% FPR.
    pub fn defaults() -> Self {
        Self {
            eps: 8.0 / 255.0,
            steps: 20,
            score: InputScore::ClcPlusClassCcc,
            keep: 1.0,
            max_inputs: 100,
            fpr: 0.05,
        }
    }

    fn validate(&self) -> Result<(), MadError> {
        let bad = |what: String| Err(MadError::InvalidConfig(what));
        if !(self.eps > 0.0 && self.eps <= 1.0) {
            return bad(format!("eps {} is not in (0, 1]", self.eps));
        }
        if self.steps == 0 || self.max_inputs == 0 {
            return bad("steps and the number of inputs must be positive".into());
        }
        if !(self.keep >= 0.0 && self.keep.is_finite()) {
            return bad(format!(
                "keep weight {} is not a finite non-negative number",
                self.keep
            ));
        }
        if !(self.fpr > 0.0 && self.fpr < 1.0) {
            return bad(format!("fpr {} is not in (0, 1)", self.fpr));
        }
        Ok(())
    }
}

/// Detection of the attacked inputs before and after the attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvasionReport {
    /// Clean test inputs scored.
    pub clean: usize,
    /// Triggered inputs attacked.
    pub attacked: usize,
    /// Of them, still in the backdoor's target class after the attack.
    pub still_target: usize,
    /// AUROC of clean against the attacked inputs' triggered originals.
    pub auroc_before: f64,
    /// AUROC of clean against the attacked inputs.
    pub auroc_after: f64,
    /// Share of the originals flagged at the trusted `fpr` threshold.
    pub tpr_before: f64,
    /// Share of the attacked inputs flagged there.
    pub tpr_after: f64,
    /// Share of clean test inputs flagged there.
    pub clean_flagged: f64,
    /// The threshold: the trusted samples' leave-one-out `1 - fpr` quantile.
    pub threshold: f64,
    /// Mean score of the originals and of the attacked inputs.
    pub mean_score: (f64, f64),
    /// Largest L-infinity distance of an attacked input from its original.
    pub max_linf: f64,
    /// Kept draws over all chains.
    pub draws: usize,
    /// Seconds sampling, scoring and attacking.
    pub seconds: (f64, f64, f64),
}

/// What [`evade`] reports while it runs.
#[derive(Debug, Clone, Copy)]
pub enum EvasionEvent {
    /// Chain `chain` of `chains` is sampled.
    Sampled {
        /// Chains done.
        chain: usize,
        /// Chains in all.
        chains: usize,
    },
    /// `done` of `total` inputs scored (clean and triggered originals).
    Scored {
        /// Done.
        done: usize,
        /// In all.
        total: usize,
    },
    /// `done` of `total` triggered inputs attacked.
    Attacked {
        /// Done.
        done: usize,
        /// In all.
        total: usize,
    },
}

/// The `1 - fpr` quantile of `trusted` (as the detectors' thresholds).
fn threshold(trusted: &[f64], fpr: f64) -> f64 {
    let mut sorted: Vec<f64> = trusted.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return f64::INFINITY;
    }
    let rank = ((1.0 - fpr) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Attacks one triggered input (see the module): returns the kept iterate and whether w* puts
/// it in `target`.
pub fn evade_one(
    scorer: &LinearisedScorer,
    original: &[f32],
    target: i64,
    config: &EvasionConfig,
) -> Result<(Vec<f32>, bool), MadError> {
    let eps = config.eps as f32;
    let alpha = (2.5 * config.eps / config.steps as f64) as f32;
    let mut x = original.to_vec();
    let mut best: Option<(f64, Vec<f32>)> = None;
    for step in 0..=config.steps {
        let (score, score_gradient) = scorer.score_and_gradient(&x, target, config.score)?;
        if scorer.predict(&x)? == target && best.as_ref().is_none_or(|(b, _)| score < *b) {
            best = Some((score, x.clone()));
        }
        if step == config.steps {
            break;
        }
        let (_, loss_gradient) = scorer.loss_and_gradient(&x, target)?;
        for (i, xi) in x.iter_mut().enumerate() {
            let g = score_gradient[i] + config.keep as f32 * loss_gradient[i];
            let moved = *xi - alpha * g.signum() * f32::from(g != 0.0);
            *xi = moved
                .clamp(original[i] - eps, original[i] + eps)
                .clamp(0.0, 1.0);
        }
    }
    Ok(match best {
        Some((_, x)) => (x, true),
        None => (original.to_vec(), false),
    })
}

/// Runs the chains `chains` (indices) of `chain`, linearised, around `w_star` on `task` (a backdoor task with
/// anomaly flags), then scores the clean test inputs and up to `config.max_inputs` triggered
/// ones, attacks those (see the module) and scores them again. Returns the report and the
/// attacked images (`[n, c, h, w]` flattened).
pub fn evade(
    w_star: &Classifier,
    task: &MadTask,
    chain: &ChainConfig,
    chains: &[usize],
    config: &EvasionConfig,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<(EvasionReport, Vec<f32>), MadError> {
    config.validate()?;
    let Some(flags) = &task.test_is_anomalous else {
        return Err(MadError::Data(
            "the task does not say which test inputs are triggered".into(),
        ));
    };
    let clean: Vec<usize> = (0..flags.len()).filter(|&i| !flags[i]).collect();
    let triggered: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
    if clean.is_empty() || triggered.is_empty() || chains.is_empty() {
        return Err(MadError::Data(format!(
            "{} clean and {} triggered test inputs, {} chains: need at least one of each",
            clean.len(),
            triggered.len(),
            chains.len()
        )));
    }
    let n = triggered.len().min(config.max_inputs);
    let chosen: Vec<usize> = (0..n).map(|j| triggered[j * triggered.len() / n]).collect();

    let started = Instant::now();
    let linearised = ChainConfig {
        traces: TraceForm::Linearised,
        ..chain.clone()
    };
    let inputs = TraceInputs::new(w_star, task, linearised.trace_batch_size, device)?;
    let mut displacements = Vec::new();
    for (done, &c) in chains.iter().enumerate() {
        let outcome = run_chain(
            w_star,
            &task.sampling,
            &inputs,
            &linearised,
            c,
            None,
            device,
            &mut crate::progress::Quiet,
            None,
        )?;
        let ChainOutcome::Finished(values, _) = outcome else {
            return Err(MadError::Data("a chain stopped before its end".into()));
        };
        displacements.extend(values);
        progress.report(EvasionEvent::Sampled {
            chain: done + 1,
            chains: chains.len(),
        });
    }
    let trusted_labels = inputs.labels[..inputs.n_trusted].to_vec();
    let test_labels = &inputs.labels[inputs.n_trusted..];
    let scorer = LinearisedScorer::new(
        w_star,
        displacements,
        &task.trusted,
        trusted_labels,
        chain.loss,
        device,
    )?;
    let draws = chains.len() * chain.draws;
    let sampled = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let total = clean.len() + chosen.len();
    let mut score_of = |i: usize, done: usize| -> Result<f64, MadError> {
        progress.report(EvasionEvent::Scored { done, total });
        scorer.score(task.test.image(i), test_labels[i], config.score)
    };
    let mut clean_scores = Vec::with_capacity(clean.len());
    for (done, &i) in clean.iter().enumerate() {
        clean_scores.push(score_of(i, done)?);
    }
    let mut before = Vec::with_capacity(chosen.len());
    for (done, &i) in chosen.iter().enumerate() {
        before.push(score_of(i, clean.len() + done)?);
    }
    let scored = started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut attacked_pixels = Vec::new();
    let mut after = Vec::with_capacity(chosen.len());
    let (mut still_target, mut max_linf) = (0, 0.0f64);
    for (done, &i) in chosen.iter().enumerate() {
        let original = task.test.image(i);
        let (x, in_target) = evade_one(&scorer, original, test_labels[i], config)?;
        still_target += usize::from(in_target);
        max_linf = original
            .iter()
            .zip(&x)
            .map(|(a, b)| f64::from((a - b).abs()))
            .fold(max_linf, f64::max);
        after.push(scorer.score(&x, test_labels[i], config.score)?);
        attacked_pixels.extend(x);
        progress.report(EvasionEvent::Attacked {
            done: done + 1,
            total: chosen.len(),
        });
    }
    let attacked_seconds = started.elapsed().as_secs_f64();

    let cut = threshold(scorer.trusted_scores(config.score), config.fpr);
    let share =
        |scores: &[f64]| scores.iter().filter(|&&s| s > cut).count() as f64 / scores.len() as f64;
    let mean = |scores: &[f64]| scores.iter().sum::<f64>() / scores.len() as f64;
    let area = |positives: &[f64]| {
        auroc(&clean_scores, positives).map_err(|e| MadError::Data(e.to_string()))
    };
    let report = EvasionReport {
        clean: clean.len(),
        attacked: chosen.len(),
        still_target,
        auroc_before: area(&before)?,
        auroc_after: area(&after)?,
        tpr_before: share(&before),
        tpr_after: share(&after),
        clean_flagged: share(&clean_scores),
        threshold: cut,
        mean_score: (mean(&before), mean(&after)),
        max_linf,
        draws,
        seconds: (sampled, scored, attacked_seconds),
    };
    Ok((report, attacked_pixels))
}

/// File names `vigil evade` writes.
pub mod files {
    /// The report and the settings.
    pub const REPORT: &str = "evasion.json";
    /// Originals, attacked inputs and the amplified difference.
    pub const EXAMPLES: &str = "examples.png";
}

/// An evasion experiment on a `vigil sample --record` run, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordEvasion {
    /// The attack record.
    pub record: std::path::PathBuf,
    /// The run on it: its split (`task.json`) and its sampler settings (`traces.npz`) are
    /// reused, so the attacker's chains are the defender's.
    pub run: std::path::PathBuf,
    /// Folder of the dataset's files (`None`: the default places).
    pub data_dir: Option<std::path::PathBuf>,
    /// The attack.
    pub config: EvasionConfig,
    /// Where `evasion.json` and `examples.png` go.
    pub out: std::path::PathBuf,
}

/// The written outcome of [`evade_record_run`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvasionFile {
    /// Detection before and after.
    pub report: EvasionReport,
    /// The attack: eps, steps, keep weight, the score attacked.
    pub attack: serde_json::Value,
    /// The chains' settings (the run's, linearised).
    pub chain: ChainConfig,
    /// Chains.
    pub chains: usize,
    /// The record and the run.
    pub record: String,
    /// The run folder.
    pub run: String,
    /// vigil version.
    pub vigil_version: String,
}

/// Runs [`evade`] on the task and chains of a record run and writes `evasion.json` and
/// `examples.png`.
pub fn evade_record_run(
    experiment: &RecordEvasion,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<EvasionFile, MadError> {
    let out = &experiment.out;
    let traces_path = experiment.run.join("traces.npz");
    crate::io::check_outputs(
        [&traces_path, &experiment.run.join("task.json")],
        [files::REPORT, files::EXAMPLES].map(|f| out.join(f)),
    )?;
    let split = super::task::RunSplit::read(&experiment.run)?;
    let traces =
        super::traces::LossTraces::load(&traces_path).map_err(|e| MadError::Data(e.to_string()))?;
    let settings: super::chain::SampleSettings = traces
        .settings_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| {
            MadError::Data(format!(
                "{} does not record its sampler settings",
                traces_path.display()
            ))
        })?;
    let loaded = super::task::record_task(
        &experiment.record,
        experiment.data_dir.as_deref(),
        split.split_per_class,
        split.split_seed,
        settings.chain.trace_batch_size.max(1),
        device,
    )?;
    let chains = settings.chains.len();
    let (report, pixels) = evade(
        &loaded.classifier,
        &loaded.task,
        &settings.chain,
        &settings.chains,
        &experiment.config,
        device,
        progress,
    )?;
    let file = EvasionFile {
        report,
        attack: serde_json::json!({
            "eps": experiment.config.eps,
            "steps": experiment.config.steps,
            "keep": experiment.config.keep,
            "score": format!("{:?}", experiment.config.score),
            "max_inputs": experiment.config.max_inputs,
            "fpr": experiment.config.fpr,
            "knowledge": "white box: model, trusted set, score, threshold rule and the defender's chains (same settings and seed)",
        }),
        chain: ChainConfig {
            traces: TraceForm::Linearised,
            ..settings.chain.clone()
        },
        chains,
        record: experiment.record.display().to_string(),
        run: experiment.run.display().to_string(),
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Examples: the first eight attacked inputs, their originals and the difference.
    let shape = loaded.task.test.shape();
    let flags = loaded.task.test_is_anomalous.clone().unwrap_or_default();
    let triggered: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
    let n = file.report.attacked;
    let chosen: Vec<usize> = (0..n).map(|j| triggered[j * triggered.len() / n]).collect();
    let shown = n.min(8);
    let originals: Vec<&[f32]> = chosen[..shown]
        .iter()
        .map(|&i| loaded.task.test.image(i))
        .collect();
    let attacked: Vec<&[f32]> = pixels
        .chunks_exact(shape.num_values())
        .take(shown)
        .collect();
    let diffs: Vec<Vec<f32>> = originals
        .iter()
        .zip(&attacked)
        .map(|(a, b)| crate::report::grid::amplified_difference(a, b))
        .collect();
    let diff_rows: Vec<&[f32]> = diffs.iter().map(Vec::as_slice).collect();
    let png = crate::report::grid::image_grid_png(&[originals, attacked, diff_rows], shape, 4)
        .map_err(|e| MadError::Data(format!("drawing {}: {e}", files::EXAMPLES)))?;
    crate::io::write_atomic(&out.join(files::EXAMPLES), &png)?;
    crate::io::write_json_atomic(&out.join(files::REPORT), &file)?;
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::madfa::input_gradient::tests::fixture;

    #[test]
    fn an_attacked_input_scores_lower_stays_in_the_ball_and_in_the_target_class() {
        let (scorer, x, _) = fixture();
        let target = scorer.predict(&x).unwrap();
        let config = EvasionConfig {
            eps: 0.05,
            steps: 10,
            ..EvasionConfig::defaults()
        };
        let before = scorer.score(&x, target, config.score).unwrap();
        let (attacked, in_target) = evade_one(&scorer, &x, target, &config).unwrap();
        assert!(in_target);
        assert_eq!(scorer.predict(&attacked).unwrap(), target);
        let after = scorer.score(&attacked, target, config.score).unwrap();
        assert!(after < before, "score {before} -> {after}");
        for (a, b) in attacked.iter().zip(&x) {
            assert!((a - b).abs() <= 0.05 + 1e-6 && (0.0..=1.0).contains(a));
        }
        // Settings out of range are refused.
        for bad in [
            EvasionConfig { eps: 0.0, ..config },
            EvasionConfig { steps: 0, ..config },
            EvasionConfig {
                keep: f64::NAN,
                ..config
            },
            EvasionConfig { fpr: 1.0, ..config },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
