//! Whole experiments a benchmark command runs on a user's models and data, resumable and
//! reported as JSON, CSV, Markdown and SVG: backdoor detection over attack records
//! ([`backdoor`]) and OOD detection under attack ([`ood`]), their finished stages kept in one
//! store ([`parts`]).

pub mod backdoor;
pub mod ood;
pub mod parts;

use std::path::PathBuf;

use crate::attack::pgd::PgdError;
use crate::data::DataError;
use crate::io::IoError;
use crate::ood::OodError;

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchmarkError {
    /// An OOD score could not be fitted or evaluated.
    #[error(transparent)]
    Ood(#[from] OodError),
    /// The attack's settings are invalid.
    #[error(transparent)]
    Pgd(#[from] PgdError),
    /// A chart could not be drawn.
    #[error(transparent)]
    Chart(#[from] crate::report::bars::ChartError),
    /// Results could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// Data could not be prepared.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The settings or inputs cannot make a benchmark.
    #[error("{0}")]
    Invalid(String),
    /// A detector (MAD-FA beside the OOD scores) could not be fitted or applied.
    #[error(transparent)]
    Detect(#[from] crate::detect::DetectError),
    /// MAD-FA's linearised score failed.
    #[error(transparent)]
    Madfa(#[from] crate::madfa::MadError),
    /// The output folder belongs to another run.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Results saved earlier in the output folder belong to another run.
    #[error(
        "{} holds results of other settings, data or models ({what}): choose another output folder or delete it",
        .dir.display()
    )]
    Mismatch {
        /// The output folder.
        dir: PathBuf,
        /// What differs.
        what: String,
    },
    /// A saved part could not be read back.
    #[error("cannot read {}: {reason}", .path.display())]
    Part {
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The caller's [`Progress`](crate::progress::Progress) asked to stop between stages; the
    /// stages that finished are saved, and a new run with the same output folder continues.
    #[error("stopped before every stage ran")]
    Stopped,
}
