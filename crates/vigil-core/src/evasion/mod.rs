//! Adaptive attacks: an attacker who knows the detector moves triggered inputs, within an
//! L-infinity ball, so the detector scores them as normal while the backdoor keeps working;
//! every detector is measured before and after an attack on its own score, at one budget.
//!
//! - [`madfa`]: MAD-FA's score, differentiated through linearised traces, with the defender's
//!   own chains;
//! - [`latent`]: a latent-space score (Mahalanobis on penultimate features), differentiated
//!   through the model.
//!
//! `vigil evade` runs both on a `vigil sample --record` run ([`evade_record_run`]). Method notes:
//! docs/madfa.md, "An attacker who knows the detector".

pub mod latent;
pub mod madfa;

use std::path::PathBuf;

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use crate::madfa::MadError;
use crate::madfa::chain::{ChainConfig, SampleSettings, TraceForm};
use crate::madfa::input_gradient::InputScore;
use crate::madfa::task::{MadTask, RecordRun, open_record_run};
use crate::metrics::{auroc, threshold_for_fpr_of_finite};
use crate::ood::ScoreKind;
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
    /// 8/255, 20 steps, the recommended score, keep 0 (the score alone; only iterates still in
    /// the target class are kept), 100 inputs, 5% FPR.
    pub fn defaults() -> Self {
        Self {
            eps: 8.0 / 255.0,
            steps: 20,
            score: InputScore::ClcPlusClassCcc,
            keep: 0.0,
            max_inputs: 100,
            fpr: 0.05,
        }
    }

    pub(crate) fn validate(&self) -> Result<(), MadError> {
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

/// What the adaptive attacks report while they run.
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

/// One detector before and after its adaptive attack.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionShift {
    /// The detector.
    pub detector: String,
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
    /// The threshold at the trusted `fpr` (flagged: score at least it), from the trusted
    /// samples' scores (MAD-FA: leave-one-out; a fitted latent score: the samples it was fitted
    /// on, so a little low).
    pub threshold: f64,
    /// Mean score of the originals and of the attacked inputs.
    pub mean_score: (f64, f64),
    /// Largest L-infinity distance of an attacked input from its original.
    pub max_linf: f64,
    /// Seconds in all (MAD-FA: sampling included).
    pub seconds: f64,
}

/// Test indices of the task's clean inputs.
pub(crate) fn clean_inputs(task: &MadTask) -> Vec<usize> {
    let flags = task.test_is_anomalous.as_deref().unwrap_or_default();
    (0..flags.len()).filter(|&i| !flags[i]).collect()
}

/// Up to `max` of the task's triggered inputs, spread evenly over them.
pub fn chosen_triggered(task: &MadTask, max: usize) -> Vec<usize> {
    let flags = task.test_is_anomalous.as_deref().unwrap_or_default();
    let triggered: Vec<usize> = (0..flags.len()).filter(|&i| flags[i]).collect();
    let n = triggered.len().min(max);
    (0..n).map(|j| triggered[j * triggered.len() / n]).collect()
}

/// The shift of one detector from its scores: trusted (threshold), and clean, originals and
/// attacked; `(task, chosen, attacked)` give the distances.
pub(crate) fn shift(
    detector: &str,
    trusted: &[f64],
    (clean, before, after): (&[f64], &[f64], &[f64]),
    still_target: usize,
    (task, chosen, attacked): (&MadTask, &[usize], &[f32]),
    fpr: f64,
    seconds: f64,
) -> Result<DetectionShift, crate::metrics::MetricsError> {
    let cut = threshold_for_fpr_of_finite(trusted, fpr)?;
    let share = |s: &[f64]| s.iter().filter(|&&v| v >= cut).count() as f64 / s.len().max(1) as f64;
    let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len().max(1) as f64;
    let values = task.test.shape().num_values();
    let max_linf = chosen
        .iter()
        .zip(attacked.chunks_exact(values))
        .flat_map(|(&i, x)| {
            task.test
                .image(i)
                .iter()
                .zip(x)
                .map(|(a, b)| f64::from((a - b).abs()))
        })
        .fold(0.0, f64::max);
    Ok(DetectionShift {
        detector: detector.to_string(),
        clean: clean.len(),
        attacked: after.len(),
        still_target,
        auroc_before: auroc(clean, before)?,
        auroc_after: auroc(clean, after)?,
        tpr_before: share(before),
        tpr_after: share(after),
        clean_flagged: share(clean),
        threshold: cut,
        mean_score: (mean(before), mean(after)),
        max_linf,
        seconds,
    })
}

