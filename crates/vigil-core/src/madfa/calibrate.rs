//! Sampler settings chosen from trusted and sampling data alone (`vigil calibrate`): no
//! anomalous input is seen.
//!
//! Why the reference settings are a lottery: the localization term pulls `w - w*` back by the
//! factor `c = (lr/2) gamma G` per step, and on nearly every weight `G = 1/eps` (RMSprop's `V`
//! stays far below `eps^2` around a trained model). At lr 1e-6, gamma 1e4, eps 0.1 that is
//! `c = 0.05`: consecutive draws are correlated over about `1/c = 20` steps, so a chain of a
//! few hundred draws holds only a dozen independent ones, and the AUROC depends on which
//! directions the noise happened to explore.
//!
//! Calibration therefore (1) sets `lr` so that the pull at the largest gain is `pull`
//! (1 by default: the flattest weights forget their previous draw in one step, the
//! fastest-mixing stable choice), (2) for each candidate `(gamma, n_beta)` (by default only the
//! reference's 1e4 and 100) runs two short
//! independent chains that trace only the trusted set, split per class into a reference half
//! and a probe half, and (3) measures how reproducible the probes' class-level coupling scores
//! (CLC) are between the two chains. That reliability, extrapolated with the Spearman-Brown
//! formula, gives the number of draws that reaches the target reliability (the most allowed
//! when the probes do not agree at all). Candidates whose chains diverge, lose the model's
//! function (minibatch loss well above w*'s) or leave many trusted traces constant are rejected;
//! of the rest, the one that needs the fewest draws wins.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::chain::{
    ChainConfig, ChainDiagnostics, ChainEvent, MIN_KEPT_DRAWS, TraceForm, run_chains,
};
use super::scores::{anomaly_scores, coupling};
use super::task::MadTask;
use super::{LossTraces, MadError, Preconditioner};
use crate::data::ImageSet;
use crate::models::Classifier;
use crate::progress::Progress;
use burn::tensor::Device;

/// Chains a calibrated run spreads its recommended draws over. Each chain keeps a share of its
/// own that more draws do not remove (it settles in its own region of the slow, well-determined
/// weights, where RMSprop's gain and so the pull are small), so on models vigil was not tuned on
/// the CLC spread over seeds falls with chains more than with draws: on WaNet, two chains of 300
/// draws gave 0.987 +- 0.010 and four of 150 0.991 +- 0.005, at the same number of traced
/// draws; the burn-in each chain adds costs 100 steps, about 10 s on the small CNN
/// (docs/madfa.md, "Stable on models it was not tuned on"). It was 2 until 2026-12-04.
pub const CALIBRATED_CHAINS: usize = 4;

/// Fewest draws a calibration recommends, over all chains: 150 per chain at
/// [`CALIBRATED_CHAINS`]. The probes' reliability can ask for far fewer (one WaNet seed asked
/// for 220 over two chains), but the anomaly AUROC kept rising up to about 150 draws per chain
/// on every validation model (docs/madfa.md, "Stable on models it was not tuned on"). It was 50
/// until 2026-12-04.
pub const CALIBRATED_MIN_DRAWS: usize = 600;

/// Draws per chain when `draws` are spread over `chains`: rounded up, and at least
/// [`MIN_KEPT_DRAWS`] (4 draws over 4 chains would leave one per chain, which correlates nothing).
fn spread(draws: usize, chains: usize) -> usize {
    draws.div_ceil(chains.max(1)).max(MIN_KEPT_DRAWS)
}

