//! Mechanistic anomaly detection by functional attribution (MAD-FA, `docs/madfa.md`).
//!
//! Sample parameters around a trained model with localized SGLD ([`sgld`]), record every
//! trusted and test sample's loss along the chain ([`chain`], [`traces`]), and score each test
//! sample by how strongly its loss co-varies with the trusted set's ([`scores`]): a sample whose
//! loss moves with no trusted sample runs on a mechanism the trusted data does not exercise.
//! [`calibrate`] chooses the sampler's settings from trusted data alone. [`task`] builds the
//! trusted / sampling / test sets, from an attack record or a user's data. [`record`] writes a
//! chain's random draws, for replaying it in another implementation. [`experiment`] runs each
//! of these as one call writing a run folder: what `vigil calibrate`, `sample` and `score` do.

pub mod calibrate;
pub mod chain;

pub mod experiment;
pub mod input_gradient;
pub mod linearised;
pub mod noise;
pub mod record;
pub mod scores;
pub mod sgld;
pub mod stability;
pub mod task;
pub mod traces;

use std::path::PathBuf;

pub use calibrate::{
    CALIBRATED_CHAINS, CALIBRATED_MIN_DRAWS, Calibration, CalibrationConfig, CandidateReport,
    calibrate,
};
pub use chain::{
    BnPolicy, ChainConfig, ChainDiagnostics, ChainEvent, ChainOutcome, DEFAULT_TRACE_LOSS,
    SampleSettings, StepDraws, TraceForm, TraceInputs, TraceLoss, check_run, run_chain, run_chains,
};
pub use experiment::{
    CalibrationRun, MadRunError, SampleOutcome, SampleReport, SampleRunConfig, SamplingPlan,
    ScoreRun, ScoreRunConfig, TraceEvaluation, evaluate_traces, read_calibration, run_calibration,
    run_sample, score_traces,
};
pub use record::StepRecorder;
pub use scores::{
    AnomalyScores, Attribution, ConstantTraces, Coupling, RECOMMENDED_SCORE, ScoreReport,
    Standardisation, TrustedScale, anomaly_scores, bottom_attributions, coupling, evaluate_scores,
    leave_one_out_scores, top_attributions,
};
pub use sgld::{LocalizedSgld, Preconditioner, SgldConfig, StepNorms};
pub use stability::{Reliability, ScoreStability, SplitKind, split_run_stability};
pub use task::{
    FolderSets, FolderTask, MadTask, RecordTask, SetAccuracy, SplitSizes, TaskSummary,
    backdoor_task, folder_task, record_task, user_task,
};
pub use traces::{LossTraces, TraceFileError};

/// Runs MAD-FA without watching it ([`crate::progress::Quiet`]).
pub use crate::progress::Quiet;

use crate::checkpoint::CheckpointError;
use crate::io::IoError;

/// Errors of MAD-FA: settings, data, chains and their files.
#[derive(Debug, thiserror::Error)]
pub enum MadError {
    /// A setting is out of range.
    #[error("invalid MAD-FA settings: {0}")]
    InvalidConfig(String),
    /// The sampler's localization term alone would diverge.
    #[error(
        "unstable sampler: lr {lr:e} with gamma {gamma:e} and a preconditioner gain of up to {max_gain} makes the localization term diverge ((lr/2) * gamma * max G >= 2); use lr below {max_lr:.1e}"
    )]
    Unstable {
        /// Step size.
        lr: f64,
        /// Localization strength.
        gamma: f64,
        /// Largest preconditioner gain (1/eps for RMSprop).
        max_gain: f64,
        /// Largest stable step size.
        max_lr: f64,
    },
    /// A chain's loss or parameters blew up.
    #[error("chain {chain} diverged at step {step}: {reason}")]
    ChainDiverged {
        /// Chain index.
        chain: usize,
        /// Step (0-based).
        step: usize,
        /// What happened and what to change.
        reason: String,
    },
    /// The data cannot be used.
    #[error("MAD-FA data: {0}")]
    Data(String),
    /// A chain checkpoint cannot be resumed.
    #[error("cannot resume the chain in {path}: {reason}")]
    Resume {
        /// Chain folder.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A model or state file could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// A results file could not be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A trace file could not be read or written.
    #[error(transparent)]
    Traces(#[from] TraceFileError),
    /// The run's traces would not fit in memory.
    #[error(transparent)]
    Memory(#[from] crate::memory::OutOfMemory),
}
