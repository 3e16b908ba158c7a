//! Localized SGLD chains around a trained model, recording per-sample loss traces.
//!
//! A chain starts at w* (a deep copy of the trained model), takes `burn_in` steps, then records
//! a draw every `thinning` steps until it has `draws`: at each, the per-sample loss of every
//! trusted and test sample, against the model's own prediction at w*. Burn-in draws are not
//! traced at all (the reference records and then drops them), which saves their trace passes.
//!
//! Every random choice of chain `k` is a pure function of `(seed, k, step)`: the sampling
//! minibatch of a step comes from a per-pass permutation seeded by `(seed, k, pass)` and the
//! noise from a generator seeded by `(seed, k, step)`. So a chain resumed from its checkpoint
//! (model, RMSprop state, traces so far) continues bit for bit, and chains are independent: run
//! them in one process or as separate jobs and merge the files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::{Module, ParamId};
use burn::tensor::{Device, Int, Tensor};
use serde::{Deserialize, Serialize};

use super::calibrate::Calibration;
use super::experiment::SamplingPlan;
use super::record::StepRecorder;
use super::sgld::{LocalizedSgld, SQUARED_GRADIENT_SLOT, SgldConfig, StepNorms, W_STAR_SLOT};
use super::task::MadTask;
use super::traces::{LossTraces, chain_index};
use super::{MadError, linearised};
use crate::checkpoint::{self, TensorFile};
use crate::data::{ImageSet, batch, images_tensor, labels_tensor};
use crate::inference::evaluate;
use crate::io::write_json_atomic;
use crate::loss::{
    cross_entropy, cross_entropy_per_sample, cross_entropy_per_sample_precise,
    log_cross_entropy_per_sample,
};
use crate::memory;
use crate::models::{BnMode, Classifier};
use crate::optim::{ParamSlots, apply_update, param_infos, snapshot_slots, trainable_values};
use crate::progress::Progress;
use crate::train::{STEP_KEY, epoch_order, metadata_step, mix, tensor_file_step};

/// How BatchNorm behaves along the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BnPolicy {
    /// The reference: steps in train mode (batch statistics, running statistics updated with
    /// momentum 0.1), traces in eval mode with the drifted running statistics.
    #[default]
    Reference,
    /// Steps with batch statistics but running statistics kept at w*'s; traces in eval mode
    /// with w*'s statistics.
    Frozen,
}

impl BnPolicy {
    fn step_mode(self) -> BnMode {
        match self {
            BnPolicy::Reference => BnMode::Train,
            BnPolicy::Frozen => BnMode::BatchStatsFrozen,
        }
    }
}

/// The loss vigil's traces record unless told otherwise (`vigil sample`, the MAD-FA
/// detector): [`TraceLoss::Log`]. On every validation model its CLC was as high or higher and
/// its spread over chains smaller than the reference's loss, most where the reference was
/// unstable (the PyTorch peer's Blended model, 4 chains x 150 draws: 0.920 +- 0.047 with the
/// reference loss; docs/madfa.md, "Stable on models it was not tuned on"). It was
/// [`TraceLoss::Reference`] until 2026-12-05.
pub const DEFAULT_TRACE_LOSS: TraceLoss = TraceLoss::Log;

/// Which form of the per-sample cross-entropy the traces record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TraceLoss {
    /// `-log_softmax(z)_y`, as the reference: exactly 0 in float32 for confident samples.
    #[default]
    Reference,
    /// `log1p(sum_{j != y} exp(z_j - z_y))`: keeps confident samples' losses moving.
    Precise,
    /// The natural log of the precise loss: a confident sample's soft margin, linear in the
    /// logits where the loss is exponential, so a rare draw that multiplies one sample's loss
    /// does not dominate its correlations (the default since 2026-12-04, docs/madfa.md).
    Log,
}

impl TraceLoss {
    /// The per-sample loss of `logits` against `labels` in this form, shape `[n]`.
    pub fn per_sample(self, logits: Tensor<2>, labels: Tensor<1, Int>) -> Tensor<1> {
        match self {
            TraceLoss::Reference => cross_entropy_per_sample(logits, labels),
            TraceLoss::Precise => cross_entropy_per_sample_precise(logits, labels),
            TraceLoss::Log => log_cross_entropy_per_sample(logits, labels),
        }
    }
}

/// How the traces are computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum TraceForm {
    /// The per-sample loss at every kept draw, one forward pass over every traced sample (the
    /// reference).
    #[default]
    Exact,
    /// `L_i(w*) + g_i . (w_t - w*)`: the chain records displacements, the traces come from one
    /// matrix product after it ([`linearised`](super::linearised)).
    Linearised,
}

