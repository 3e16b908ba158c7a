//! `vigil train`: train a classifier, evaluating and checkpointing after every epoch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use vigil_core::data::{DatasetKind, Normalization, Split};
use vigil_core::device::default_device;
use vigil_core::models::{Architecture, Classifier, ModelSpec};
use vigil_core::optim::ParamSlots;
use vigil_core::optim::schedule::Schedule;
use vigil_core::optim::sgd::SgdConfig;
use vigil_core::train::{self, TrainConfig, TrainOutcome, TrainState};

use super::{DataArgs, limit};
use crate::progress::{TrainProgress, interrupt_flag};

/// Train a classifier with SGD and write a run folder.
///
/// The folder gets model.safetensors (PyTorch-layout weights with vigil metadata, rewritten
/// after every epoch), metrics.jsonl (one JSON line per epoch, also printed on stdout) and
/// resume/ (what --resume needs). Ctrl-C finishes the current batch, checkpoints and exits;
/// `vigil train --resume --out DIR` continues exactly where it stopped.
///
/// Defaults train the small CNN (conv32-conv64-fc128) on Fashion-MNIST: SGD with Nesterov
/// momentum 0.9, weight decay 5e-4, batch 128, one-cycle cosine schedule peaking at 0.05.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder to write (created if missing).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint (all other options are ignored:
    /// the run's own configuration is used).
    #[arg(long)]
    resume: bool,

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

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let device = default_device();
    let state_file = args
        .out
        .join(train::files::RESUME_DIR)
        .join(train::files::STATE);
    let (mut classifier, mut slots, mut state) = if args.resume {
        let (classifier, slots, state) = train::load_resume(&args.out, &device)?;
        eprintln!(
            "resuming {} at epoch {}, batch {} (step {})",
            args.out.display(),
            state.epoch + 1,
            state.batch,
            state.step
        );
        (classifier, slots, state)
    } else {
        if state_file.exists() {
            bail!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                args.out.display()
            );
        }
        let kind = args.data.dataset.unwrap_or(DatasetKind::FashionMnist);
        let config = config_from_args(&args, kind);
        config.validate()?;
        let mut architecture = Architecture::by_name(&args.arch)?;
        if let Some(width) = args.width {
            architecture = architecture.with_width(width);
        }
        let train_set = args.data.load(kind, Split::Train)?;
        let shape = train_set.shape();
        let spec = ModelSpec {
            architecture,
            input_shape: [shape.channels, shape.height, shape.width],
            class_names: train_set.class_names().to_vec(),
            normalization: (!args.no_normalize)
                .then(|| Normalization::for_kind(kind).for_channels(shape.channels)),
        };
        let train_device = device.clone().autodiff();
        train_device.seed(config.seed);
        let classifier = Classifier::new(spec, &train_device)?;
        (classifier, ParamSlots::new(), TrainState::new(config))
    };
    if state.finished() {
        eprintln!(
            "{}: all {} epochs are done",
            args.out.display(),
            state.config.epochs
        );
        return Ok(ExitCode::SUCCESS);
    }
    let kind: DatasetKind = state
        .config
        .dataset
        .parse()
        .with_context(|| format!("the run's dataset `{}`", state.config.dataset))?;
    let seed = state.config.seed;
    let train_set = limit(args.data.load(kind, Split::Train)?, args.train_limit, seed)?;
    let test_set = limit(args.data.load(kind, Split::Test)?, args.test_limit, seed)?;
    eprintln!(
        "training {} ({} parameters) on {} {} images, evaluating on {}",
        classifier.spec.architecture.name(),
        classifier.num_params(),
        train_set.len(),
        kind,
        test_set.len()
    );
    let mut progress = TrainProgress::new(state.config.epochs, interrupt_flag());
    let outcome = train::train(
        &mut classifier,
        &mut slots,
        &mut state,
        &train_set,
        &test_set,
        &args.out,
        &device,
        &mut progress,
    )?;
    match outcome {
        TrainOutcome::Finished => {
            let last = state.history.last();
            let seconds: f64 = state.history.iter().map(|r| r.seconds).sum();
            eprintln!(
                "done: test accuracy {:.4} after {} epochs, {:.0}s of training; model in {}",
                last.map_or(0.0, |r| r.test_accuracy),
                state.history.len(),
                seconds,
                args.out.join(train::files::MODEL).display()
            );
            Ok(ExitCode::SUCCESS)
        }
        TrainOutcome::Interrupted => {
            eprintln!(
                "stopped at epoch {}, batch {}; continue with: vigil train --resume --out {}",
                state.epoch + 1,
                state.batch,
                args.out.display()
            );
            Ok(ExitCode::from(130))
        }
    }
}

fn config_from_args(args: &TrainArgs, kind: DatasetKind) -> TrainConfig {
    let schedule = match args.schedule {
        ScheduleKind::OneCycle => Schedule::one_cycle(args.lr, args.warmup),
        ScheduleKind::Step => Schedule::Step {
            lr: args.lr,
            milestones: args.milestones.clone(),
            gamma: 0.1,
        },
        ScheduleKind::Constant => Schedule::Constant { lr: args.lr },
    };
    TrainConfig {
        dataset: kind.to_string(),
        epochs: args.epochs,
        batch_size: args.batch_size,
        eval_batch_size: 512,
        schedule,
        sgd: SgdConfig {
            momentum: args.momentum,
            nesterov: !args.no_nesterov,
            weight_decay: args.weight_decay,
        },
        crop_padding: args.crop_padding,
        horizontal_flip: args.flip,
        seed: args.seed,
    }
}
