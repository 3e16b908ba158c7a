//! `vigil train`: train a classifier, evaluating and checkpointing after every epoch.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use vigil_core::attack::pgd::frozen;
use vigil_core::checkpoint;
use vigil_core::data::glyphs::{GlyphStyle, LetterSet, SYSTEM_FONT_DIR};
use vigil_core::data::{ImageSet, Split};
use vigil_core::device::default_device;
use vigil_core::halo::{HaloConfig, Objective, ReferenceRules, RobustSettings, RobustStep};
use vigil_core::models::Classifier;

use super::training::{TrainingArgs, data_selection, drive, drive_with, open_run_with};
use super::{DataArgs, limit, parse_fraction};

/// Train a classifier with SGD and write a run folder.
///
/// The folder gets model.safetensors (PyTorch-layout weights with vigil metadata, rewritten
/// after every epoch), metrics.jsonl (one JSON line per epoch, also printed on stdout) and
/// resume/ (what --resume needs). Ctrl-C, or SIGTERM (what Slurm sends before killing a job),
/// finishes the current batch, checkpoints and exits; `vigil train --resume --out DIR`
/// continues exactly where it stopped.
///
/// Defaults train the small CNN (conv32-conv64-fc128) on Fashion-MNIST: SGD with Nesterov
/// momentum 0.9, weight decay 5e-4, batch 128, one-cycle cosine schedule peaking at 0.05.
///
/// With --objective, the run trains one rung of the robust OOD ladder (SPEC.md section 2): std,
/// oe (outlier exposure), trades, trades-oe or halo. Outliers are upper-case letters drawn from
/// the DejaVu and Liberation fonts; a held-out part of the training set, attacked with PGD,
/// picks the epoch whose weights are kept in best.safetensors. HALO also needs --helper, a
/// model trained with --objective std.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder to write (created if missing).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint with its own configuration (other
    /// options are ignored). Without --resume, running the same command again on the same
    /// folder also continues it; a different configuration is refused.
    #[arg(long)]
    resume: bool,

    #[command(flatten)]
    training: TrainingArgs,

    #[command(flatten)]
    robust: RobustArgs,
}

impl TrainArgs {
    /// The arguments of `vigil train ARGS`, for commands that train through it (a benchmark
    /// training the ladder's missing rungs).
    pub fn parse_from(args: &[String]) -> Result<Self> {
        use clap::Parser;
        #[derive(Parser)]
        #[command(name = "vigil train")]
        struct Wrapper {
            #[command(flatten)]
            args: TrainArgs,
        }
        let all = std::iter::once("vigil train".to_string()).chain(args.iter().cloned());
        Ok(Wrapper::try_parse_from(all)
            .map_err(|e| anyhow::anyhow!("{}", e.render()))?
            .args)
    }
}

/// Robust OOD training: the objective and its settings.
#[derive(Args, Debug)]
struct RobustArgs {
    /// Robust OOD objective (without it: plain cross-entropy, no validation split).
    #[arg(long, value_enum)]
    objective: Option<ObjectiveArg>,

    /// HALO's helper: model.safetensors of a run trained with --objective std.
    #[arg(long, value_name = "FILE")]
    helper: Option<PathBuf>,

    /// Weight of the TRADES KL term.
    #[arg(long, default_value_t = 3.0)]
    beta: f64,

    /// Weight of HALO's helper term.
    #[arg(long, default_value_t = 0.5)]
    gamma: f64,

    /// Weight of the outlier terms.
    #[arg(long, default_value_t = 2.0)]
    eta: f64,

    /// L-infinity radius of the training attack, as a fraction (0.0314) or in 255ths (8/255).
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f64,

    /// PGD steps of the training attack (step size 2.5 eps / steps).
    #[arg(long, default_value_t = 10)]
    pgd_steps: usize,

    /// Reproduce the reference code's behaviours instead of vigil's fixes: unclipped PGD start
    /// and batch-best iterate, attack and helper in train mode, unclipped helper input.
    #[arg(long)]
    reference_rules: bool,

    /// Keep an exponential moving average of the weights (decay min(0.995, (1+n)/(10+n)) after
    /// a 2.5% warm-up, as the reference's train_wa.py) and evaluate, validate and keep it; the
    /// reference pairs it with --beta 2.5.
    #[arg(long)]
    weight_average: bool,

    /// Outlier images drawn per (font, letter).
    #[arg(long, default_value_t = 10, value_name = "N")]
    outlier_variants: usize,

    /// Training images held out for validation (default: a tenth of the training set).
    #[arg(long, value_name = "N")]
    validation_size: Option<usize>,

    /// Folder of font files for the outliers.
    #[arg(long, value_name = "DIR", default_value = SYSTEM_FONT_DIR)]
    font_dir: PathBuf,
}

/// The objectives of the ladder, by their command-line names.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ObjectiveArg {
    Std,
    Oe,
    Trades,
    TradesOe,
    Halo,
}

impl From<ObjectiveArg> for Objective {
    fn from(o: ObjectiveArg) -> Self {
        match o {
            ObjectiveArg::Std => Objective::Std,
            ObjectiveArg::Oe => Objective::Oe,
            ObjectiveArg::Trades => Objective::Trades,
            ObjectiveArg::TradesOe => Objective::TradesOe,
            ObjectiveArg::Halo => Objective::Halo,
        }
    }
}