/// Everything that decides a chain's traces.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChainConfig {
    /// The update.
    pub sgld: SgldConfig,
    /// Kept draws per chain.
    pub draws: usize,
    /// Steps before the first kept draw (not traced).
    pub burn_in: usize,
    /// Steps per kept draw (1 = every step).
    pub thinning: usize,
    /// BatchNorm behaviour.
    pub bn: BnPolicy,
    /// Loss form of the traces.
    pub loss: TraceLoss,
    /// Exact or linearised traces.
    #[serde(default)]
    pub traces: TraceForm,
    /// Batch size of the trace passes.
    pub trace_batch_size: usize,
    /// Seed of the minibatch order and the noise of every chain.
    pub seed: u64,
}

impl ChainConfig {
    /// The reference protocol: reference SGLD settings, 2000 steps of which the first 250 are
    /// burn-in (1750 kept draws), a draw at every step, trace batch 256.
    pub fn reference() -> Self {
        Self {
            sgld: SgldConfig::reference(),
            draws: 1750,
            burn_in: 250,
            thinning: 1,
            bn: BnPolicy::Reference,
            loss: TraceLoss::Reference,
            traces: TraceForm::Exact,
            trace_batch_size: 256,
            seed: 0,
        }
    }

    /// Steps of one chain.
    pub fn total_steps(&self) -> usize {
        self.burn_in + self.draws * self.thinning
    }

    /// The draw recorded after `steps_done` steps, if that step records one.
    pub fn draw_after(&self, steps_done: usize) -> Option<usize> {
        let past = steps_done.checked_sub(self.burn_in)?;
        (past > 0 && past % self.thinning == 0).then(|| past / self.thinning - 1)
    }

    /// Checks the values (and the sampler's stability).
    pub fn validate(&self) -> Result<(), MadError> {
        if self.draws < MIN_KEPT_DRAWS {
            return Err(MadError::InvalidConfig(format!(
                "need at least {MIN_KEPT_DRAWS} kept draws to correlate traces, got {}",
                self.draws
            )));
        }
        if self.thinning == 0 || self.trace_batch_size == 0 {
            return Err(MadError::InvalidConfig(
                "thinning and the trace batch size must be at least 1".into(),
            ));
        }
        // `total_steps` must not wrap around to a short chain.
        if self
            .draws
            .checked_mul(self.thinning)
            .and_then(|s| s.checked_add(self.burn_in))
            .is_none()
        {
            return Err(MadError::InvalidConfig(format!(
                "{} draws every {} steps after {} burn-in steps is more steps than can be counted",
                self.draws, self.thinning, self.burn_in
            )));
        }
        self.sgld.validate()
    }

    /// Refuses a run of `chains` chains tracing `traced` samples (a model of `model_floats`
    /// values) whose traces cannot be held in memory, before anything is allocated. Exact traces
    /// are `chains x draws x traced` f32, held twice while the chains' buffers are joined into
    /// the trace file's arrays; linearised chains hold `chains x draws x model_floats`
    /// displacements, then the same traces.
    pub fn check_memory(
        &self,
        chains: usize,
        traced: usize,
        model_floats: usize,
    ) -> Result<(), MadError> {
        let f32_bytes = std::mem::size_of::<f32>();
        let traces = memory::bytes_of(&[chains, self.draws, traced, f32_bytes, 2]);
        let (needed, what) = match self.traces {
            TraceForm::Exact => (
                traces,
                format!(
                    "the loss traces of {chains} chain(s) x {} draws x {traced} samples",
                    self.draws
                ),
            ),
            TraceForm::Linearised => (
                traces.saturating_add(memory::bytes_of(&[
                    chains,
                    self.draws,
                    model_floats,
                    f32_bytes,
                ])),
                format!(
                    "the displacements ({chains} chain(s) x {} draws x {model_floats} model values) and traces of {traced} samples",
                    self.draws
                ),
            ),
        };
        memory::check_fits(what, needed)?;
        Ok(())
    }
}

/// Checks what running `chains` of `config` around `w_star` on `task` would store, before
/// anything runs: chain indices the trace file can hold ([`chain_index`], returned in order) and
/// traces that fit in memory ([`ChainConfig::check_memory`]). Callers check before writing
/// anything; [`run_chains`] checks again before allocating.
pub fn check_run(
    w_star: &Classifier,
    task: &MadTask,
    config: &ChainConfig,
    chains: &[usize],
) -> Result<Vec<i64>, MadError> {
    let indices = chains
        .iter()
        .map(|&c| chain_index(c))
        .collect::<Result<Vec<i64>, _>>()?;
    let traced = task.trusted.len().saturating_add(task.test.len());
    let floats = match config.traces {
        TraceForm::Exact => 0,
        TraceForm::Linearised => linearised::flat_len(&w_star.network),
    };
    config.check_memory(chains.len(), traced, floats)?;
    Ok(indices)
}

