//! Supervised training of a [`Classifier`]: SGD, schedules, per-epoch evaluation, checkpoints and
//! exact resume.
//!
//! A run lives in one folder:
//! - `model.safetensors`: the latest weights (a plain PyTorch-layout checkpoint with metadata);
//! - `metrics.jsonl`: one JSON line per finished epoch;
//! - `resume/`: what `--resume` needs: `state.json` (config, position, history), `model.safetensors`
//!   and `optimizer.safetensors` (momentum buffers by parameter name), written at every epoch end
//!   and on interruption. `state.json` is written last and atomically, and names the step the other
//!   two were written at, so a crash between writes is detected instead of resumed from.
//!
//! Shuffling and augmentation draw from RNGs seeded by `(seed, epoch)` and `(seed, epoch, batch)`,
//! so an interrupted run resumed mid-epoch produces the same weights as an uninterrupted one.

pub mod robust;
pub mod session;
pub mod text;

use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Gradients, Int, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError, TensorFile};
use crate::data::{Augmentation, Batch, ImageSet, augmented_batch};
use crate::inference::evaluate;
use crate::io::{IoError, write_atomic, write_json_atomic};
use crate::loss::{cross_entropy, predictions};
use crate::models::{BnMode, Classifier};
use crate::optim::adam::AdamConfig;
use crate::optim::schedule::{Schedule, StepHyper};
use crate::optim::sgd::{MOMENTUM_SLOT, Sgd, SgdConfig};
use crate::optim::{ParamSlots, apply_update};

/// Every optimiser slot a resume saves, SGD's momentum first (its entries carry no prefix).
const OPTIMIZER_SLOTS: [&str; 3] = [
    MOMENTUM_SLOT,
    crate::optim::adam::FIRST,
    crate::optim::adam::SECOND,
];
use crate::progress::Progress;

pub use session::{
    DataSelection, Run, RunRequest, SessionError, SessionOutcome, open_run, run_files,
    train_supervised_to_end, train_to_end,
};

/// Errors of a training run.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// The configuration cannot work.
    #[error("invalid training config: {0}")]
    InvalidConfig(String),
    /// The datasets do not fit the model.
    #[error("dataset does not fit the model: {0}")]
    DataMismatch(String),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A results file could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The resume state is missing, unreadable or inconsistent.
    #[error("cannot resume from {path}: {reason}")]
    Resume {
        /// The run folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The loss became NaN or infinite.
    #[error(
        "training diverged at epoch {epoch}, batch {batch}: loss is {loss}; lower the learning rate"
    )]
    Diverged {
        /// Epoch (0-based).
        epoch: usize,
        /// Batch within the epoch.
        batch: usize,
        /// The loss value.
        loss: f64,
    },
}

/// How to train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainConfig {
    /// Name of the training data (informational; `vigil eval` defaults to it).
    pub dataset: String,
    /// Passes over the training set.
    pub epochs: usize,
    /// Training batch size.
    pub batch_size: usize,
    /// Batch size of the evaluation passes.
    pub eval_batch_size: usize,
    /// Learning-rate schedule (stepped per batch).
    pub schedule: Schedule,
    /// Optimiser.
    pub sgd: SgdConfig,
    /// Zero padding of the random crop (0 = no crop).
    pub crop_padding: usize,
    /// Random horizontal flips.
    pub horizontal_flip: bool,
    /// Seed of initialisation, shuffling and augmentation.
    pub seed: u64,
    /// Size of the seeded random subset of the training data used, if not all of it (the CLI's
    /// `--train-limit`; recorded so a resumed run sees the same data).
    #[serde(default)]
    pub train_limit: Option<usize>,
    /// Likewise for the evaluation data (`--test-limit`).
    #[serde(default)]
    pub test_limit: Option<usize>,
    /// Robust OOD training (HALO and its ladder): the objective, its outliers, helper and
    /// validation split. `None` for plain cross-entropy training.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub robust: Option<robust::RobustSettings>,
    /// AdamW instead of SGD (`sgd` is then unused); `None` for SGD.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adamw: Option<AdamConfig>,
    /// A language model's run: its model and sequences. `None` for a classifier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<text::TextSettings>,
}

impl TrainConfig {
    /// The recipe vigil uses for the small CNN on Fashion-MNIST.
    pub fn small_cnn_default() -> Self {
        Self {
            dataset: "fashion-mnist".into(),
            epochs: 10,
            batch_size: 128,
            eval_batch_size: 512,
            schedule: Schedule::one_cycle(0.05, 0.25),
            sgd: SgdConfig::default(),
            crop_padding: 0,
            horizontal_flip: false,
            seed: 0,
            train_limit: None,
            test_limit: None,
            robust: None,
            adamw: None,
            text: None,
        }
    }