/// What [`calibrate`] tries and what it aims for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CalibrationConfig {
    /// Everything not calibrated (preconditioner, batch sizes, BatchNorm mode, trace loss,
    /// seed); its `lr`, `gamma`, `n_beta`, draws, burn-in and thinning are replaced.
    pub base: ChainConfig,
    /// Candidate `(gamma, n_beta)` pairs, in order of preference on ties.
    pub candidates: Vec<(f64, f64)>,
    /// Localization pull per step at the largest preconditioner gain, `(lr/2) gamma max G`
    /// (stable below 2; 1 decorrelates the flattest weights in one step).
    pub pull: f64,
    /// Draws per probe chain (two chains per candidate).
    pub probe_draws: usize,
    /// Steps before the first draw, in the probes and in the recommended run (default: RMSprop's
    /// averaging time `1/(1-alpha)`, 100 steps, 10 for plain SGLD: until `V` has settled, draws
    /// detect worse, measured on Blended in docs/madfa.md).
    pub burn_in: usize,
    /// Reliability of the probes' CLC scores the recommended run should reach.
    pub target_reliability: f64,
    /// Fewest and most draws to recommend.
    pub min_draws: usize,
    /// See `min_draws`.
    pub max_draws: usize,
    /// Largest accepted rise of the chain's mean minibatch loss over its loss at w*, as a
    /// fraction of chance-level loss `ln(classes)`.
    pub max_loss_rise: f64,
    /// Largest accepted fraction of constant trusted traces.
    pub max_constant_fraction: f64,
}