/// How a chain went: per-step figures and a summary, written beside the traces.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct ChainDiagnostics {
    /// Chain index.
    pub chain: usize,
    /// Minibatch loss (mean cross-entropy, before the update) at every step.
    pub loss: Vec<f64>,
    /// Per-step norms of the gradient drift term.
    pub drift_norm: Vec<f64>,
    /// Per-step norms of the localization pull.
    pub localization_norm: Vec<f64>,
    /// Per-step norms of the injected noise.
    pub noise_norm: Vec<f64>,
    /// Distance from w* after every step.
    pub distance: Vec<f64>,
    /// Fraction of trusted samples whose trace is constant over the chain's draws.
    pub constant_trusted_fraction: f64,
    /// Fraction of test samples whose trace is constant.
    pub constant_test_fraction: f64,
    /// Median over steps of drift norm / noise norm (1e-4 at the reference settings).
    pub median_drift_to_noise: f64,
    /// Seconds in sampler steps.
    pub step_seconds: f64,
    /// Seconds in trace passes.
    pub trace_seconds: f64,
    /// Things a user should know about this chain.
    pub warnings: Vec<String>,
}

impl ChainDiagnostics {
    /// Adds one step's minibatch loss and norms.
    pub(crate) fn record(&mut self, loss: f64, norms: StepNorms) {
        self.loss.push(loss);
        self.drift_norm.push(norms.drift);
        self.localization_norm.push(norms.localization);
        self.noise_norm.push(norms.noise);
        self.distance.push(norms.distance);
    }

    /// Sets the median drift-to-noise ratio from the recorded steps.
    pub(crate) fn summarize_steps(&mut self) {
        let mut ratios: Vec<f64> = self
            .drift_norm
            .iter()
            .zip(&self.noise_norm)
            .filter(|(_, n)| **n > 0.0)
            .map(|(a, b)| a / b)
            .collect();
        ratios.sort_by(f64::total_cmp);
        self.median_drift_to_noise = ratios.get(ratios.len() / 2).copied().unwrap_or(0.0);
    }

    /// Sets the fractions of constant traces from `traces` (`[draws][n]`, the first `n_trusted`
    /// samples trusted).
    pub(crate) fn count_constant_traces(
        &mut self,
        traces: &[f32],
        draws: usize,
        n: usize,
        n_trusted: usize,
    ) {
        let constant = |range: std::ops::Range<usize>| -> f64 {
            if range.is_empty() {
                return 0.0;
            }
            let len = range.len();
            let count = range
                .filter(|&i| (1..draws).all(|k| traces[k * n + i] == traces[i]))
                .count();
            count as f64 / len as f64
        };
        self.constant_trusted_fraction = constant(0..n_trusted);
        self.constant_test_fraction = constant(n_trusted..n);
    }

    /// Mean minibatch loss over the first and over the last `window` steps (fewer when the
    /// chain is shorter): one minibatch is too noisy to tell a chain that drifts away from w*
    /// from batches that differ.
    /// NaN for a chain without steps.
    pub fn loss_at_ends(&self, window: usize) -> (f64, f64) {
        let k = window.clamp(1, self.loss.len().max(1));
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        if self.loss.is_empty() {
            return (f64::NAN, f64::NAN);
        }
        (
            mean(&self.loss[..k]),
            mean(&self.loss[self.loss.len() - k..]),
        )
    }
}

