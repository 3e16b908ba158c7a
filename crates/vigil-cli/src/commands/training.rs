//! Options shared by every command that trains a model (`train`, `attack`), and how a training
//! session ([`vigil_core::train::session`]) is shown: messages and progress on stderr, one JSON
//! line per epoch on stdout.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, ValueEnum};
use vigil_core::data::DatasetKind;
use vigil_core::models::Architecture;
use vigil_core::optim::adam::AdamConfig;
use vigil_core::optim::schedule::Schedule;
use vigil_core::optim::sgd::SgdConfig;
use vigil_core::progress::Progress;
use vigil_core::train::text::TextSettings;
use vigil_core::train::{
    self, Run, RunRequest, SessionOutcome, TrainConfig, TrainEvent, TrainState,
};

use crate::progress::{Interruptible, TrainProgress};

/// Model and optimisation options.
#[derive(Args, Debug, Clone)]
pub struct TrainingArgs {
    /// Architecture: small-cnn, resnet18, preact-resnet18 (BackdoorBench) or
    /// preact-resnet18-halo (HALO).
    #[arg(long, default_value = "small-cnn", value_name = "NAME")]
    arch: String,

    /// Channel width (small CNN: first conv, default 32; ResNets: stem, default 64).
    #[arg(long, value_name = "N")]
    width: Option<usize>,

    /// Passes over the training set [default: 10; with --text 4].
    #[arg(long)]
    epochs: Option<usize>,

    /// Training batch size [default: 128; with --text 32].
    #[arg(long)]
    batch_size: Option<usize>,

    /// Peak (one-cycle) or initial (step, constant) learning rate [default: 0.05; with --text
    /// 0.002].
    #[arg(long)]
    lr: Option<f64>,

    /// Learning-rate schedule.
    #[arg(long, value_enum, default_value_t = ScheduleKind::OneCycle)]
    schedule: ScheduleKind,

    /// Fraction of steps warming up (one-cycle).
    #[arg(long, default_value_t = 0.25)]
    warmup: f64,

    /// Epochs at which the step schedule multiplies the rate by 0.1 (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "50,75")]
    milestones: Vec<usize>,

    /// SGD momentum (one-cycle cycles it between 0.85 and 0.95 instead).
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,

    /// Plain momentum instead of Nesterov.
    #[arg(long)]
    no_nesterov: bool,

    /// Weight decay: SGD's L2 term [default: 5e-4]; with --text, AdamW's decoupled decay
    /// [default: 0.01].
    #[arg(long)]
    weight_decay: Option<f64>,

    /// Random-crop zero padding (0 = none).
    #[arg(long, default_value_t = 0)]
    crop_padding: usize,

    /// Random horizontal flips (for natural images, not digits or clothes).
    #[arg(long)]
    flip: bool,

    /// Feed raw [0,1] pixels instead of normalising with the dataset's mean and std.
    #[arg(long)]
    no_normalize: bool,

    /// Seed for initialisation, shuffling and augmentation.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Train on this many samples only (a seeded random subset).
    #[arg(long, value_name = "N")]
    train_limit: Option<usize>,

    /// Evaluate on this many test samples only (a seeded random subset).
    #[arg(long, value_name = "N")]
    test_limit: Option<usize>,
}

/// Learning-rate schedules.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ScheduleKind {
    /// PyTorch OneCycleLR, cosine, momentum cycled 0.85-0.95.
    OneCycle,
    /// Multiply by 0.1 at each --milestones epoch.
    Step,
    /// The same rate throughout.
    Constant,
}

impl TrainingArgs {
    /// The training configuration these options describe.
    pub fn config(&self, kind: DatasetKind) -> TrainConfig {
        TrainConfig {
            dataset: kind.to_string(),
            epochs: self.epochs.unwrap_or(10),
            batch_size: self.batch_size.unwrap_or(128),
            eval_batch_size: 512,
            schedule: self.schedule(0.05),
            sgd: SgdConfig {
                momentum: self.momentum,
                nesterov: !self.no_nesterov,
                weight_decay: self.weight_decay.unwrap_or(5e-4),
            },
            crop_padding: self.crop_padding,
            horizontal_flip: self.flip,
            seed: self.seed,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            robust: None,
            adamw: None,
            text: None,
        }
    }

    /// The schedule these options name, at `default_lr` unless --lr is given.
    fn schedule(&self, default_lr: f64) -> Schedule {
        let lr = self.lr.unwrap_or(default_lr);
        match self.schedule {
            ScheduleKind::OneCycle => Schedule::one_cycle(lr, self.warmup),
            ScheduleKind::Step => Schedule::Step {
                lr,
                milestones: self.milestones.clone(),
                gamma: 0.1,
            },
            ScheduleKind::Constant => Schedule::Constant { lr },
        }
    }

    /// The configuration of a language model's run on `dataset` with `text` settings: AdamW
    /// and the text defaults for what is not given.
    pub fn text_config(&self, dataset: &str, text: TextSettings) -> TrainConfig {
        TrainConfig {
            dataset: dataset.to_string(),
            epochs: self.epochs.unwrap_or(4),
            batch_size: self.batch_size.unwrap_or(32),
            eval_batch_size: 64,
            schedule: self.schedule(2e-3),
            adamw: Some(AdamConfig {
                weight_decay: self.weight_decay.unwrap_or(0.01),
                ..AdamConfig::default()
            }),
            seed: self.seed,
            train_limit: self.train_limit,
            test_limit: None,
            text: Some(text),
            ..TrainConfig::small_cnn_default()
        }
    }

