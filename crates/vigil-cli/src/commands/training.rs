//! Options shared by every command that trains a model (`train`, `attack`), and the
//! start-or-resume logic around [`vigil_core::train::train`].

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Result, bail};
use burn::tensor::Device;
use clap::{Args, ValueEnum};
use vigil_core::data::{DatasetKind, ImageSet, Normalization};
use vigil_core::models::{Architecture, Classifier, ModelSpec};
use vigil_core::optim::ParamSlots;
use vigil_core::optim::schedule::Schedule;
use vigil_core::optim::sgd::SgdConfig;
use vigil_core::train::{self, StepRule, TrainConfig, TrainOutcome, TrainState};

use crate::progress::{TrainProgress, interrupt_flag};

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

    /// Passes over the training set.
    #[arg(long, default_value_t = 10)]
    epochs: usize,

    /// Training batch size.
    #[arg(long, default_value_t = 128)]
    batch_size: usize,

    /// Peak (one-cycle) or initial (step, constant) learning rate.
    #[arg(long, default_value_t = 0.05)]
    lr: f64,

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

    /// L2 weight decay.
    #[arg(long, default_value_t = 5e-4)]
    weight_decay: f64,

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
        let schedule = match self.schedule {
            ScheduleKind::OneCycle => Schedule::one_cycle(self.lr, self.warmup),
            ScheduleKind::Step => Schedule::Step {
                lr: self.lr,
                milestones: self.milestones.clone(),
                gamma: 0.1,
            },
            ScheduleKind::Constant => Schedule::Constant { lr: self.lr },
        };
        TrainConfig {
            dataset: kind.to_string(),
            epochs: self.epochs,
            batch_size: self.batch_size,
            eval_batch_size: 512,
            schedule,
            sgd: SgdConfig {
                momentum: self.momentum,
                nesterov: !self.no_nesterov,
                weight_decay: self.weight_decay,
            },
            crop_padding: self.crop_padding,
            horizontal_flip: self.flip,
            seed: self.seed,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            robust: None,
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
}

/// The dataset and subset sizes to train on: the saved run's own when resuming, else the
/// options'.
pub fn data_selection(
    out: &Path,
    resume: bool,
    dataset: Option<DatasetKind>,
    args: &TrainingArgs,
) -> Result<(DatasetKind, Option<usize>, Option<usize>, u64)> {
    if resume && let Some(state) = train::saved_state(out)? {
        let c = state.config;
        let kind = c
            .dataset
            .parse()
            .map_err(|e| anyhow::anyhow!("the run's dataset `{}`: {e}", c.dataset))?;
        return Ok((kind, c.train_limit, c.test_limit, c.seed));
    }
    Ok((
        dataset.unwrap_or(DatasetKind::FashionMnist),
        args.train_limit,
        args.test_limit,
        args.seed,
    ))
}

/// A run ready to train: fresh, or resumed from `out`.
pub struct Run {
    /// The model.
    pub classifier: Classifier,
    /// Optimiser state.
    pub slots: ParamSlots,
    /// Position and history.
    pub state: TrainState,
}

impl Run {
    /// Announces the training on stderr; `with` names anything trained beside the model.
    pub fn announce(&self, with: &str, train_images: usize, test_images: usize) {
        eprintln!(
            "training {} ({} parameters){with} on {train_images} {} images, evaluating on {test_images}",
            self.classifier.spec.architecture.name(),
            self.classifier.num_params(),
            self.state.config.dataset,
        );
    }

    /// The run's progress display: stops on Ctrl-C, warns on a loss blow-up.
    /// (Robust objectives are not checked for a blow-up: their loss adds outlier, KL and helper
    /// terms to the cross-entropy, so chance level is no yardstick; a non-finite loss still
    /// stops them.)
    pub fn progress(&self) -> TrainProgress {
        let progress = TrainProgress::new(self.state.config.epochs, interrupt_flag());
        if self.state.config.robust.is_some() {
            progress
        } else {
            progress.warn_on_blowup(self.classifier.spec.num_classes())
        }
    }
}

/// Opens the run in `out`: resumes it with `--resume`, or when `out` holds a run of the same
/// configuration and architecture (so repeating a command continues it); refuses a different
/// one; else starts fresh with a model shaped like `shape_source`.
pub fn open_run(
    out: &Path,
    resume: bool,
    args: &TrainingArgs,
    kind: DatasetKind,
    shape_source: &ImageSet,
    device: &Device,
) -> Result<Run> {
    open_run_with(
        out,
        resume,
        args,
        args.config(kind),
        kind,
        shape_source,
        device,
    )
}