/// What MAD-FA's chains, calibration and sampling runs report while they run ([`Progress`]); the
/// CLI draws progress bars from it. Polled after every step, [`Progress::should_stop`]
/// checkpoints the chain and stops it.
#[derive(Debug, Clone, Copy)]
pub enum ChainEvent<'a> {
    /// Chain `chain` starts (or resumes after `done` of `total` steps).
    ChainStarted {
        /// The chain's index.
        chain: usize,
        /// Steps of the whole chain.
        total: usize,
        /// Steps already done (by an earlier run, when resuming).
        done: usize,
    },
    /// A step finished with minibatch loss `loss`, at `distance` from w*.
    StepFinished {
        /// The step (0-based).
        step: usize,
        /// Its minibatch loss.
        loss: f64,
        /// The distance |w - w*| after it.
        distance: f64,
    },
    /// A chain finished.
    ChainFinished(&'a ChainDiagnostics),
    /// [`super::run_sample`]: the folder holds an earlier run of the same model, data and
    /// settings, whose finished work is reused.
    Resuming(&'a Path),
    /// [`super::run_sample`]: the folder's calibration (at this path) is reused rather than run
    /// again.
    CalibrationReused(&'a Path),
    /// [`super::run_sample`]: the calibration is ready (run or reused).
    Calibrated(&'a Calibration),
    /// [`super::run_sample`]: the chains start.
    Sampling(&'a SamplingPlan<'a>),
}

/// Everything random in one step of a chain: with w* and `V = 0` at the start, another
/// implementation of the update can replay the chain from these ([`super::record`]).
#[derive(Debug, Clone, Copy)]
pub struct StepDraws<'a> {
    /// Step (0-based).
    pub step: usize,
    /// Indices of the minibatch in the sampling set, in batch order.
    pub indices: &'a [usize],
    /// Per updated parameter, in update order: its checkpoint path and its standard-normal draw
    /// `N`, before the scaling by `sqrt(lr) sqrt(G)`, flat in vigil's layout (Linear weights
    /// `[in, out]`, the transpose of PyTorch's).
    pub noise: &'a [(String, Vec<f32>)],
}

/// The samples a chain traces, on the device, batched once: trusted first, then test, each
/// labelled with the model's prediction at w*.
pub struct TraceInputs {
    batches: Vec<(Tensor<4>, Tensor<1, Int>)>,
    /// Number of trusted samples (the first ones).
    pub n_trusted: usize,
    /// Predictions at w* of every traced sample, trusted then test.
    pub labels: Vec<i64>,
    fingerprint: u64,
}

impl TraceInputs {
    /// Predicts every trusted and test sample of `task` with `w_star` and uploads the samples
    /// in batches of `batch_size`.
    pub fn new(
        w_star: &Classifier,
        task: &MadTask,
        batch_size: usize,
        device: &Device,
    ) -> Result<Self, MadError> {
        // Every chain and calibration probe starts here: refuse images the network cannot take.
        task.check_model(&w_star.spec)?;
        let set = task
            .trusted
            .concat(&task.test)
            .map_err(|e| MadError::Data(format!("trusted and test sets do not fit: {e}")))?;
        let device = device.clone().inner();
        let predicted = evaluate(w_star, &set, None, batch_size, BnMode::Eval, &device).predicted;
        let labels: Vec<i64> = predicted.iter().map(|&p| i64::from(p)).collect();
        let all: Vec<usize> = (0..set.len()).collect();
        let batches = all
            .chunks(batch_size.max(1))
            .map(|chunk| {
                let y: Vec<_> = chunk.iter().map(|&i| predicted[i]).collect();
                (
                    images_tensor(&set, chunk, &device),
                    labels_tensor(&y, &device),
                )
            })
            .collect();
        // What a checkpoint belongs to: the weights w* (a chain around another model must never
        // be resumed, even on the same data), the traced samples and the sampling set, hashed
        // as the run identity hashes them.
        let weights =
            crate::identity::hash_classifier(w_star).map_err(|e| MadError::Data(e.to_string()))?;
        let whole = crate::identity::hash_json(&(
            weights,
            crate::identity::hash_images(&set),
            crate::identity::hash_images(&task.sampling),
        ));
        let fingerprint = u64::from_str_radix(&whole[..16], 16).unwrap_or_default();
        Ok(Self {
            batches,
            n_trusted: task.trusted.len(),
            labels,
            fingerprint,
        })
    }

    /// Number of traced samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether nothing is traced.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Traced sample `i` as a batch of one (on the inference device).
    pub(crate) fn image(&self, i: usize) -> Option<Tensor<4>> {
        let mut offset = i;
        for (x, _) in &self.batches {
            let n = x.dims()[0];
            if offset < n {
                return Some(x.clone().narrow(0, offset, 1));
            }
            offset -= n;
        }
        None
    }

    /// Per-sample losses of `model` (inference copy) on every traced sample.
    pub(crate) fn losses(&self, model: &Classifier, form: TraceLoss) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.len());
        for (x, y) in &self.batches {
            let logits = model.forward(x.clone(), BnMode::Eval);
            out.extend(form.per_sample(logits, y.clone()).into_data().iter::<f32>());
        }
        out
    }
}

/// The minibatch of step `step` (0-based) of chain `chain`: passes over the sampling set in
/// seeded permutations, the last batch of a pass shorter when the size does not divide (as a
/// PyTorch loader with `shuffle=True` cycles).
pub fn sampling_batch(
    n: usize,
    batch_size: usize,
    seed: u64,
    chain: usize,
    step: usize,
) -> Vec<usize> {
    let per_pass = n.div_ceil(batch_size).max(1);
    let (pass, position) = (step / per_pass, step % per_pass);
    let order = epoch_order(n, mix(seed, chain as u64, 0xBA7C), pass);
    let start = position * batch_size;
    order[start..(start + batch_size).min(n)].to_vec()
}

/// Seed of the noise of step `step` of chain `chain`.
fn noise_seed(seed: u64, chain: usize, step: usize) -> u64 {
    mix(seed, chain as u64, step as u64)
}

/// What a resumable chain keeps in its folder.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct ChainProgress {
    config: ChainConfig,
    chain: usize,
    fingerprint: u64,
    step: usize,
    diagnostics: ChainDiagnostics,
}

mod files {
    pub const STATE: &str = "state.json";
    pub const MODEL: &str = "model.safetensors";
    pub const RMSPROP: &str = "rmsprop.safetensors";
    pub const TRACES: &str = "traces.safetensors";
}

/// Folder of chain `chain`'s checkpoint under `resume_dir`.
pub fn chain_dir(resume_dir: &Path, chain: usize) -> PathBuf {
    resume_dir.join(format!("chain-{chain}"))
}

/// Fewest kept draws per chain: a correlation needs two.
pub const MIN_KEPT_DRAWS: usize = 2;

/// A chain in progress.
struct Chain {
    live: Classifier,
    slots: ParamSlots,
    traces: Vec<f32>,
    progress: ChainProgress,
}