impl CalibrationConfig {
    /// The defaults of `vigil calibrate` around `base`: the reference's gamma 1e4 and n_beta 100
    /// as the only candidate (so calibration sets lr and the number of draws), pull 1, 2 x 50
    /// probe draws after [`settling_steps`] burn-in steps, target reliability 0.9,
    /// [`CALIBRATED_MIN_DRAWS`] to 1000 draws, loss rise
    /// under 10% of chance, at most 10% constant trusted traces. docs/madfa.md has the sweep
    /// these come from, and why gamma is not searched by default: the probes' reliability
    /// preferred gamma 3e4, which detected Blended worse.
    pub fn defaults(base: ChainConfig) -> Self {
        Self {
            candidates: vec![(1e4, 100.0)],
            pull: 1.0,
            probe_draws: 50,
            burn_in: settling_steps(&base.sgld.preconditioner),
            target_reliability: 0.9,
            min_draws: CALIBRATED_MIN_DRAWS,
            max_draws: 1000,
            max_loss_rise: 0.1,
            max_constant_fraction: 0.1,
            base,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), MadError> {
        let bad = |reason: String| Err(MadError::InvalidConfig(reason));
        if self.candidates.is_empty() {
            return bad("calibration needs at least one (gamma, n_beta) candidate".into());
        }
        if let Some((g, n)) = self
            .candidates
            .iter()
            .find(|(g, n)| !(g.is_finite() && *g > 0.0 && n.is_finite() && *n >= 0.0))
        {
            return bad(format!(
                "candidate gamma {g} / n_beta {n}: gamma must be positive and n_beta >= 0"
            ));
        }
        if !(self.pull > 0.0 && self.pull < 2.0) {
            return bad(format!(
                "the pull must lie in (0, 2) (the localization diverges at 2), got {}",
                self.pull
            ));
        }
        if self.probe_draws < 3 {
            return bad(format!(
                "probe chains need at least 3 draws, got {}",
                self.probe_draws
            ));
        }
        if !(self.target_reliability > 0.0 && self.target_reliability < 1.0) {
            return bad(format!(
                "the target reliability must lie in (0, 1), got {}",
                self.target_reliability
            ));
        }
        if self.min_draws == 0 || self.min_draws > self.max_draws {
            return bad(format!(
                "draw bounds must satisfy 1 <= min ({}) <= max ({})",
                self.min_draws, self.max_draws
            ));
        }
        Ok(())
    }

    /// The longest run calibration can recommend, spread over `chains` chains: what a caller
    /// checks ([`check_run`](super::check_run)) before calibrating.
    pub fn largest_run(&self, chains: usize) -> ChainConfig {
        let mut config = self.base.clone();
        config.draws = spread(self.max_draws, chains);
        config.burn_in = self.burn_in;
        config.thinning = 1;
        config
    }

    /// Everything a calibrated run on `task` can be refused for, checked before any work: a
    /// trusted set calibration cannot split ([`check_trusted_set`]), probe chains (two per
    /// candidate, tracing the trusted set) or a recommended run of `chains` chains that cannot
    /// fit in memory, chain indices a trace file cannot store.
    pub fn check_run(
        &self,
        w_star: &Classifier,
        task: &MadTask,
        chains: &[usize],
    ) -> Result<(), MadError> {
        check_trusted_set(task.trusted.labels())?;
        // Probes trace the trusted set only, and always exactly.
        let mut probe = self.base.clone();
        probe.draws = self.probe_draws;
        probe.traces = TraceForm::Exact;
        probe.check_memory(2, task.trusted.len(), 0)?;
        super::check_run(w_star, task, &self.largest_run(chains.len()), chains)?;
        Ok(())
    }

    /// The chain settings of candidate `(gamma, n_beta)` with `draws` draws: lr set from the
    /// pull, thinning 1 (with pull 1 consecutive draws are already nearly independent).
    pub fn chain_config(&self, gamma: f64, n_beta: f64, draws: usize) -> ChainConfig {
        let mut config = self.base.clone();
        config.sgld.gamma = gamma;
        config.sgld.n_beta = n_beta;
        config.sgld.lr = lr_for_pull(self.pull, gamma, config.sgld.preconditioner.max_gain());
        config.draws = draws;
        config.burn_in = self.burn_in;
        config.thinning = 1;
        config
    }
}

/// Steps for the preconditioner to settle from its start at `V = 0`: RMSprop's averaging time
/// `ceil(1 / (1 - alpha))` (100 at alpha 0.99), 10 for plain SGLD (nothing to settle but the
/// first steps away from w*).
pub fn settling_steps(preconditioner: &Preconditioner) -> usize {
    match *preconditioner {
        Preconditioner::RmsProp { alpha, .. } if alpha < 1.0 => {
            ((1.0 / (1.0 - alpha)) - 1e-9).ceil().max(10.0) as usize
        }
        _ => 10,
    }
}

/// The step size at which the localization pulls `w - w*` back by the fraction `pull` per step
/// where the preconditioner gain is largest: `(lr/2) gamma max_gain = pull`.
pub fn lr_for_pull(pull: f64, gamma: f64, max_gain: f64) -> f64 {
    2.0 * pull / (gamma * max_gain)
}

/// Spearman-Brown: the reliability of an average of `k` times as many independent draws as a
/// measurement of reliability `r`.
///
/// The formula holds for a reliability, the share of true-score variance: `r` in `[0, 1]`. A
/// measured correlation at or below 0 says the probes hold no reliable signal (its true value is
/// 0; below 0 is sampling noise), and fed in as such the formula is meaningless: it has a pole at
/// `r = -1/(k-1)` and exceeds 1 beyond it (probes agreeing at -0.37, extrapolated 250-fold,
/// "predicted" a reliability of 1.015). So `r` is clamped to `[0, 1]` and the result lies there.
pub fn spearman_brown(r: f64, k: f64) -> f64 {
    let r = if r.is_nan() { 0.0 } else { r.clamp(0.0, 1.0) };
    if r == 0.0 {
        return 0.0;
    }
    k * r / (1.0 + (k - 1.0) * r)
}

/// Probe samples calibration needs: the CLC reliability is a correlation over probe samples.
pub const MIN_PROBE_SAMPLES: usize = 3;

/// Checks, before any chain runs, that a trusted set (its labels) can be calibrated on: CLC, the
/// score whose reliability calibration measures, is the best class-level coupling, so it needs
/// at least 2 classes (with one it is the mean correlation and Class CCC equals Mean CCC); and
/// [`split_halves`] alternates each class's samples between a reference and a probe half, so a
/// class gives one probe sample per 2 trusted samples and the halves need
/// [`MIN_PROBE_SAMPLES`] probes in all.
pub fn check_trusted_set(labels: &[u16]) -> Result<(), MadError> {
    let mut counts = std::collections::BTreeMap::<u16, usize>::new();
    for &label in labels {
        *counts.entry(label).or_default() += 1;
    }
    let listed = || {
        counts
            .iter()
            .map(|(class, n)| format!("class {class}: {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    if counts.len() < 2 {
        return Err(MadError::Data(format!(
            "calibration needs trusted samples of at least 2 classes (CLC and Class CCC take the best of the class-level couplings; with one class there is nothing to choose from), got {} trusted samples ({})",
            labels.len(),
            if counts.is_empty() {
                "none".into()
            } else {
                listed()
            }
        )));
    }
    let probes: usize = counts.values().map(|n| n / 2).sum();
    if probes < MIN_PROBE_SAMPLES {
        return Err(MadError::Data(format!(
            "calibration splits every class's trusted samples alternately into a reference and a probe half, so only classes with at least 2 trusted samples give probe samples, and it needs at least {MIN_PROBE_SAMPLES}: these {} trusted samples ({}) give {probes}; give at least 2 trusted samples in each of {MIN_PROBE_SAMPLES} classes",
            labels.len(),
            listed()
        )));
    }
    Ok(())
}

/// How many draws reach reliability `target`, given reliability `r` measured with `draws`
/// draws (Spearman-Brown solved for the length). `None` when `r <= 0`: no signal to
/// extrapolate from.
pub fn draws_for_reliability(r: f64, draws: usize, target: f64) -> Option<f64> {
    if r.is_nan() || r <= 0.0 {
        return None;
    }
    if r >= 1.0 {
        return Some(1.0);
    }
    Some(draws as f64 * target * (1.0 - r) / (r * (1.0 - target)))
}

/// Pearson correlation of two equally long series (0 when either is constant).
pub fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len().min(b.len());
    if n == 0 {
        return 0.0;
    }
    let mean = |x: &[f64]| x[..n].iter().sum::<f64>() / n as f64;
    let (ma, mb) = (mean(a), mean(b));
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for i in 0..n {
        let (da, db) = (a[i] - ma, b[i] - mb);
        sab += da * db;
        saa += da * da;
        sbb += db * db;
    }
    if saa == 0.0 || sbb == 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

/// Splits sample positions per label into two halves, alternating within each label (so both
/// halves hold every class): `(reference, probe)`.
pub fn split_halves(labels: &[u16]) -> (Vec<usize>, Vec<usize>) {
    let mut seen = std::collections::BTreeMap::<u16, usize>::new();
    let (mut reference, mut probe) = (Vec::new(), Vec::new());
    for (i, &label) in labels.iter().enumerate() {
        let count = seen.entry(label).or_default();
        if count.is_multiple_of(2) {
            reference.push(i);
        } else {
            probe.push(i);
        }
        *count += 1;
    }
    (reference, probe)
}

/// One candidate's measurements.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateReport {
    /// Localization strength.
    pub gamma: f64,
    /// Inverse temperature.
    pub n_beta: f64,
    /// Step size (from the pull).
    pub lr: f64,
    /// Pearson correlation, between the two probe chains, of the probe samples' CLC scores.
    pub clc_reliability: f64,
    /// Pearson correlation, between the two probe chains, of every probe-reference trace
    /// correlation.
    pub coupling_reliability: f64,
    /// Draws that reach the target CLC reliability (Spearman-Brown), before the bounds; `None`
    /// when the probe chains' scores do not agree at all (then the most draws are recommended).
    pub draws_needed: Option<f64>,
    /// Mean minibatch loss after burn-in minus the loss of the first step (at w*), averaged
    /// over the two chains.
    pub loss_rise: f64,
    /// Loss at w* on the first minibatch.
    pub loss_at_w_star: f64,
    /// Largest fraction of constant trusted traces of the two chains.
    pub constant_trusted_fraction: f64,
    /// Median ratio of the gradient drift's norm to the noise's, per step.
    pub drift_to_noise: f64,
    /// Distance from w* at the end of the first chain.
    pub final_distance: f64,
    /// Seconds spent on this candidate.
    pub seconds: f64,
    /// Why the candidate was rejected, if it was.
    pub rejected: Option<String>,
}

/// The outcome of [`calibrate`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// What was tried.
    pub config: CalibrationConfig,
    /// Every candidate's measurements, in the order tried.
    pub candidates: Vec<CandidateReport>,
    /// Index of the chosen candidate in `candidates`.
    pub chosen: usize,
    /// The recommended chain settings, all draws in one chain; [`Calibration::per_chain`]
    /// spreads them over several ([`CALIBRATED_CHAINS`] by default).
    pub recommended: ChainConfig,
    /// The CLC reliability the recommended run is predicted to reach.
    pub predicted_reliability: f64,
    /// Trusted samples in the reference and probe halves.
    pub reference_size: usize,
    /// See `reference_size`.
    pub probe_size: usize,
    /// Total seconds.
    pub seconds: f64,
    /// vigil version.
    pub vigil_version: String,
}

impl Calibration {
    /// The recommended settings for each of `chains` chains: the recommended draws spread over
    /// them (rounded up, and at least the [`MIN_KEPT_DRAWS`] a chain's correlations need),
    /// every chain with the full burn-in.
    pub fn per_chain(&self, chains: usize) -> ChainConfig {
        let mut config = self.recommended.clone();
        config.draws = spread(self.recommended.draws, chains);
        config
    }