impl RobustArgs {
    /// The run's robust settings, or `None` for plain training.
    fn settings(&self, seed: u64, train_len: usize) -> Result<Option<RobustSettings>> {
        let Some(objective) = self.objective.map(Objective::from) else {
            return Ok(None);
        };
        let mut halo = HaloConfig::reference_defaults(objective);
        halo.beta = self.beta;
        halo.gamma = self.gamma;
        halo.eta = self.eta;
        halo.eps = self.eps;
        halo.steps = self.pgd_steps;
        halo.seed = seed;
        if self.reference_rules {
            halo.reference = ReferenceRules::all();
        }
        halo.weight_average = self.weight_average;
        halo.validate()?;
        if objective.uses_helper() && self.helper.is_none() {
            bail!("--objective halo needs --helper, a model trained with --objective std");
        }
        let validation_size = self.validation_size.unwrap_or(train_len / 10);
        if validation_size >= train_len {
            bail!("--validation-size {validation_size} leaves no training images (of {train_len})");
        }
        Ok(Some(RobustSettings {
            halo,
            outliers: objective
                .uses_outliers()
                .then(|| LetterSet::TrainingOutliers.name().to_string()),
            outlier_variants: self.outlier_variants,
            helper: objective
                .uses_helper()
                .then(|| self.helper.as_ref().map(|p| p.display().to_string()))
                .flatten(),
            validation_size,
        }))
    }
}

/// The helper at `path`, frozen on the training device, checked against the model it helps.
fn load_helper(
    path: &Path,
    model: &Classifier,
    device: &burn::tensor::Device,
) -> Result<Classifier> {
    let device = device.clone().autodiff();
    let helper = checkpoint::load_classifier(path, &device)
        .with_context(|| format!("loading the helper {}", path.display()))?;
    if helper.spec.input_shape != model.spec.input_shape
        || helper.spec.num_classes() != model.spec.num_classes()
    {
        bail!(
            "the helper {} takes {:?} images and {} classes; the model {:?} and {}",
            path.display(),
            helper.spec.input_shape,
            helper.spec.num_classes(),
            model.spec.input_shape,
            model.spec.num_classes()
        );
    }
    Ok(frozen(&helper, &device))
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let device = default_device();
    // Reject bad options, an --out that cannot be written and outputs that would replace the
    // helper before spending time on data.
    args.training.architecture()?;
    vigil_core::io::check_writable_dir(&args.out)?;
    vigil_core::io::check_outputs(
        &args.robust.helper,
        run_files().map(|name| args.out.join(name)),
    )?;
    let (kind, train_limit, test_limit, seed) =
        data_selection(&args.out, args.resume, args.data.dataset, &args.training)?;
    args.training.config(kind).validate()?;
    let train_set = limit(args.data.load(kind, Split::Train)?, train_limit, seed)?;
    let test_set = limit(args.data.load(kind, Split::Test)?, test_limit, seed)?;
    let mut requested = args.training.config(kind);
    requested.robust = args.robust.settings(seed, train_set.len())?;
    let mut run = open_run_with(
        &args.out,
        args.resume,
        &args.training,
        requested,
        kind,
        &train_set,
        &device,
    )?;
    let Some(settings) = run.state.config.robust.clone() else {
        return drive(&mut run, &train_set, &test_set, &args.out, &device);
    };
    // The run's own settings (a resumed run keeps its split, outliers and helper).
    let config = run.state.config.clone();
    let (held_out, kept) = train_set.random_split(settings.validation_size, config.seed)?;
    let validation = train_set.subset(&held_out);
    let train_part = train_set.subset(&kept);
    let outliers = match &settings.outliers {
        Some(_) => Some(outlier_set(
            &args.robust.font_dir,
            &settings,
            &train_part,
            config.seed,
        )?),
        None => None,
    };
    let helper = match &settings.helper {
        Some(path) => Some(load_helper(Path::new(path), &run.classifier, &device)?),
        None => None,
    };
    let mut rule = RobustStep::new(
        &train_part,
        outliers.as_ref(),
        helper,
        (!validation.is_empty()).then_some(&validation),
        &config,
        settings.halo,
        run.state.step,
    )?;
    rule.resume_weight_average(&args.out, run.state.step)?;
    drive_with(
        &mut run,
        &mut rule,
        train_part.len(),
        &test_set,
        &args.out,
        &device,
    )
}

/// The files a training run writes in its folder (relative to it).
pub fn run_files() -> impl Iterator<Item = PathBuf> {
    use vigil_core::train::files;
    [files::MODEL, files::BEST, files::AVERAGE, files::METRICS]
        .into_iter()
        .map(PathBuf::from)
        .chain(
            [files::STATE, files::MODEL, files::OPTIMIZER]
                .into_iter()
                .map(|name| Path::new(files::RESUME_DIR).join(name)),
        )
}

/// The letters drawn as outliers, checked to fit the training images.
fn outlier_set(
    font_dir: &Path,
    settings: &RobustSettings,
    train: &ImageSet,
    seed: u64,
) -> Result<ImageSet> {
    let shape = train.shape();
    let style = GlyphStyle {
        side: shape.height,
        ..GlyphStyle::mnist_like(settings.outlier_variants, seed)
    };
    if shape.channels != 1 || shape.height != shape.width {
        bail!(
            "letter outliers are square grayscale images; the training images are {}x{}x{}",
            shape.channels,
            shape.height,
            shape.width
        );
    }
    let set = LetterSet::TrainingOutliers.render(font_dir, &style)?;
    eprintln!(
        "outliers: {} letter images from the fonts in {}",
        set.len(),
        font_dir.display()
    );
    Ok(set)
}