impl Chain {
    fn fresh(
        w_star: &Classifier,
        config: &ChainConfig,
        chain: usize,
        inputs: &TraceInputs,
        device: &Device,
    ) -> Self {
        let live = Classifier {
            network: w_star
                .deep_copy()
                .network
                .fork(&device.clone().autodiff())
                .train(),
            spec: w_star.spec.clone(),
        };
        let mut slots = ParamSlots::new();
        snapshot_slots(&live.network, &mut slots, W_STAR_SLOT);
        Self {
            live,
            slots,
            traces: Vec::new(),
            progress: ChainProgress {
                config: config.clone(),
                chain,
                fingerprint: inputs.fingerprint,
                step: 0,
                diagnostics: ChainDiagnostics {
                    chain,
                    ..Default::default()
                },
            },
        }
    }

    /// The checkpoint in `dir`, if there is one; an error if it belongs to other settings or
    /// data, or its files disagree.
    fn load(
        dir: &Path,
        w_star: &Classifier,
        config: &ChainConfig,
        inputs: &TraceInputs,
        device: &Device,
    ) -> Result<Option<Self>, MadError> {
        let state_path = dir.join(files::STATE);
        if !state_path.exists() {
            return Ok(None);
        }
        let fail = |reason: String| MadError::Resume {
            path: dir.to_path_buf(),
            reason,
        };
        let text = std::fs::read_to_string(&state_path).map_err(|e| fail(e.to_string()))?;
        let progress: ChainProgress =
            serde_json::from_str(&text).map_err(|e| fail(e.to_string()))?;
        if progress.config != *config {
            return Err(fail(
                "it holds a chain with other settings; choose another output folder or delete it"
                    .into(),
            ));
        }
        if progress.fingerprint != inputs.fingerprint {
            return Err(fail(
                "it holds a chain around another model, or over other data or another split; choose another output folder or delete it"
                    .into(),
            ));
        }
        let step = progress.step as u64;
        let model_path = dir.join(files::MODEL);
        let model_step = metadata_step(checkpoint::inspect(&model_path)?.training.as_ref());
        let live = checkpoint::load_classifier(&model_path, &device.clone().autodiff())?;
        let rms = TensorFile::load(&dir.join(files::RMSPROP))?;
        let traces = TensorFile::load(&dir.join(files::TRACES))?;
        if model_step != Some(step)
            || tensor_file_step(&rms) != Some(step)
            || tensor_file_step(&traces) != Some(step)
        {
            return Err(fail(format!(
                "its files are from different steps (state at step {step}): the run stopped while checkpointing; delete the folder to start the chain again"
            )));
        }
        let mut slots = ParamSlots::new();
        let mut snapshot = ParamSlots::new();
        snapshot_slots(&w_star.network, &mut snapshot, W_STAR_SLOT);
        let mut rejected = slots.import(
            &live.network,
            W_STAR_SLOT,
            snapshot.export(&w_star.network, W_STAR_SLOT),
        );
        let entries = rms.tensors.into_iter().map(|(n, _, v)| (n, v)).collect();
        rejected.extend(slots.import(&live.network, SQUARED_GRADIENT_SLOT, entries));
        if !rejected.is_empty() {
            return Err(fail(format!(
                "its state does not fit the model: {}",
                rejected.join(", ")
            )));
        }
        let traces = traces
            .tensors
            .into_iter()
            .next()
            .map(|(_, _, v)| v)
            .unwrap_or_default();
        let expected =
            draws_before(config, progress.step) * values_per_draw(config, inputs, w_star);
        if traces.len() != expected {
            return Err(fail(format!(
                "it holds {} trace values where step {step} implies {expected}",
                traces.len()
            )));
        }
        Ok(Some(Self {
            live,
            slots,
            traces,
            progress,
        }))
    }

    fn save(&self, dir: &Path) -> Result<(), MadError> {
        let step = self.progress.step;
        let meta = serde_json::json!({ "step": step });
        checkpoint::save_classifier(&dir.join(files::MODEL), &self.live, Some(&meta))?;
        let mut rms = TensorFile::default();
        for (name, values) in self.slots.export(&self.live.network, SQUARED_GRADIENT_SLOT) {
            let n = values.len();
            rms.tensors.push((name, vec![n], values));
        }
        let mut traces = TensorFile::default();
        traces.tensors.push((
            "traces".into(),
            vec![self.traces.len()],
            self.traces.clone(),
        ));
        for f in [&mut rms, &mut traces] {
            f.metadata.insert(STEP_KEY.into(), step.to_string());
        }
        rms.save(&dir.join(files::RMSPROP))?;
        traces.save(&dir.join(files::TRACES))?;
        write_json_atomic(&dir.join(files::STATE), &self.progress)?;
        Ok(())
    }
}