    /// Checks the values make sense.
    pub fn validate(&self) -> Result<(), TrainError> {
        let bad = |m: &str| Err(TrainError::InvalidConfig(m.to_string()));
        if self.epochs == 0 {
            return bad("epochs must be at least 1");
        }
        if self.batch_size == 0 || self.eval_batch_size == 0 {
            return bad("batch sizes must be at least 1");
        }
        if !(0.0..1.0).contains(&self.sgd.momentum) {
            return bad("momentum must lie in [0, 1)");
        }
        // Written so that NaN fails every check: `!(x >= 0)` holds for NaN, `x < 0` does not.
        if !(self.sgd.weight_decay.is_finite() && self.sgd.weight_decay >= 0.0) {
            return bad(&format!(
                "weight decay must be finite and >= 0, got {}",
                self.sgd.weight_decay
            ));
        }
        if let Some(problem) = self.adamw.as_ref().and_then(AdamConfig::problem) {
            return bad(&problem);
        }
        self.validate_schedule()
    }

    /// A learning rate that is zero, negative or not finite never trains (a negative one climbs
    /// the loss), so every rate the schedule can produce is checked, not only warned about
    /// after an epoch.
    fn validate_schedule(&self) -> Result<(), TrainError> {
        let bad = |m: String| Err(TrainError::InvalidConfig(m));
        let positive = |name: &str, v: f64| {
            if v.is_finite() && v > 0.0 {
                Ok(())
            } else {
                bad(format!("{name} must be finite and > 0, got {v}"))
            }
        };
        match &self.schedule {
            Schedule::Constant { lr } => positive("the learning rate", *lr),
            Schedule::Step { lr, gamma, .. } => {
                positive("the learning rate", *lr)?;
                positive("the step schedule's gamma", *gamma)
            }
            Schedule::OneCycle {
                max_lr,
                pct_start,
                div_factor,
                final_div_factor,
                base_momentum,
                max_momentum,
                ..
            } => {
                positive("the learning rate", *max_lr)?;
                positive("the one-cycle div factor", *div_factor)?;
                positive("the one-cycle final div factor", *final_div_factor)?;
                if !(0.0..=1.0).contains(pct_start) {
                    return bad(format!(
                        "the warm-up fraction must lie in [0, 1], got {pct_start}"
                    ));
                }
                for (name, m) in [("base", base_momentum), ("max", max_momentum)] {
                    if !(0.0..1.0).contains(m) {
                        return bad(format!(
                            "the one-cycle {name} momentum must lie in [0, 1), got {m}"
                        ));
                    }
                }
                Ok(())
            }
        }
    }

    /// The configured crop and flip.
    pub fn augmentation(&self) -> Augmentation {
        Augmentation {
            crop_padding: self.crop_padding,
            horizontal_flip: self.horizontal_flip,
        }
    }

    /// The augmented batch of step `at` from `set`: the configured crop and flip, drawn from an
    /// RNG seeded by `(seed, epoch, batch)` so a resumed run draws the same.
    pub fn batch(&self, set: &ImageSet, at: &StepAt) -> Batch {
        let mut rng = StdRng::seed_from_u64(mix(self.seed, at.epoch as u64, at.batch as u64));
        augmented_batch(set, at.samples, &self.augmentation(), &mut rng, at.device)
    }
}

/// One finished epoch, as written to `metrics.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EpochRecord {
    /// Epoch number, 1-based.
    pub epoch: usize,
    /// Mean training loss over the epoch's batches.
    pub train_loss: f64,
    /// Training accuracy over the epoch's batches (augmented inputs, train-mode BatchNorm).
    pub train_accuracy: f64,
    /// Loss on the evaluation set.
    pub test_loss: f64,
    /// Accuracy on the evaluation set.
    pub test_accuracy: f64,
    /// Learning rate of the epoch's last step.
    pub lr: f64,
    /// Wall time of the epoch, evaluation included.
    pub seconds: f64,
    /// The step rule's validation loss (robust training: cross-entropy on attacked held-out
    /// data), when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_loss: Option<f64>,
}

/// Where a run stands: enough to resume it exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// The configuration the run was started with.
    pub config: TrainConfig,
    /// Current epoch (0-based).
    pub epoch: usize,
    /// Batches of the current epoch already done.
    pub batch: usize,
    /// Optimiser steps done.
    pub step: usize,
    /// Running sums of the current epoch: loss, correct, seen.
    pub epoch_sums: (f64, usize, usize),
    /// Seconds spent in the current epoch before the last interruption.
    pub epoch_seconds: f64,
    /// Finished epochs.
    pub history: Vec<EpochRecord>,
}

impl TrainState {
    /// The state of a run that has not started.
    pub fn new(config: TrainConfig) -> Self {
        Self {
            config,
            epoch: 0,
            batch: 0,
            step: 0,
            epoch_sums: (0.0, 0, 0),
            epoch_seconds: 0.0,
            history: Vec::new(),
        }
    }

    /// Whether every epoch is done.
    pub fn finished(&self) -> bool {
        self.epoch >= self.config.epochs
    }

    /// The finished epoch (1-based) with the lowest validation loss, and that loss: the weights
    /// kept in `best.safetensors`. The first such epoch on a tie; `None` without validation.
    pub fn best_epoch(&self) -> Option<(usize, f64)> {
        let mut best: Option<(usize, f64)> = None;
        for record in &self.history {
            if let Some(loss) = record.validation_loss
                && best.is_none_or(|(_, b)| loss < b)
            {
                best = Some((record.epoch, loss));
            }
        }
        best
    }