    /// The architecture these options name.
    pub fn architecture(&self) -> Result<Architecture> {
        let mut architecture = Architecture::by_name(&self.arch)?;
        if let Some(width) = self.width {
            architecture = architecture.with_width(width);
        }
        Ok(architecture)
    }

    /// The run these options ask for on `kind` (rejects an unknown architecture).
    pub fn request(&self, kind: DatasetKind) -> Result<RunRequest> {
        Ok(RunRequest {
            config: self.config(kind),
            architecture: self.architecture()?,
            normalize: !self.no_normalize,
        })
    }
}

/// Shows a training session: its milestones on stderr, its progress through [`TrainProgress`]
/// (drawn once the run is open, when its length is known; from then on Ctrl-C stops it).
#[derive(Default)]
pub struct SessionPrinter {
    progress: Option<Interruptible<TrainProgress>>,
    /// Whether a stop was already announced (Input-Aware's own loop announces none).
    pub stop_reported: bool,
}

impl SessionPrinter {
    /// The exit code of a session that ended with `outcome`: success, or 130 when interrupted.
    pub fn exit_code(outcome: SessionOutcome) -> ExitCode {
        match outcome {
            SessionOutcome::Interrupted => ExitCode::from(130),
            SessionOutcome::AlreadyFinished | SessionOutcome::Finished => ExitCode::SUCCESS,
        }
    }
}

impl Progress<TrainEvent<'_>> for SessionPrinter {
    fn report(&mut self, event: TrainEvent<'_>) {
        match event {
            TrainEvent::RunOpened { out, run } => self.run_opened(out, run),
            TrainEvent::TrainingStarts {
                run,
                beside,
                train_images,
                test_images,
            } => print_training_starts(run, beside, train_images, test_images),
            TrainEvent::TrainingEnded {
                out,
                outcome,
                state,
            } => self.training_ended(out, outcome, state),
            TrainEvent::OutliersDrawn { images, font_dir } => eprintln!(
                "outliers: {images} letter images from the fonts in {}",
                font_dir.display()
            ),
            TrainEvent::EpochStarted { .. }
            | TrainEvent::BatchFinished { .. }
            | TrainEvent::Evaluating
            | TrainEvent::EpochFinished(_) => {
                if let Some(p) = &mut self.progress {
                    p.report(event);
                }
            }
        }
    }

    fn should_stop(&mut self) -> bool {
        self.progress.as_mut().is_some_and(|p| p.should_stop())
    }
}

impl SessionPrinter {
    /// Announces a resumed run, and prepares the progress display: it stops on Ctrl-C and warns
    /// on a loss blow-up. (Robust objectives are not checked for a blow-up: their loss adds
    /// outlier, KL and helper terms to the cross-entropy, so chance level is no yardstick; a
    /// non-finite loss still stops them.)
    fn run_opened(&mut self, out: &Path, run: &Run) {
        let state = &run.state;
        announce_resume(out, state, run.resumed);
        let progress = TrainProgress::new(state.config.epochs);
        self.progress = Some(Interruptible::new(if state.config.robust.is_some() {
            progress
        } else {
            progress.warn_on_blowup(run.classifier.spec.num_classes())
        }));
    }

    /// A printer for a language model's run opened (`resumed`) at `state` in `out`.
    pub fn for_text(state: &TrainState, resumed: bool, out: &Path) -> Self {
        announce_resume(out, state, resumed);
        Self {
            progress: Some(Interruptible::new(TrainProgress::new(state.config.epochs))),
            stop_reported: false,
        }
    }

    /// Says how a session ended with `outcome` in `out`, at `state`.
    pub fn training_ended(&mut self, out: &Path, outcome: SessionOutcome, state: &TrainState) {
        let last_accuracy = state.history.last().map_or(0.0, |r| r.test_accuracy);
        match outcome {
            SessionOutcome::AlreadyFinished => eprintln!(
                "{}: all {} epochs are done (test accuracy {last_accuracy:.4}); nothing to train",
                out.display(),
                state.config.epochs,
            ),
            SessionOutcome::Finished => {
                let seconds: f64 = state.history.iter().map(|r| r.seconds).sum();
                eprintln!(
                    "done: test accuracy {last_accuracy:.4} after {} epochs, {seconds:.0}s of training; model in {}",
                    state.history.len(),
                    out.join(train::files::MODEL).display()
                );
                if let Some((epoch, loss)) = state.best_epoch() {
                    eprintln!(
                        "lowest validation loss {loss:.4} at epoch {epoch}: its weights are in {}",
                        out.join(train::files::BEST).display()
                    );
                }
            }
            SessionOutcome::Interrupted => {
                self.stop_reported = true;
                eprintln!(
                    "stopped at epoch {}, batch {}; run the same command again (or add --resume) to continue",
                    state.epoch + 1,
                    state.batch,
                );
            }
        }
    }
}

/// Says where a reopened run with epochs left resumes.
fn announce_resume(out: &Path, state: &TrainState, resumed: bool) {
    if resumed && !state.finished() {
        eprintln!(
            "resuming {} at epoch {}, batch {} (step {})",
            out.display(),
            state.epoch + 1,
            state.batch,
            state.step
        );
    }
}

/// Announces training on `train_images` images (with `beside`, what trains with the model),
/// evaluated on `test_images`.
fn print_training_starts(run: &Run, beside: Option<&str>, train_images: usize, test_images: usize) {
    let with = beside.map(|b| format!(" with {b}")).unwrap_or_default();
    eprintln!(
        "training {} ({} parameters){with} on {train_images} {} images, evaluating on {test_images}",
        run.classifier.spec.architecture.name(),
        run.classifier.num_params(),
        run.state.config.dataset,
    );
}