/// Values a chain keeps per draw: a loss per traced sample, or (linearised) a displacement of
/// every float of the model.
fn values_per_draw(config: &ChainConfig, inputs: &TraceInputs, w_star: &Classifier) -> usize {
    match config.traces {
        TraceForm::Exact => inputs.len(),
        TraceForm::Linearised => linearised::flat_len(&w_star.network),
    }
}

/// Kept draws recorded in the first `steps` steps.
fn draws_before(config: &ChainConfig, steps: usize) -> usize {
    steps.saturating_sub(config.burn_in) / config.thinning
}

/// How a call to [`run_chain`] ended.
pub enum ChainOutcome {
    /// All draws recorded: traces `[draws, n]` row-major (linearised chains: displacements
    /// `[draws, floats]`, which [`run_chains`] turns into traces), and the chain's diagnostics.
    Finished(Vec<f32>, Box<ChainDiagnostics>),
    /// Stopped by its [`Progress`] after checkpointing; run again to continue.
    Interrupted,
}

/// Seconds between automatic checkpoints of a running chain.
const CHECKPOINT_SECONDS: f64 = 60.0;

/// Runs (or resumes) chain `chain` of `config` around `w_star`, drawing minibatches from
/// `sampling` and tracing `inputs`. With `resume_dir`, the chain checkpoints there every minute
/// and when stopped, and a later call continues from the checkpoint bit for bit. With
/// `recorder` (of this chain: `vigil sample --record-steps`), every step's random draws are
/// written too; without it nothing is copied.
#[allow(clippy::too_many_arguments)]
pub fn run_chain(
    w_star: &Classifier,
    sampling: &ImageSet,
    inputs: &TraceInputs,
    config: &ChainConfig,
    chain: usize,
    resume_dir: Option<&Path>,
    device: &Device,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
    mut recorder: Option<&mut StepRecorder>,
) -> Result<ChainOutcome, MadError> {
    config.validate()?;
    if sampling.is_empty() {
        return Err(MadError::Data("the sampling set is empty".into()));
    }
    let dir = resume_dir.map(|d| chain_dir(d, chain));
    let loaded = match &dir {
        Some(dir) => Chain::load(dir, w_star, config, inputs, device)?,
        None => None,
    };
    let mut state = loaded.unwrap_or_else(|| Chain::fresh(w_star, config, chain, inputs, device));
    let autodiff = device.clone().autodiff();
    let total = config.total_steps();
    let chance = (w_star.spec.num_classes().max(2) as f64).ln();
    progress.report(ChainEvent::ChainStarted {
        chain,
        total,
        done: state.progress.step,
    });
    let record = recorder.is_some();
    let sampled_values = trainable_values(&state.live.network);
    let paths: HashMap<ParamId, String> = if record {
        param_infos(&state.live.network)
            .into_iter()
            .map(|p| (p.id, p.path))
            .collect()
    } else {
        HashMap::new()
    };
    let mut last_save = Instant::now();
    while state.progress.step < total {
        let step = state.progress.step;
        let started = Instant::now();
        let indices = sampling_batch(
            sampling.len(),
            config.sgld.batch_size,
            config.seed,
            chain,
            step,
        );
        // Created before the forward pass, so its noise is drawn while the passes run.
        let mut rule = LocalizedSgld::prefetched(
            &config.sgld,
            noise_seed(config.seed, chain, step),
            sampled_values,
        );
        let b = batch(sampling, &indices, &autodiff);
        let logits = state.live.forward(b.images, config.bn.step_mode());
        let loss = cross_entropy(logits, b.labels);
        let loss_value = f64::from(loss.clone().into_scalar::<f32>());
        let diagnostics = &state.progress.diagnostics;
        let initial = diagnostics.loss.first().copied().unwrap_or(loss_value);
        if !loss_value.is_finite() || loss_value > initial + 10.0 * chance {
            return Err(MadError::ChainDiverged {
                chain,
                step,
                reason: format!(
                    "the minibatch loss is {loss_value} (it started at {initial:.4}); lower lr or n_beta, or raise gamma"
                ),
            });
        }
        let grads = loss.backward();
        if record {
            rule = rule.keeping_noise();
        }
        // Moved out rather than cloned (w*'s network holds the place for the moment), so the
        // update finds each weight's buffer held once and writes it in place.
        let live = std::mem::replace(&mut state.live.network, w_star.network.clone());
        state.live.network = apply_update(live, &grads, &mut rule, &mut state.slots);
        let noise = rule.take_noise();
        let norms = rule.finish()?;
        if !norms.distance.is_finite() {
            return Err(MadError::ChainDiverged {
                chain,
                step,
                reason: "the parameters became non-finite".into(),
            });
        }
        if record {
            let noise: Vec<(String, Vec<f32>)> = noise
                .into_iter()
                .map(|(id, draw)| (paths.get(&id).cloned().unwrap_or_default(), draw))
                .collect();
            let draws = StepDraws {
                step,
                indices: &indices,
                noise: &noise,
            };
            if let Some(recorder) = recorder.as_deref_mut() {
                recorder.write(&draws)?;
            }
        }
        state.progress.step += 1;
        let diagnostics = &mut state.progress.diagnostics;
        diagnostics.record(loss_value, norms);
        diagnostics.step_seconds += started.elapsed().as_secs_f64();
        if config.draw_after(state.progress.step).is_some() {
            let started = Instant::now();
            match config.traces {
                TraceForm::Exact => {
                    let model = state.live.for_inference();
                    state.traces.extend(inputs.losses(&model, config.loss));
                }
                TraceForm::Linearised => state
                    .traces
                    .extend(linearised::displacement(&state.live, &state.slots)),
            }
            state.progress.diagnostics.trace_seconds += started.elapsed().as_secs_f64();
        }
        progress.report(ChainEvent::StepFinished {
            step,
            loss: loss_value,
            distance: norms.distance,
        });
        let stop = progress.should_stop();
        if let Some(dir) = &dir
            && state.progress.step < total
            && (stop || last_save.elapsed().as_secs_f64() >= CHECKPOINT_SECONDS)
        {
            state.save(dir)?;
            last_save = Instant::now();
        }
        if stop && state.progress.step < total {
            return Ok(ChainOutcome::Interrupted);
        }
    }
    let mut diagnostics = state.progress.diagnostics.clone();
    // Linearised chains hold displacements: `run_chains` adds the trace summary once they are
    // traces.
    let traces = (config.traces == TraceForm::Exact).then_some(state.traces.as_slice());
    summarize(&mut diagnostics, traces, inputs, config);
    state.progress.diagnostics = diagnostics.clone();
    if let Some(dir) = &dir {
        state.save(dir)?;
    }
    progress.report(ChainEvent::ChainFinished(&diagnostics));
    Ok(ChainOutcome::Finished(state.traces, Box::new(diagnostics)))
}