    /// Counts batch `b` of the current epoch as done: one optimiser step over `n` predictions
    /// (images, or counted tokens) with mean loss `loss`, `correct` of them right. Returns the epoch's running mean loss and
    /// accuracy.
    pub fn record_batch(&mut self, b: usize, n: usize, loss: f64, correct: usize) -> (f64, f64) {
        self.step += 1;
        self.batch = b + 1;
        let sums = &mut self.epoch_sums;
        sums.0 += loss * n as f64;
        sums.1 += correct;
        sums.2 += n;
        (sums.0 / sums.2 as f64, sums.1 as f64 / sums.2 as f64)
    }

    /// Closes the current epoch with its evaluation `eval`, last learning rate `lr`, the
    /// `seconds` spent on it since the last resume and the rule's `validation_loss`: appends its
    /// record to the history, moves to the next epoch, and returns the record.
    pub fn finish_epoch(
        &mut self,
        eval: &Evaluation,
        lr: f64,
        seconds: f64,
        validation_loss: Option<f64>,
    ) -> EpochRecord {
        let (loss_sum, correct, seen) = self.epoch_sums;
        let record = EpochRecord {
            epoch: self.epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct as f64 / seen.max(1) as f64,
            test_loss: eval.mean_loss,
            test_accuracy: eval.accuracy,
            lr,
            seconds: self.epoch_seconds + seconds,
            validation_loss,
        };
        self.history.push(record.clone());
        self.epoch += 1;
        self.batch = 0;
        self.epoch_sums = (0.0, 0, 0);
        self.epoch_seconds = 0.0;
        record
    }
}

/// `loss` if it is finite, else the error that stops a diverged run at `epoch`, `batch`.
pub fn finite_loss(loss: f64, epoch: usize, batch: usize) -> Result<f64, TrainError> {
    if loss.is_finite() {
        Ok(loss)
    } else {
        Err(TrainError::Diverged { epoch, batch, loss })
    }
}

/// What training reports to its caller while it runs ([`Progress`]): the trainer's epochs and
/// batches, and the moments a session ([`session`]) announces to a user. The CLI draws progress
/// bars from it. [`Progress::should_stop`] is polled after every batch and every epoch: `true`
/// stops the run cleanly (it checkpoints first).
#[derive(Clone, Copy)]
pub enum TrainEvent<'a> {
    /// An epoch starts.
    EpochStarted {
        /// The epoch (0-based).
        epoch: usize,
        /// Batches in the whole epoch.
        batches: usize,
        /// Batches already done (when resuming mid-epoch).
        done: usize,
    },
    /// A batch finished; `loss` and `accuracy` are running means over the epoch so far.
    BatchFinished {
        /// The batch (0-based, in the epoch).
        batch: usize,
        /// Mean training loss over the epoch so far.
        loss: f64,
        /// Training accuracy over the epoch so far.
        accuracy: f64,
        /// The learning rate of this batch.
        lr: f64,
    },
    /// Evaluation of the epoch starts.
    Evaluating,
    /// An epoch finished and was checkpointed.
    EpochFinished(&'a EpochRecord),
    /// The run in `out` was opened (`run.resumed` says whether it was reopened); nothing has
    /// trained yet.
    RunOpened {
        /// The run folder.
        out: &'a Path,
        /// The run.
        run: &'a Run,
    },
    /// Training starts on `train_images` images, evaluated on `test_images`; `beside` names
    /// what trains with the model (an objective, generators), if anything.
    TrainingStarts {
        /// The run.
        run: &'a Run,
        /// What trains with the model.
        beside: Option<&'a str>,
        /// Training images.
        train_images: usize,
        /// Evaluation images.
        test_images: usize,
    },
    /// [`train_to_end`] returns `outcome` for the run in `out`, now at `state`.
    TrainingEnded {
        /// The run folder.
        out: &'a Path,
        /// How the session ended.
        outcome: SessionOutcome,
        /// The run's state now.
        state: &'a TrainState,
    },
    /// Letter outliers for robust training were drawn: `images` of them, from `font_dir`.
    OutliersDrawn {
        /// How many.
        images: usize,
        /// The fonts' folder.
        font_dir: &'a Path,
    },
}

/// How a call to [`train`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrainOutcome {
    /// All epochs done.
    Finished,
    /// Stopped by its [`Progress`]; resumable.
    Interrupted,
}

/// Where a training step stands, and what the schedule gives it.
pub struct StepAt<'a> {
    /// Epoch (0-based).
    pub epoch: usize,
    /// Batch within the epoch (0-based).
    pub batch: usize,
    /// Optimiser steps done before this one.
    pub step: usize,
    /// The batch: indices into the training set, in the epoch's seeded order.
    pub samples: &'a [usize],
    /// Learning rate and momentum of this step.
    pub hyper: StepHyper,
    /// The autodiff device the run trains on.
    pub device: &'a Device,
}