    /// What a user should know before trusting the recommendation: probes that did not agree
    /// at all, or a recommendation that falls short of the target.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(best) = self.candidates.get(self.chosen) else {
            return out;
        };
        if best.draws_needed.is_none() {
            out.push(format!(
                "the probe chains' CLC scores did not agree (reliability {:.3}): the {} draws recommended are the most allowed, not a prediction; the trusted set may be too small or the chains too short (--probe-draws)",
                best.clc_reliability, self.recommended.draws
            ));
        } else if self.predicted_reliability < self.config.target_reliability {
            out.push(format!(
                "the {} draws recommended (the most allowed) reach a predicted CLC reliability of {:.3}, below the target {}",
                self.recommended.draws, self.predicted_reliability, self.config.target_reliability
            ));
        }
        out
    }
}

/// Chooses chain settings for `w_star` from its trusted set (correctly classified samples) and
/// its sampling set alone. See the module documentation for the procedure.
pub fn calibrate(
    w_star: &Classifier,
    trusted: &ImageSet,
    sampling: &ImageSet,
    config: &CalibrationConfig,
    device: &Device,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
) -> Result<Calibration, MadError> {
    config.validate()?;
    check_trusted_set(trusted.labels())?;
    let started = Instant::now();
    let (reference, probe) = split_halves(trusted.labels());
    let ids = |v: &[usize]| v.iter().map(|&i| i as i64).collect::<Vec<_>>();
    let task = MadTask {
        trusted: trusted.subset(&reference),
        sampling: sampling.clone(),
        test: trusted.subset(&probe),
        test_is_anomalous: None,
        anomaly_mechanisms: None,
        trusted_ids: ids(&reference),
        test_ids: ids(&probe),
    };
    let chance = (w_star.spec.num_classes().max(2) as f64).ln();
    let mut reports = Vec::new();
    for &(gamma, n_beta) in &config.candidates {
        let mut chain_config = config.chain_config(gamma, n_beta, config.probe_draws);
        // Probes always trace exactly, whatever form the run will use: linearised traces are
        // smoother, so two chains agree more and the reliability overstates what a run has
        // learned (measured: calibrating on them asked for 40-60% fewer draws and doubled the
        // CLC spread; docs/madfa.md, "Linearised traces with --calibrate").
        chain_config.traces = TraceForm::Exact;
        let candidate_started = Instant::now();
        let report = match run_chains(
            w_star,
            &task,
            &chain_config,
            &[0, 1],
            serde_json::json!({"calibration": true}),
            None,
            device,
            progress,
            None,
        ) {
            Ok(Some((traces, diagnostics))) => measure(
                &traces,
                &diagnostics,
                &chain_config,
                config,
                chance,
                candidate_started.elapsed().as_secs_f64(),
            )?,
            // Stopped by `progress` (Ctrl-C): calibration is short, nothing to resume.
            Ok(None) => {
                return Err(MadError::InvalidConfig("calibration interrupted".into()));
            }
            Err(MadError::ChainDiverged { step, reason, .. }) => CandidateReport {
                gamma,
                n_beta,
                lr: chain_config.sgld.lr,
                clc_reliability: 0.0,
                coupling_reliability: 0.0,
                draws_needed: None,
                loss_rise: f64::INFINITY,
                loss_at_w_star: f64::NAN,
                constant_trusted_fraction: 0.0,
                drift_to_noise: 0.0,
                final_distance: f64::NAN,
                seconds: candidate_started.elapsed().as_secs_f64(),
                rejected: Some(format!("diverged at step {step}: {reason}")),
            },
            Err(e) => return Err(e),
        };
        reports.push(report);
    }
    let chosen = choose(&reports).ok_or_else(|| {
        let why: Vec<String> = reports
            .iter()
            .map(|r| {
                format!(
                    "gamma {:e} n_beta {}: {}",
                    r.gamma,
                    r.n_beta,
                    r.rejected.as_deref().unwrap_or("?")
                )
            })
            .collect();
        MadError::InvalidConfig(format!(
            "no candidate setting passed calibration ({}); try other candidates (--calibrate-gammas, --calibrate-n-betas)",
            why.join("; ")
        ))
    })?;
    let best = &reports[chosen];
    let needed = best.draws_needed.unwrap_or(config.max_draws as f64);
    let draws = (needed.ceil() as usize).clamp(config.min_draws, config.max_draws);
    let per_draw = draws as f64 / config.probe_draws as f64;
    Ok(Calibration {
        config: config.clone(),
        recommended: config.chain_config(best.gamma, best.n_beta, draws),
        predicted_reliability: spearman_brown(best.clc_reliability, per_draw),
        chosen,
        candidates: reports,
        reference_size: reference.len(),
        probe_size: probe.len(),
        seconds: started.elapsed().as_secs_f64(),
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
    })
}