/// [`open_run`] for a run whose configuration is `requested` (the options' plus anything the
/// command adds, such as robust training settings).
pub fn open_run_with(
    out: &Path,
    resume: bool,
    args: &TrainingArgs,
    requested: TrainConfig,
    kind: DatasetKind,
    shape_source: &ImageSet,
    device: &Device,
) -> Result<Run> {
    requested.validate()?;
    let architecture = args.architecture()?;
    let state_file = out.join(train::files::RESUME_DIR).join(train::files::STATE);
    if resume || state_file.exists() {
        let (classifier, slots, state) = train::load_resume(out, device)?;
        if !resume && (state.config != requested || classifier.spec.architecture != architecture) {
            bail!(
                "{} holds a run with another configuration; pass --resume to continue it as it is, or choose another --out",
                out.display()
            );
        }
        if !state.finished() {
            eprintln!(
                "resuming {} at epoch {}, batch {} (step {})",
                out.display(),
                state.epoch + 1,
                state.batch,
                state.step
            );
        }
        return Ok(Run {
            classifier,
            slots,
            state,
        });
    }
    let shape = shape_source.shape();
    let spec = ModelSpec {
        architecture,
        input_shape: [shape.channels, shape.height, shape.width],
        class_names: shape_source.class_names().to_vec(),
        normalization: (!args.no_normalize)
            .then(|| Normalization::for_kind(kind).for_channels(shape.channels)),
    };
    let train_device = device.clone().autodiff();
    train_device.seed(requested.seed);
    Ok(Run {
        classifier: Classifier::new(spec, &train_device)?,
        slots: ParamSlots::new(),
        state: TrainState::new(requested),
    })
}

/// Trains `run` to the end (or to Ctrl-C) with plain cross-entropy, progress on stderr and a JSON
/// line per epoch on stdout. Returns the exit code to use: success, or 130 when interrupted.
pub fn drive(
    run: &mut Run,
    train_set: &ImageSet,
    test_set: &ImageSet,
    out: &Path,
    device: &Device,
) -> Result<ExitCode> {
    let config = run.state.config.clone();
    let mut rule = train::Supervised {
        train_set,
        config: &config,
    };
    drive_with(run, &mut rule, train_set.len(), test_set, out, device)
}

/// [`drive`] with any step rule over a training set of `n_train` images.
pub fn drive_with(
    run: &mut Run,
    rule: &mut impl StepRule,
    n_train: usize,
    test_set: &ImageSet,
    out: &Path,
    device: &Device,
) -> Result<ExitCode> {
    if run.state.finished() {
        let last = run.state.history.last();
        eprintln!(
            "{}: all {} epochs are done (test accuracy {:.4}); nothing to train",
            out.display(),
            run.state.config.epochs,
            last.map_or(0.0, |r| r.test_accuracy)
        );
        return Ok(ExitCode::SUCCESS);
    }
    let with = match &run.state.config.robust {
        Some(r) => format!(" with the {} objective", r.halo.objective.name()),
        None => String::new(),
    };
    run.announce(&with, n_train, test_set.len());
    let mut progress = run.progress();
    let outcome = train::run(
        &mut run.classifier,
        &mut run.slots,
        &mut run.state,
        n_train,
        test_set,
        out,
        device,
        &mut progress,
        rule,
    )?;
    match outcome {
        TrainOutcome::Finished => {
            let seconds: f64 = run.state.history.iter().map(|r| r.seconds).sum();
            eprintln!(
                "done: test accuracy {:.4} after {} epochs, {:.0}s of training; model in {}",
                run.state.history.last().map_or(0.0, |r| r.test_accuracy),
                run.state.history.len(),
                seconds,
                out.join(train::files::MODEL).display()
            );
            if let Some((epoch, loss)) = run.state.best_epoch() {
                eprintln!(
                    "lowest validation loss {loss:.4} at epoch {epoch}: its weights are in {}",
                    out.join(train::files::BEST).display()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        TrainOutcome::Interrupted => {
            eprintln!(
                "stopped at epoch {}, batch {}; run the same command again (or add --resume) to continue",
                run.state.epoch + 1,
                run.state.batch,
            );
            Ok(ExitCode::from(130))
        }
    }
}