/// What a step reports to the run's bookkeeping.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// The step's mean loss (finite: a rule returns [`TrainError::Diverged`] otherwise).
    pub loss: f64,
    /// How many of the step's predictions were right.
    pub correct: usize,
    /// How many predictions `correct` and the mean loss are over: the batch's samples for a
    /// classifier, its counted tokens for a language model.
    pub scored: usize,
}

/// One training objective: the part of a step in which plain training, Input-Aware's joint
/// training, robust (HALO) training and language-model training differ. [`run`] does the rest:
/// sample order, schedule, bookkeeping, evaluation, checkpoints, stop and exact resume.
pub trait StepRule<T: Trainee = Classifier> {
    /// One optimiser step of `model` (with optimiser state `slots`) on the batch `at`.
    fn step(
        &mut self,
        model: &mut T,
        slots: &mut ParamSlots,
        at: &StepAt,
    ) -> Result<StepStats, TrainError>;

    /// Writes the rule's own state (extra networks, their optimisers) for a resume at `step`.
    /// Called before the run's state file, which names the step, is written.
    fn save(&self, _run_dir: &Path, _step: usize) -> Result<(), TrainError> {
        Ok(())
    }

    /// A loss on held-out data after an epoch, if the rule has one: the run keeps the weights
    /// of the epoch where it is lowest in `best.safetensors`.
    fn validation_loss(&mut self, _model: &T, _device: &Device) -> Result<Option<f64>, TrainError> {
        Ok(None)
    }

    /// The weights the run evaluates, validates and keeps as best when they are not the live
    /// ones (an average of the weights); `None` for the live weights. Such a run also writes
    /// them to `average.safetensors` after every epoch.
    fn evaluated_model(&self, _live: &T, _device: &Device) -> Result<Option<T>, TrainError> {
        Ok(None)
    }
}

/// A model's loss and accuracy on its evaluation data after an epoch.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Evaluation {
    /// Mean loss.
    pub mean_loss: f64,
    /// Fraction right (classes for a classifier, next tokens for a language model).
    pub accuracy: f64,
}

/// What [`run`] trains: a model with a network the optimiser updates, evaluation data it is
/// measured on after every epoch, and a checkpoint format.
pub trait Trainee: Sized {
    /// The module whose parameters the optimiser updates and whose slots a resume saves.
    type Network: Module;
    /// The data the model is evaluated on.
    type EvalSet: ?Sized;

    /// The network.
    fn network(&self) -> &Self::Network;

    /// Refuses evaluation data (and a configuration) the model cannot take.
    fn check_eval(&self, set: &Self::EvalSet, config: &TrainConfig) -> Result<(), TrainError>;

    /// Loss and accuracy on `set`, in batches of `batch_size`.
    fn evaluate(
        &self,
        set: &Self::EvalSet,
        batch_size: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError>;

    /// Writes the model atomically to `path` with `training` as metadata.
    fn save(&self, path: &Path, training: Option<&serde_json::Value>) -> Result<(), TrainError>;

    /// Reads a model [`Trainee::save`] wrote, onto `device`.
    fn load(path: &Path, device: &Device) -> Result<Self, TrainError>;
}

impl Trainee for Classifier {
    type Network = crate::models::Network;
    type EvalSet = ImageSet;

    fn network(&self) -> &Self::Network {
        &self.network
    }

    fn check_eval(&self, set: &ImageSet, config: &TrainConfig) -> Result<(), TrainError> {
        check_fits(self, set, "evaluation")?;
        // Padding by the image's side or more lets a random crop fall wholly in the padding:
        // the model would be trained on blank images, silently.
        let [_, height, width] = self.spec.input_shape;
        if config.crop_padding >= height.min(width) {
            return Err(TrainError::InvalidConfig(format!(
                "crop padding {} must be smaller than the images' side ({height}x{width})",
                config.crop_padding
            )));
        }
        Ok(())
    }

    fn evaluate(
        &self,
        set: &ImageSet,
        batch_size: usize,
        device: &Device,
    ) -> Result<Evaluation, TrainError> {
        let eval = evaluate(self, set, None, batch_size, BnMode::Eval, device);
        Ok(Evaluation {
            mean_loss: eval.mean_loss(),
            accuracy: eval.accuracy(),
        })
    }

    fn save(&self, path: &Path, training: Option<&serde_json::Value>) -> Result<(), TrainError> {
        Ok(checkpoint::save_classifier(path, self, training)?)
    }

    fn load(path: &Path, device: &Device) -> Result<Self, TrainError> {
        Ok(checkpoint::load_classifier(path, device)?)
    }
}

/// Plain supervised training: cross-entropy on augmented batches, one SGD step.
pub struct Supervised<'a> {
    /// Training data.
    pub train_set: &'a ImageSet,
    /// The run's configuration (augmentation, optimiser, seed).
    pub config: &'a TrainConfig,
}