/// Batch size of the predictions that rebuild the run's task (its values do not depend on it).
const PREDICT_BATCH: usize = 256;

/// File names `vigil evade` writes.
pub mod files {
    /// The report and the settings.
    pub const REPORT: &str = "evasion.json";
    /// Originals, then each detector's attacked inputs and their amplified differences.
    pub const EXAMPLES: &str = "examples.png";
}

/// Errors of an evasion experiment.
#[derive(Debug, thiserror::Error)]
pub enum EvasionError {
    /// MAD-FA's part (the run, the task, the chains, the scores).
    #[error(transparent)]
    Mad(#[from] MadError),
    /// The latent detector's part.
    #[error(transparent)]
    Latent(#[from] crate::ood::OodError),
    /// MAD-FA as a detector (the fresh chains' exact scores).
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    /// An output cannot be written.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// The examples cannot be drawn.
    #[error("drawing {}: {source}", files::EXAMPLES)]
    Examples {
        /// Why.
        source: crate::report::grid::GridError,
    },
}

/// An evasion experiment on a `vigil sample --record` run, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordEvasion {
    /// The attack record.
    pub record: PathBuf,
    /// The run on it: its split (`task.json`) and its sampler settings (`traces.npz`) are
    /// reused, so the attacker's chains are the defender's.
    pub run: PathBuf,
    /// Folder of the dataset's files (`None`: the default places).
    pub data_dir: Option<PathBuf>,
    /// The attack.
    pub config: EvasionConfig,
    /// The latent detectors attacked beside MAD-FA, each on its own score (Mahalanobis by
    /// default).
    pub latent: Vec<ScoreKind>,
    /// Also score MAD-FA's attacked inputs as the defender runs it: exact traces of fresh
    /// chains (the run's settings) drawn with this seed, unknown to the attacker
    /// ([`madfa::score_on_fresh_chains`]).
    pub defender_seed: Option<u64>,
    /// Where `evasion.json` and `examples.png` go.
    pub out: PathBuf,
}

/// The written outcome of [`evade_record_run`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvasionFile {
    /// Every detector before and after its own adaptive attack: MAD-FA (linearised, the
    /// attacker's chains), MAD-FA on fresh exact chains if asked, then each latent detector.
    pub detectors: Vec<DetectionShift>,
    /// The attack: budget, steps, keep weight, the MAD-FA score attacked, the knowledge.
    pub attack: serde_json::Value,
    /// MAD-FA's chains (the run's settings, linearised).
    pub chain: ChainConfig,
    /// Their indices.
    pub chains: Vec<usize>,
    /// The record.
    pub record: String,
    /// The run.
    pub run: String,
    /// vigil version.
    pub vigil_version: String,
}