/// Fills the summary fields of `d`: from the chain's steps, and from its `traces` when they are
/// known (a linearised chain's traces exist only once `run_chains` has formed them; it calls this
/// again then).
fn summarize(
    d: &mut ChainDiagnostics,
    traces: Option<&[f32]>,
    inputs: &TraceInputs,
    config: &ChainConfig,
) {
    let draws = config.draws;
    let n = inputs.len();
    if let Some(traces) = traces {
        d.count_constant_traces(traces, draws, n, inputs.n_trusted);
    }
    d.summarize_steps();
    d.warnings.clear();
    if d.distance.last().is_none_or(|&x| x == 0.0) {
        d.warnings
            .push("the chain did not move from w*: no parameter has a gradient".into());
    }
    // Draws closer together than the chain's correlation time repeat each other: at the
    // reference settings (pull 0.05) a few hundred draws hold about a dozen independent ones,
    // which is what makes single runs a lottery (docs/madfa.md, "Settings chosen from trusted
    // data").
    let pull = config.sgld.pull();
    let steps_per_independent = (1.0 / pull).max(1.0);
    if steps_per_independent > 5.0 * config.thinning as f64 {
        d.warnings.push(format!(
            "the localization pulls the chain back by {pull:.2} per step, so draws stay correlated over about {steps_per_independent:.0} steps: these {draws} draws hold about {:.0} independent ones, and the AUROC depends on the noise draw; `vigil sample --calibrate` (or `vigil calibrate`) picks a faster-mixing lr",
            (draws * config.thinning) as f64 / steps_per_independent
        ));
    }
    if d.constant_test_fraction > 0.1 || d.constant_trusted_fraction > 0.1 {
        d.warnings.push(format!(
            "{:.0}% of test and {:.0}% of trusted traces are constant (float32 losses stuck at 0): they score as uncoupled; consider --loss log",
            100.0 * d.constant_test_fraction,
            100.0 * d.constant_trusted_fraction
        ));
    }
}

/// Settings of a sampling run, stored in the trace file and beside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleSettings {
    /// Chain settings.
    pub chain: ChainConfig,
    /// Chains this file holds.
    pub chains: Vec<usize>,
    /// Free-form description of the data (split, seed, record), set by the caller.
    pub data: serde_json::Value,
    /// vigil version.
    pub vigil_version: String,
}