impl StepRule for Supervised<'_> {
    fn step(
        &mut self,
        classifier: &mut Classifier,
        slots: &mut ParamSlots,
        at: &StepAt,
    ) -> Result<StepStats, TrainError> {
        let batch = self.config.batch(self.train_set, at);
        let logits = classifier.forward(batch.images, BnMode::Train);
        let correct = count_correct(logits.clone(), batch.labels.clone());
        let loss = cross_entropy(logits, batch.labels);
        let loss_value = finite_loss(
            f64::from(loss.clone().into_scalar::<f32>()),
            at.epoch,
            at.batch,
        )?;
        sgd_step(classifier, &loss.backward(), slots, self.config, at.hyper);
        Ok(StepStats {
            loss: loss_value,
            correct,
            scored: at.samples.len(),
        })
    }
}

/// How many rows of `logits` have their argmax at `labels` (no gradient).
pub fn count_correct(logits: Tensor<2>, labels: Tensor<1, Int>) -> usize {
    let correct: i64 = predictions(logits.detach())
        .equal(labels)
        .int()
        .sum()
        .into_scalar::<i64>();
    correct as usize
}

/// One SGD update of `classifier` from `grads`, with the configured optimiser at the schedule's
/// learning rate and momentum.
pub fn sgd_step(
    classifier: &mut Classifier,
    grads: &Gradients,
    slots: &mut ParamSlots,
    config: &TrainConfig,
    hyper: StepHyper,
) {
    let mut rule = Sgd {
        config: config.sgd,
        lr: hyper.lr,
        momentum: hyper.momentum.unwrap_or(config.sgd.momentum),
    };
    classifier.network = apply_update(classifier.network.clone(), grads, &mut rule, slots);
}

/// Trains `classifier` on `train_set` with plain cross-entropy ([`Supervised`] under [`run`]).
#[allow(clippy::too_many_arguments)]
pub fn train(
    classifier: &mut Classifier,
    slots: &mut ParamSlots,
    state: &mut TrainState,
    train_set: &ImageSet,
    eval_set: &ImageSet,
    run_dir: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
) -> Result<TrainOutcome, TrainError> {
    let config = state.config.clone();
    check_fits(classifier, train_set, "training")?;
    let mut rule = Supervised {
        train_set,
        config: &config,
    };
    run(
        classifier,
        slots,
        state,
        train_set.len(),
        eval_set,
        run_dir,
        device,
        progress,
        &mut rule,
    )
}

/// Runs the epochs `state` has left over a training set of `n_train` samples, one `rule` step
/// per batch, evaluating on `eval_set` after every epoch and writing the run folder `run_dir`
/// (model, metrics, `resume/`). `state` says where to start (fresh or resumed) and is advanced;
/// `slots` carries the optimiser state (empty for a fresh run). Batches follow the seeded
/// [`epoch_order`] and the schedule is stepped per batch, so a resumed run continues bit for bit.
#[allow(clippy::too_many_arguments)]
pub fn run<T: Trainee>(
    model: &mut T,
    slots: &mut ParamSlots,
    state: &mut TrainState,
    n_train: usize,
    eval_set: &T::EvalSet,
    run_dir: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
    rule: &mut impl StepRule<T>,
) -> Result<TrainOutcome, TrainError> {
    let config = state.config.clone();
    config.validate()?;
    model.check_eval(eval_set, &config)?;
    if n_train == 0 {
        return Err(TrainError::DataMismatch("training set is empty".into()));
    }
    let device = device.clone().autodiff();
    let steps_per_epoch = n_train.div_ceil(config.batch_size);
    let total_steps = steps_per_epoch * config.epochs;

    while !state.finished() {
        let started = Instant::now();
        let order = epoch_order(n_train, config.seed, state.epoch);
        progress.report(TrainEvent::EpochStarted {
            epoch: state.epoch,
            batches: steps_per_epoch,
            done: state.batch,
        });
        let mut lr = 0.0;
        for (b, chunk) in order
            .chunks(config.batch_size)
            .enumerate()
            .skip(state.batch)
        {
            let hyper = config.schedule.at(state.step, total_steps, steps_per_epoch);
            lr = hyper.lr;
            let at = StepAt {
                epoch: state.epoch,
                batch: b,
                step: state.step,
                samples: chunk,
                hyper,
                device: &device,
            };
            let stats = rule.step(model, slots, &at)?;
            let (mean_loss, accuracy) =
                state.record_batch(b, stats.scored, stats.loss, stats.correct);
            progress.report(TrainEvent::BatchFinished {
                batch: b,
                loss: mean_loss,
                accuracy,
                lr,
            });
            if state.batch < steps_per_epoch && progress.should_stop() {
                state.epoch_seconds += started.elapsed().as_secs_f64();
                rule.save(run_dir, state.step)?;
                save_resume(run_dir, model, slots, state)?;
                return Ok(TrainOutcome::Interrupted);
            }
        }
        progress.report(TrainEvent::Evaluating);
        let averaged = rule.evaluated_model(model, &device)?;
        let evaluated = averaged.as_ref().unwrap_or(model);
        let eval = evaluated.evaluate(eval_set, config.eval_batch_size, &device)?;
        let validation_loss = rule.validation_loss(evaluated, &device)?;
        let record =
            state.finish_epoch(&eval, lr, started.elapsed().as_secs_f64(), validation_loss);
        if let Some((epoch, loss)) = state.best_epoch()
            && epoch == record.epoch
        {
            // The run's settings (so the file names its data set, like model.safetensors) and
            // which epoch it is.
            let mut meta = serde_json::to_value(&state.config).unwrap_or_default();
            if let Some(map) = meta.as_object_mut() {
                map.insert("kept_epoch".into(), epoch.into());
                map.insert("validation_loss".into(), loss.into());
            }
            evaluated.save(&run_dir.join(files::BEST), Some(&meta))?;
        }
        if let Some(average) = &averaged {
            let config = serde_json::to_value(&state.config).ok();
            average.save(&run_dir.join(files::AVERAGE), config.as_ref())?;
        }
        // The rule's files first: `save_epoch` writes `state.json` last, naming the step.
        rule.save(run_dir, state.step)?;
        save_epoch(run_dir, model, slots, state)?;
        progress.report(TrainEvent::EpochFinished(&record));
        if !state.finished() && progress.should_stop() {
            return Ok(TrainOutcome::Interrupted);
        }
    }
    Ok(TrainOutcome::Finished)
}