/// Runs MAD-FA's and each latent detector's adaptive attack on the task and chains of a record
/// run, on the same triggered inputs, and writes `evasion.json` and `examples.png`.
pub fn evade_record_run(
    experiment: &RecordEvasion,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<EvasionFile, EvasionError> {
    experiment.config.validate()?;
    let out = &experiment.out;
    crate::io::check_outputs(
        [
            experiment.run.join("traces.npz"),
            experiment.run.join("task.json"),
        ],
        [files::REPORT, files::EXAMPLES].map(|f| out.join(f)),
    )?;
    let RecordRun {
        loaded,
        traces,
        traces_path,
    } = open_record_run(
        &experiment.record,
        &experiment.run,
        experiment.data_dir.as_deref(),
        PREDICT_BATCH,
        device,
    )?;
    // The trace file holds the sampler settings the defender's chains are rerun with.
    let settings: SampleSettings = traces
        .settings_json
        .as_deref()
        .and_then(|text| serde_json::from_str(text).ok())
        .ok_or_else(|| {
            MadError::Data(format!(
                "{} does not record its sampler settings",
                traces_path.display()
            ))
        })?;
    drop(traces);
    let task = &loaded.task;
    let chosen = chosen_triggered(task, experiment.config.max_inputs);
    if chosen.is_empty() || clean_inputs(task).is_empty() {
        return Err(MadError::Data(
            "the run's task has no triggered or no clean test input to attack and compare".into(),
        )
        .into());
    }
    let (madfa_shift, madfa_attacked) = madfa::evade(
        &loaded.classifier,
        task,
        &chosen,
        &settings.chain,
        &settings.chains,
        &experiment.config,
        device,
        progress,
    )?;
    let mut latent_shifts = Vec::with_capacity(experiment.latent.len());
    let mut latent_attacked = Vec::with_capacity(experiment.latent.len());
    for &kind in &experiment.latent {
        let (shift, attacked) = latent::evade(
            &loaded.classifier,
            task,
            &chosen,
            kind,
            &experiment.config,
            device,
            progress,
        )?;
        latent_shifts.push(shift);
        latent_attacked.push(attacked);
    }
    let fresh = match experiment.defender_seed {
        Some(seed) => Some(madfa::score_on_fresh_chains(
            &loaded.classifier,
            task,
            &chosen,
            &madfa_attacked,
            madfa_shift.still_target,
            (&settings.chain, settings.chains.len(), seed),
            &experiment.config,
            device,
        )?),
        None => None,
    };
    let c = &experiment.config;
    let mut detectors = vec![madfa_shift];
    detectors.extend(fresh);
    detectors.extend(latent_shifts);
    let file = EvasionFile {
        detectors,
        attack: serde_json::json!({
            "eps": c.eps,
            "steps": c.steps,
            "step_size": 2.5 * c.eps / c.steps as f64,
            "keep": c.keep,
            "madfa_score": format!("{:?}", c.score),
            "inputs": chosen.len(),
            "fpr": c.fpr,
            "knowledge": "white box: the model, the trusted set, each detector's score and threshold rule; against MAD-FA also the defender's chains (same settings and seed)",
            "defender_seed": experiment.defender_seed,
        }),
        chain: ChainConfig {
            traces: TraceForm::Linearised,
            ..settings.chain.clone()
        },
        chains: settings.chains.clone(),
        record: experiment.record.display().to_string(),
        run: experiment.run.display().to_string(),
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    // Examples: eight originals, then each attacked detector's versions (MAD-FA, then each
    // latent one), then their amplified differences in the same order.
    let shape = task.test.shape();
    let shown = chosen.len().min(8);
    let originals: Vec<&[f32]> = chosen[..shown]
        .iter()
        .map(|&i| task.test.image(i))
        .collect();
    let mut rows = vec![originals.clone()];
    let mut diffs = Vec::new();
    for attacked in std::iter::once(&madfa_attacked).chain(&latent_attacked) {
        let images: Vec<&[f32]> = attacked
            .chunks_exact(shape.num_values())
            .take(shown)
            .collect();
        diffs.push(
            originals
                .iter()
                .zip(&images)
                .map(|(a, b)| crate::report::grid::amplified_difference(a, b))
                .collect::<Vec<Vec<f32>>>(),
        );
        rows.push(images);
    }
    for d in &diffs {
        rows.push(d.iter().map(Vec::as_slice).collect());
    }
    let png = crate::report::grid::image_grid_png(&rows, shape, 4)
        .map_err(|source| EvasionError::Examples { source })?;
    crate::io::write_atomic(&out.join(files::EXAMPLES), &png)?;
    crate::io::write_json_atomic(&out.join(files::REPORT), &file)?;
    Ok(file)
}