/// Runs chains `chains` of `config` on `task` and returns their traces, or `None` if `progress`
/// stopped them (each checkpointed under `resume_dir` when given). `recorder` writes the random
/// draws of its chain ([`StepRecorder::chain`]) when that chain is one of `chains`.
#[allow(clippy::too_many_arguments)]
pub fn run_chains(
    w_star: &Classifier,
    task: &MadTask,
    config: &ChainConfig,
    chains: &[usize],
    data: serde_json::Value,
    resume_dir: Option<&Path>,
    device: &Device,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
    mut recorder: Option<&mut StepRecorder>,
) -> Result<Option<(LossTraces, Vec<ChainDiagnostics>)>, MadError> {
    config.validate()?;
    if chains.is_empty() {
        return Err(MadError::InvalidConfig("no chain to run".into()));
    }
    // Before any chain runs: an index the trace file cannot store or traces that cannot fit
    // cost no work.
    let chain_indices = check_run(w_star, task, config, chains)?;
    if config.traces == TraceForm::Linearised {
        linearised::check_memory(
            chains.len() * config.draws,
            linearised::flat_len(&w_star.network),
        )?;
    }
    let inputs = TraceInputs::new(w_star, task, config.trace_batch_size, device)?;
    let (n, n_trusted) = (inputs.len(), inputs.n_trusted);
    let mut trusted = ndarray::Array3::<f32>::zeros((chains.len(), config.draws, n_trusted));
    let mut test = ndarray::Array3::<f32>::zeros((chains.len(), config.draws, n - n_trusted));
    let mut all_diagnostics = Vec::new();
    let mut chain_values = Vec::new();
    for &chain in chains {
        let outcome = run_chain(
            w_star,
            &task.sampling,
            &inputs,
            config,
            chain,
            resume_dir,
            device,
            progress,
            recorder.as_deref_mut().filter(|r| r.chain() == chain),
        )?;
        let ChainOutcome::Finished(values, diagnostics) = outcome else {
            return Ok(None);
        };
        chain_values.push(values);
        all_diagnostics.push(*diagnostics);
    }
    if config.traces == TraceForm::Linearised {
        // One pass of per-sample gradients serves every chain's displacements, joined in place
        // (the first chain's buffer grows) rather than copied whole beside them.
        let started = Instant::now();
        let mut parts = std::mem::take(&mut chain_values).into_iter();
        let mut displacements = parts.next().unwrap_or_default();
        for part in parts {
            displacements.extend_from_slice(&part);
        }
        let traces =
            linearised::linearised_traces(w_star, &inputs, &displacements, config.loss, device)?;
        let share = started.elapsed().as_secs_f64() / chains.len() as f64;
        chain_values = traces
            .chunks_exact(config.draws * n)
            .map(<[f32]>::to_vec)
            .collect();
        for (d, values) in all_diagnostics.iter_mut().zip(&chain_values) {
            d.trace_seconds += share;
            summarize(d, Some(values), &inputs, config);
        }
    }
    for (slot, values) in chain_values.iter().enumerate() {
        for (d, row) in values.chunks_exact(n).enumerate() {
            for (i, &v) in row.iter().enumerate() {
                if i < n_trusted {
                    trusted[[slot, d, i]] = v;
                } else {
                    test[[slot, d, i - n_trusted]] = v;
                }
            }
        }
    }
    let settings = SampleSettings {
        chain: config.clone(),
        chains: chains.to_vec(),
        data,
        vigil_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let traces = LossTraces {
        trusted,
        test,
        trusted_labels: inputs.labels[..n_trusted].to_vec(),
        test_is_anomalous: task.test_is_anomalous.clone(),
        chain_indices: Some(chain_indices),
        trusted_ids: Some(task.trusted_ids.clone()),
        test_ids: Some(task.test_ids.clone()),
        test_labels: Some(inputs.labels[n_trusted..].to_vec()),
        settings_json: serde_json::to_string(&settings).ok(),
    };
    Ok(Some((traces, all_diagnostics)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steps(loss: &[f64], drift: &[f64], noise: &[f64]) -> ChainDiagnostics {
        ChainDiagnostics {
            loss: loss.to_vec(),
            drift_norm: drift.to_vec(),
            noise_norm: noise.to_vec(),
            ..ChainDiagnostics::default()
        }
    }

    #[test]
    fn loss_at_ends_averages_the_first_and_last_steps() {
        let d = steps(&[1.0, 2.0, 3.0, 4.0, 5.0], &[], &[]);
        assert_eq!(d.loss_at_ends(2), (1.5, 4.5));
        assert_eq!(d.loss_at_ends(1), (1.0, 5.0));
        // A window longer than the chain is the whole chain, at both ends.
        assert_eq!(d.loss_at_ends(10), (3.0, 3.0));
        assert_eq!(d.loss_at_ends(0), (1.0, 5.0));
        let (a, b) = ChainDiagnostics::default().loss_at_ends(3);
        assert!(a.is_nan() && b.is_nan());
    }

    #[test]
    fn the_median_drift_to_noise_skips_steps_without_noise() {
        // Ratios 0.5, 2 and 3 (the step without noise is skipped): the median is 2.
        let mut d = steps(&[0.0; 4], &[1.0, 4.0, 9.0, 1.0], &[2.0, 2.0, 3.0, 0.0]);
        d.summarize_steps();
        assert_eq!(d.median_drift_to_noise, 2.0);
    }

    #[test]
    fn constant_traces_are_counted_per_group() {
        // Two draws of three samples (the first trusted): sample 0 and sample 2 never move.
        let traces = [1.0, 2.0, 3.0, 1.0, 2.5, 3.0];
        let mut d = ChainDiagnostics::default();
        d.count_constant_traces(&traces, 2, 3, 1);
        assert_eq!(d.constant_trusted_fraction, 1.0);
        assert_eq!(d.constant_test_fraction, 0.5);
    }
}