fn check_fits(classifier: &Classifier, set: &ImageSet, what: &str) -> Result<(), TrainError> {
    let s = set.shape();
    let shape = [s.channels, s.height, s.width];
    if shape != classifier.spec.input_shape {
        return Err(TrainError::DataMismatch(format!(
            "{what} images are {}x{}x{}, the model takes {:?}",
            s.channels, s.height, s.width, classifier.spec.input_shape
        )));
    }
    if set.num_classes() > classifier.spec.num_classes() {
        return Err(TrainError::DataMismatch(format!(
            "{what} set has {} classes, the model {}",
            set.num_classes(),
            classifier.spec.num_classes()
        )));
    }
    if set.is_empty() {
        return Err(TrainError::DataMismatch(format!("{what} set is empty")));
    }
    Ok(())
}

/// A warning when an epoch looks diverged although its losses are finite (the case
/// [`TrainError::Diverged`] does not catch): a mean training loss above twice chance level
/// (`ln K`, the cross-entropy of uniform predictions over `num_classes`), or a test loss above
/// ten times it. A healthy run starts near chance level and goes down.
pub fn loss_blowup(record: &EpochRecord, num_classes: usize) -> Option<String> {
    let chance = (num_classes.max(2) as f64).ln();
    if record.train_loss > 2.0 * chance || record.test_loss > 10.0 * chance {
        Some(format!(
            "epoch {}: losses (train {:.3}, test {:.3}) are far above chance level ({chance:.3}): the run has probably diverged; try a lower --lr",
            record.epoch, record.train_loss, record.test_loss
        ))
    } else {
        None
    }
}

/// The sample order of `epoch`: a permutation seeded by `(seed, epoch)`.
pub fn epoch_order(n: usize, seed: u64, epoch: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut StdRng::seed_from_u64(mix(
        seed,
        epoch as u64,
        u64::MAX,
    )));
    order
}