/// The candidate that needs the fewest draws among those not rejected (the first on ties).
pub fn choose(reports: &[CandidateReport]) -> Option<usize> {
    reports
        .iter()
        .enumerate()
        .filter(|(_, r)| r.rejected.is_none())
        .min_by(|(_, a), (_, b)| {
            let need = |r: &CandidateReport| r.draws_needed.unwrap_or(f64::INFINITY);
            need(a).total_cmp(&need(b))
        })
        .map(|(i, _)| i)
}

/// The reliability and health of one candidate's two probe chains.
fn measure(
    traces: &LossTraces,
    diagnostics: &[ChainDiagnostics],
    chain_config: &ChainConfig,
    config: &CalibrationConfig,
    chance: f64,
    seconds: f64,
) -> Result<CandidateReport, MadError> {
    // A chain whose reference traces are all constant couples nothing (`coupling` refuses it):
    // the candidate measured no reliability and is rejected below.
    let all_constant = diagnostics
        .iter()
        .any(|d| d.constant_trusted_fraction >= 1.0);
    let mut clc = Vec::new();
    let mut couplings = Vec::new();
    for k in (0..traces.chains()).filter(|_| !all_constant) {
        let one = LossTraces {
            trusted: traces
                .trusted
                .slice(ndarray::s![k..k + 1, .., ..])
                .to_owned(),
            test: traces.test.slice(ndarray::s![k..k + 1, .., ..]).to_owned(),
            ..traces.clone()
        };
        let c = coupling(&one, 0)?;
        clc.push(anomaly_scores(&c, &traces.trusted_labels).clc);
        couplings.push(c.pearson.iter().copied().collect::<Vec<f64>>());
    }
    let agreement = |v: &[Vec<f64>]| match v {
        [a, b, ..] => pearson(a, b),
        _ => 0.0,
    };
    let clc_reliability = agreement(&clc);
    let coupling_reliability = agreement(&couplings);
    let draws_needed = draws_for_reliability(
        clc_reliability,
        config.probe_draws,
        config.target_reliability,
    );
    let burn_in = chain_config.burn_in;
    let rise = |d: &ChainDiagnostics| {
        let after: Vec<f64> = d.loss.iter().skip(burn_in).copied().collect();
        let mean = after.iter().sum::<f64>() / after.len().max(1) as f64;
        mean - d.loss.first().copied().unwrap_or(mean)
    };
    let loss_rise = diagnostics.iter().map(rise).sum::<f64>() / diagnostics.len().max(1) as f64;
    let constant = diagnostics
        .iter()
        .map(|d| d.constant_trusted_fraction.max(d.constant_test_fraction))
        .fold(0.0, f64::max);
    let Some(first) = diagnostics.first() else {
        return Err(MadError::Data("the probe chains reported nothing".into()));
    };
    let rejected = if all_constant {
        Some("every reference trace of a probe chain is constant: the chain does not move the trusted losses".into())
    } else if loss_rise > config.max_loss_rise * chance {
        Some(format!(
            "the chain's minibatch loss rose by {loss_rise:.3} over w*'s, more than {:.0}% of chance level ({chance:.3}): the chain leaves the model's function",
            100.0 * config.max_loss_rise
        ))
    } else if constant > config.max_constant_fraction {
        Some(format!(
            "{:.0}% of trusted traces are constant",
            100.0 * constant
        ))
    } else {
        None
    };
    Ok(CandidateReport {
        gamma: chain_config.sgld.gamma,
        n_beta: chain_config.sgld.n_beta,
        lr: chain_config.sgld.lr,
        clc_reliability,
        coupling_reliability,
        draws_needed,
        loss_rise,
        loss_at_w_star: first.loss.first().copied().unwrap_or(f64::NAN),
        constant_trusted_fraction: constant,
        drift_to_noise: first.median_drift_to_noise,
        final_distance: first.distance.last().copied().unwrap_or(0.0),
        seconds,
        rejected,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lr_from_pull_matches_the_stability_bound() {
        let mut at_pull_one = super::super::SgldConfig::reference();
        at_pull_one.lr = lr_for_pull(1.0, at_pull_one.gamma, 10.0);
        assert!((at_pull_one.pull() - 1.0).abs() < 1e-12);
        // Pull 2 is the stability edge: lr = 4 / (gamma max G), SgldConfig::max_stable_lr.
        let reference = super::super::SgldConfig::reference();
        let edge = lr_for_pull(2.0, reference.gamma, reference.preconditioner.max_gain());
        assert!((edge - reference.max_stable_lr()).abs() < 1e-18);
        // The reference lr 1e-6 is a pull of 0.05 at gamma 1e4 and eps 0.1.
        assert!((lr_for_pull(0.05, 1e4, 10.0) - 1e-6).abs() < 1e-18);
        assert!((lr_for_pull(1.0, 1e4, 10.0) - 2e-5).abs() < 1e-18);
    }

    #[test]
    fn draws_spread_over_chains_round_up_and_leave_every_chain_two() {
        assert_eq!(spread(600, 4), 150);
        assert_eq!(spread(601, 4), 151);
        assert_eq!(spread(4, 4), MIN_KEPT_DRAWS);
        assert_eq!(spread(7, 0), 7);
        let config = CalibrationConfig::defaults(ChainConfig::reference());
        assert_eq!(config.min_draws, CALIBRATED_MIN_DRAWS);
        assert_eq!(config.largest_run(CALIBRATED_CHAINS).draws, 250);
    }

    #[test]
    fn burn_in_covers_rmsprops_averaging_time() {
        assert_eq!(settling_steps(&Preconditioner::reference()), 100);
        let fast = Preconditioner::RmsProp {
            alpha: 0.9,
            eps: 0.1,
        };
        assert_eq!(settling_steps(&fast), 10);
        assert_eq!(settling_steps(&Preconditioner::Identity), 10);
        let defaults = CalibrationConfig::defaults(ChainConfig::reference());
        assert_eq!(defaults.burn_in, 100);
    }

    #[test]
    fn spearman_brown_round_trips() {
        // Doubling a test of reliability 0.5 gives 2/3 (the textbook case).
        assert!((spearman_brown(0.5, 2.0) - 2.0 / 3.0).abs() < 1e-12);
        // Length needed for 0.9 from 0.5 at 40 draws: k = 0.9*0.5/(0.5*0.1) = 9, so 360.
        let d = draws_for_reliability(0.5, 40, 0.9).unwrap();
        assert!((d - 360.0).abs() < 1e-9);
        assert!((spearman_brown(0.5, d / 40.0) - 0.9).abs() < 1e-12);
        assert_eq!(draws_for_reliability(0.0, 40, 0.9), None);
        assert_eq!(draws_for_reliability(-0.2, 40, 0.9), None);
    }

    /// A negative probe agreement extrapolated far used to "predict" a reliability above 1 (the
    /// single-class trusted set's 1.015): the formula is only defined for r in [0, 1].
    #[test]
    fn spearman_brown_stays_a_reliability_for_any_measured_correlation() {
        assert!(spearman_brown(-0.371, 250.0) > -1.0);
        for r in [-1.0, -0.371, -0.05, 0.0, 0.3, 1.0, 1.2, f64::NAN] {
            for k in [0.5, 1.0, 2.0, 20.0, 250.0] {
                let p = spearman_brown(r, k);
                assert!((0.0..=1.0).contains(&p), "r {r} k {k}: {p}");
            }
        }
        assert_eq!(spearman_brown(-0.371, 250.0), 0.0);
    }

    #[test]
    fn trusted_sets_calibration_cannot_use_are_refused_with_the_rule() {
        let err = check_trusted_set(&[4; 12]).unwrap_err().to_string();
        assert!(err.contains("at least 2 classes"), "{err}");
        assert!(err.contains("class 4: 12"), "{err}");
        // One sample per class: every sample lands in the reference half, no probe.
        let one_each: Vec<u16> = (0..10).collect();
        let err = check_trusted_set(&one_each).unwrap_err().to_string();
        assert!(err.contains("10 trusted samples"), "{err}");
        assert!(err.contains("give 0"), "{err}");
        assert!(
            err.contains("at least 2 trusted samples in each of 3 classes"),
            "{err}"
        );
        assert!(check_trusted_set(&[0, 0, 1, 1, 2, 2]).is_ok());
        assert!(check_trusted_set(&[0, 0, 1, 1]).is_err());
    }

    #[test]
    fn pearson_matches_numpy_and_guards_constants() {
        // numpy: np.corrcoef([1, 2, 4, 7], [2, 1, 5, 6])[0, 1] = 0.8997354108424372
        let r = pearson(&[1.0, 2.0, 4.0, 7.0], &[2.0, 1.0, 5.0, 6.0]);
        assert!((r - 0.899_735_410_842_437_2).abs() < 1e-12, "{r}");
        assert_eq!(pearson(&[1.0, 1.0, 1.0], &[1.0, 2.0, 3.0]), 0.0);
        assert_eq!(pearson(&[], &[]), 0.0);
    }

    #[test]
    fn halves_alternate_within_each_class() {
        let (reference, probe) = split_halves(&[0, 1, 0, 1, 0, 2, 2]);
        assert_eq!(reference, vec![0, 1, 4, 5]);
        assert_eq!(probe, vec![2, 3, 6]);
    }

    fn report(need: Option<f64>, rejected: bool) -> CandidateReport {
        CandidateReport {
            gamma: 1.0,
            n_beta: 1.0,
            lr: 1.0,
            clc_reliability: 0.5,
            coupling_reliability: 0.5,
            draws_needed: need,
            loss_rise: 0.0,
            loss_at_w_star: 0.0,
            constant_trusted_fraction: 0.0,
            drift_to_noise: 0.0,
            final_distance: 0.0,
            seconds: 0.0,
            rejected: rejected.then(|| "no".into()),
        }
    }

    #[test]
    fn the_healthy_candidate_needing_fewest_draws_wins() {
        let reports = [
            report(Some(300.0), false),
            report(Some(100.0), true),
            report(Some(200.0), false),
            report(Some(200.0), false),
        ];
        assert_eq!(choose(&reports), Some(2));
        assert_eq!(choose(&[report(Some(1.0), true)]), None);
    }

    #[test]
    fn bad_settings_are_typed_errors() {
        let base = CalibrationConfig::defaults(ChainConfig::reference());
        let with = |f: fn(&mut CalibrationConfig)| {
            let mut c = base.clone();
            f(&mut c);
            c.validate()
        };
        assert!(base.validate().is_ok());
        assert!(with(|c| c.pull = 2.0).is_err());
        assert!(with(|c| c.candidates.clear()).is_err());
        assert!(with(|c| c.candidates = vec![(0.0, 1.0)]).is_err());
        assert!(with(|c| c.target_reliability = 1.0).is_err());
        assert!(with(|c| c.min_draws = 2000).is_err());
        assert!(with(|c| c.probe_draws = 2).is_err());
    }
}