/// Combines seeds into one (splitmix64 finaliser over a running hash), so nearby inputs give
/// unrelated streams.
pub fn mix(a: u64, b: u64, c: u64) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for v in [a, b, c] {
        h ^= v;
        h = h.wrapping_add(0x9E37_79B9_7F4A_7C15);
        h = (h ^ (h >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h ^= h >> 31;
    }
    h
}

/// File names inside a run folder.
pub mod files {
    /// Latest weights.
    pub const MODEL: &str = "model.safetensors";
    /// Weights of the epoch with the lowest validation loss (rules that have one).
    pub const BEST: &str = "best.safetensors";
    /// The averaged weights after the latest epoch (rules that average them).
    pub const AVERAGE: &str = "average.safetensors";
    /// One JSON line per epoch.
    pub const METRICS: &str = "metrics.jsonl";
    /// Resume folder.
    pub const RESUME_DIR: &str = "resume";
    /// Position and history (written last).
    pub const STATE: &str = "state.json";
    /// Momentum buffers.
    pub const OPTIMIZER: &str = "optimizer.safetensors";
}

pub(crate) const STEP_KEY: &str = "vigil.step";

/// The step a resume checkpoint was written at, from its `training` metadata (`{"step": n}`).
pub(crate) fn metadata_step(training: Option<&serde_json::Value>) -> Option<u64> {
    training
        .and_then(|t| t.get("step"))
        .and_then(|s| s.as_u64())
}

/// The step a resume tensor file (optimiser state, traces) was written at.
pub(crate) fn tensor_file_step(file: &TensorFile) -> Option<u64> {
    file.metadata.get(STEP_KEY).and_then(|s| s.parse().ok())
}

pub(crate) fn save_epoch<T: Trainee>(
    run_dir: &Path,
    model: &T,
    slots: &ParamSlots,
    state: &TrainState,
) -> Result<(), TrainError> {
    let config = serde_json::to_value(&state.config).ok();
    model.save(&run_dir.join(files::MODEL), config.as_ref())?;
    let mut lines = String::new();
    for record in &state.history {
        lines.push_str(&serde_json::to_string(record).unwrap_or_default());
        lines.push('\n');
    }
    write_atomic(&run_dir.join(files::METRICS), lines.as_bytes())?;
    save_resume(run_dir, model, slots, state)
}

/// The name under which slot `slot` of the parameter at `path` is saved in the optimiser
/// file: SGD's momentum under the parameter's own name (the name runs have always used), every
/// other slot as `slot/path`.
fn optimizer_entry(slot: &str, path: &str) -> String {
    if slot == MOMENTUM_SLOT {
        path.to_string()
    } else {
        format!("{slot}/{path}")
    }
}

pub(crate) fn save_resume<T: Trainee>(
    run_dir: &Path,
    model: &T,
    slots: &ParamSlots,
    state: &TrainState,
) -> Result<(), TrainError> {
    let dir = run_dir.join(files::RESUME_DIR);
    let step = serde_json::json!({ "step": state.step });
    model.save(&dir.join(files::MODEL), Some(&step))?;
    let mut optimizer = TensorFile::default();
    for slot in OPTIMIZER_SLOTS {
        for (name, values) in slots.export(model.network(), slot) {
            let n = values.len();
            optimizer
                .tensors
                .push((optimizer_entry(slot, &name), vec![n], values));
        }
    }
    optimizer
        .metadata
        .insert(STEP_KEY.into(), state.step.to_string());
    optimizer.save(&dir.join(files::OPTIMIZER))?;
    write_json_atomic(&dir.join(files::STATE), state)?;
    Ok(())
}

/// The state saved in `run_dir`, if it holds a run (`None` if it has none).
pub fn saved_state(run_dir: &Path) -> Result<Option<TrainState>, TrainError> {
    let path = run_dir.join(files::RESUME_DIR).join(files::STATE);
    if !path.exists() {
        return Ok(None);
    }
    let fail = |reason: String| TrainError::Resume {
        path: run_dir.to_path_buf(),
        reason,
    };
    let text =
        std::fs::read_to_string(&path).map_err(|e| fail(format!("{}: {e}", path.display())))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| fail(format!("{}: {e}", path.display())))
}

/// Loads the resume state of `run_dir`: model, optimiser slots and position.
pub fn load_resume<T: Trainee>(
    run_dir: &Path,
    device: &Device,
) -> Result<(T, ParamSlots, TrainState), TrainError> {
    let dir = run_dir.join(files::RESUME_DIR);
    let fail = |reason: String| TrainError::Resume {
        path: run_dir.to_path_buf(),
        reason,
    };
    let state = saved_state(run_dir)?
        .ok_or_else(|| fail(format!("no {} in {}", files::STATE, dir.display())))?;
    let model_path = dir.join(files::MODEL);
    let model_step = metadata_step(checkpoint::inspect(&model_path)?.training.as_ref());
    let model = T::load(&model_path, &device.clone().autodiff())?;
    let optimizer = TensorFile::load(&dir.join(files::OPTIMIZER))?;
    let optimizer_step = tensor_file_step(&optimizer);
    let step = state.step as u64;
    if model_step != Some(step) || optimizer_step != Some(step) {
        return Err(fail(format!(
            "files disagree (state at step {step}, model at {model_step:?}, optimizer at {optimizer_step:?}): the run stopped while checkpointing; start it again"
        )));
    }
    let mut slots = ParamSlots::new();
    // Entries of each slot of OPTIMIZER_SLOTS, in its order.
    let mut by_slot: Vec<Vec<(String, Vec<f32>)>> = vec![Vec::new(); OPTIMIZER_SLOTS.len()];
    for (name, _, values) in optimizer.tensors {
        let (slot, path) = match name.split_once('/') {
            Some((slot, path)) => match OPTIMIZER_SLOTS.iter().position(|&s| s == slot) {
                Some(i) => (i, path.to_string()),
                None => return Err(fail(format!("unknown optimizer slot in `{name}`"))),
            },
            None => (0, name),
        };
        by_slot[slot].push((path, values));
    }
    let mut rejected = Vec::new();
    for (slot, entries) in OPTIMIZER_SLOTS.into_iter().zip(by_slot) {
        rejected.extend(slots.import(model.network(), slot, entries));
    }
    if !rejected.is_empty() {
        return Err(fail(format!(
            "optimizer state does not fit the model: {}",
            rejected.join(", ")
        )));
    }
    Ok((model, slots, state))
}

/// What the tests of training runs share: a tiny configuration, a scratch folder, a tiny data set
/// on disk, a progress that stops once, and every tensor of a model for bit-exact comparisons.
#[cfg(test)]
pub(crate) mod test_util {
    use std::path::PathBuf;

    use super::{TrainConfig, TrainEvent};
    use crate::checkpoint;
    use crate::models::Classifier;
    use crate::optim::schedule::Schedule;
    use crate::progress::Progress;

    /// Constant lr 0.05, evaluation batches of 16, otherwise the small CNN recipe (default SGD,
    /// no augmentation, seed 0).
    pub(crate) fn tiny_config(epochs: usize, batch_size: usize) -> TrainConfig {
        TrainConfig {
            dataset: "t".into(),
            epochs,
            batch_size,
            eval_batch_size: 16,
            schedule: Schedule::Constant { lr: 0.05 },
            ..TrainConfig::small_cnn_default()
        }
    }

    /// An empty temporary folder `vigil-<prefix>-<name>-<pid>`.
    pub(crate) fn scratch(prefix: &str, name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("vigil-{prefix}-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Stops the run after `after` batches (counted over calls), once.
    pub(crate) struct StopAfter {
        pub(crate) after: usize,
        pub(crate) seen: usize,
    }

    impl StopAfter {
        /// Stops after `after` batches, or never.
        pub(crate) fn new(after: Option<usize>) -> Self {
            Self {
                after: after.unwrap_or(usize::MAX),
                seen: 0,
            }
        }
    }

    impl Progress<TrainEvent<'_>> for StopAfter {
        fn report(&mut self, event: TrainEvent<'_>) {
            if let TrainEvent::BatchFinished { .. } = event {
                self.seen += 1;
            }
        }
        fn should_stop(&mut self) -> bool {
            self.seen == self.after
        }
    }

    /// Writes a Fashion-MNIST-format split `<prefix>-{images-idx3,labels-idx1}-ubyte` of `n`
    /// 28x28 images of class `i % 10`: bright columns `2 * class` and `2 * class + 1` over dim
    /// noise.
    pub(crate) fn write_idx(dir: &std::path::Path, prefix: &str, n: usize) {
        let mut images = vec![0, 0, 8, 3];
        for v in [n as u32, 28, 28] {
            images.extend_from_slice(&v.to_be_bytes());
        }
        let mut labels = vec![0, 0, 8, 1];
        labels.extend_from_slice(&(n as u32).to_be_bytes());
        for i in 0..n {
            let class = i % 10;
            images.extend((0..784).map(|p| {
                if (p % 28) / 2 == class {
                    230
                } else {
                    ((p * 7 + i * 13) % 60) as u8
                }
            }));
            labels.push(class as u8);
        }
        std::fs::write(dir.join(format!("{prefix}-images-idx3-ubyte")), images).unwrap();
        std::fs::write(dir.join(format!("{prefix}-labels-idx1-ubyte")), labels).unwrap();
    }

    /// Every tensor of a model, by name.
    pub(crate) type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

    /// Every tensor of `model` (BatchNorm statistics included), sorted by name.
    pub(crate) fn model_tensors(model: &Classifier) -> Tensors {
        let mut tensors = checkpoint::classifier_tensors(model).unwrap().tensors;
        tensors.sort_by(|a, b| a.0.cmp(&b.0));
        tensors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_positive_or_non_finite_rates_and_decays_are_refused() {
        let with = |schedule: Schedule| TrainConfig {
            schedule,
            ..TrainConfig::small_cnn_default()
        };
        let refused = |config: TrainConfig, what: &str| {
            let e = config.validate().unwrap_err().to_string();
            assert!(e.contains(what), "{e} should name {what}");
        };
        assert!(TrainConfig::small_cnn_default().validate().is_ok());
        for lr in [-1.0, 0.0, f64::NAN, f64::INFINITY] {
            refused(with(Schedule::Constant { lr }), "learning rate");
            refused(with(Schedule::one_cycle(lr, 0.25)), "learning rate");
            refused(
                with(Schedule::Step {
                    lr,
                    milestones: vec![1],
                    gamma: 0.1,
                }),
                "learning rate",
            );
        }
        refused(
            with(Schedule::Step {
                lr: 0.1,
                milestones: vec![1],
                gamma: -0.1,
            }),
            "gamma",
        );
        for warmup in [-0.1, 1.5, f64::NAN] {
            refused(with(Schedule::one_cycle(0.05, warmup)), "warm-up");
        }
        for weight_decay in [-1e-4, f64::NAN, f64::INFINITY] {
            let mut config = TrainConfig::small_cnn_default();
            config.sgd.weight_decay = weight_decay;
            refused(config, "weight decay");
        }
        let mut config = TrainConfig::small_cnn_default();
        config.sgd.momentum = f64::NAN;
        refused(config, "momentum");
    }

    #[test]
    fn blown_up_losses_are_flagged() {
        let record = |train_loss, test_loss| EpochRecord {
            epoch: 1,
            train_loss,
            train_accuracy: 0.1,
            test_loss,
            test_accuracy: 0.1,
            lr: 0.05,
            seconds: 1.0,
            validation_loss: None,
        };
        // Chance level for 10 classes is ln 10 = 2.303.
        assert!(loss_blowup(&record(0.97, 0.69), 10).is_none());
        assert!(loss_blowup(&record(2.30, 2.31), 10).is_none());
        // The diverged full-width SIG run of docs/attacks.md: train 14.5, test 13161.
        assert!(loss_blowup(&record(14.51, 13161.25), 10).is_some());
        assert!(loss_blowup(&record(1.0, 30.0), 10).is_some());
    }
}
