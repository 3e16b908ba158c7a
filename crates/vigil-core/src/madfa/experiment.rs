//! MAD-FA's experiments as one call each, writing their run folder: [`run_calibration`]
//! (`vigil calibrate`), [`run_sample`] (`vigil sample`: optional calibration, the chains, their
//! traces and diagnostics) and [`score_traces`] (`vigil score`: a trace file to per-sample
//! scores and attributions). The folder's file names are in [`files`].
//!
//! Each call takes a model and a [`MadTask`] already loaded (from an attack record or image
//! folders, [`super::task`]), refuses bad settings and folders before any work, and returns what
//! it measured; callers print it. Sampling and calibration resume: a folder claimed by the same
//! model, data and settings ([`crate::identity`]) has its finished work reused.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use burn::tensor::Device;

use super::{
    CALIBRATED_CHAINS, Calibration, CalibrationConfig, ChainConfig, ChainDiagnostics, ChainEvent,
    ConstantTraces, LossTraces, MadError, MadTask, ScoreReport, ScoreStability, StepRecorder,
    TraceFileError, anomaly_scores, calibrate, check_run, coupling, evaluate_scores, run_chains,
    split_run_stability, top_attributions,
};
use crate::identity::{self, FolderState, IdentityError, RunIdentity};
use crate::io::{IoError, check_outputs, write_atomic, write_json_atomic};
use crate::models::Classifier;
use crate::progress::Progress;
use crate::report::csv_field;

/// The names of the files a MAD-FA run leaves in its folder.
pub mod files {
    /// The data description (`vigil sample`'s record or folders, split, summary).
    pub const TASK_JSON: &str = "task.json";
    /// The samples themselves, for other implementations.
    pub const TASK_NPZ: &str = "task.npz";
    /// The calibration ([`super::Calibration`]).
    pub const CALIBRATION: &str = "calibration.json";
    /// Chain checkpoints, one folder per chain.
    pub const RESUME: &str = "resume";

    /// The trace file of a run of every chain (`suffix` empty) or of one (`-chain-K`).
    pub fn traces(suffix: &str) -> String {
        format!("traces{suffix}.npz")
    }

    /// The chains' diagnostics, named like [`traces`].
    pub fn diagnostics(suffix: &str) -> String {
        format!("diagnostics{suffix}.json")
    }
}

/// What `vigil sample` leaves in its folder that a later run could reuse or overwrite.
const SAMPLE_STATE: &[&str] = &[
    files::RESUME,
    files::CALIBRATION,
    files::TASK_JSON,
    files::TASK_NPZ,
    "traces.npz",
    "diagnostics.json",
];

/// Errors of a MAD-FA experiment.
#[derive(Debug, thiserror::Error)]
pub enum MadRunError {
    /// Settings, data, chains or their files.
    #[error(transparent)]
    Mad(#[from] MadError),
    /// The folder holds another run's state.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// An output would replace an input, or cannot be written.
    #[error(transparent)]
    Io(#[from] IoError),
    /// A trace file cannot be read or written.
    #[error(transparent)]
    Traces(#[from] TraceFileError),
    /// A calibration file cannot be read.
    #[error("reading {}", .path.display())]
    ReadCalibration {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file is not a calibration.
    #[error("{} is not a calibration file", .path.display())]
    NotCalibration {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
    /// The settings cannot be recorded in the folder's identity.
    #[error("recording the run's settings: {0}")]
    Settings(serde_json::Error),
    /// Dropping the burn-in leaves no draw.
    #[error("--burn-in {burn_in} leaves no draws: {} has {draws} per chain", .path.display())]
    NoDrawsLeft {
        /// Draws dropped.
        burn_in: usize,
        /// The trace file.
        path: PathBuf,
        /// Draws per chain in it.
        draws: usize,
    },
    /// Thinning by zero.
    #[error("--every must be at least 1")]
    ZeroThinning,
    /// Too few draws remain to correlate.
    #[error("the selected draws leave {0} per chain; need at least 2")]
    TooFewDraws(usize),
    /// The traces cannot be scored.
    #[error("scoring {}", .path.display())]
    Scoring {
        /// The trace file.
        path: PathBuf,
        /// Why.
        #[source]
        source: MadError,
    },
}

/// Reads a calibration file written by [`run_calibration`] or [`run_sample`].
pub fn read_calibration(path: &Path) -> Result<Calibration, MadRunError> {
    let text = std::fs::read_to_string(path).map_err(|source| MadRunError::ReadCalibration {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| MadRunError::NotCalibration {
        path: path.to_path_buf(),
        source,
    })
}

/// A finished calibration, and whether an earlier run's was reused.
#[derive(Debug, Clone, PartialEq)]
pub struct CalibrationRun {
    /// The calibration.
    pub calibration: Calibration,
    /// Where it is written.
    pub path: PathBuf,
    /// The folder already held a calibration of the same model, data and settings: nothing ran.
    pub reused: bool,
}

/// Calibrates the sampler for `model` on `task` ([`calibrate()`]) and writes
/// [`files::CALIBRATION`] to `out`, or reuses the calibration there when the same model, data
/// and settings made it. A trusted set calibration cannot split, probes or a recommended run
/// that cannot fit in memory, and a folder holding another run, are refused before any work.
pub fn run_calibration(
    config: &CalibrationConfig,
    model: &Classifier,
    task: &MadTask,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
) -> Result<CalibrationRun, MadRunError> {
    config.validate()?;
    let chains: Vec<usize> = (0..CALIBRATED_CHAINS).collect();
    config.check_run(model, task, &chains)?;
    let settings = serde_json::to_value(config).map_err(MadRunError::Settings)?;
    let identity = RunIdentity::for_madfa_task("madfa-calibrate", model, task, settings)?;
    let path = out.join(files::CALIBRATION);
    let state = identity::claim(out, &identity, &[files::CALIBRATION])?;
    if state == FolderState::Resuming && path.exists() {
        return Ok(CalibrationRun {
            calibration: read_calibration(&path)?,
            path,
            reused: true,
        });
    }
    let calibration = calibrate(
        model,
        &task.trusted,
        &task.sampling,
        config,
        device,
        progress,
    )?;
    write_json_atomic(&path, &calibration)?;
    Ok(CalibrationRun {
        calibration,
        path,
        reused: false,
    })
}

/// A sampling run as data.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleRunConfig {
    /// The chains' settings; with `calibration`, only the base it keeps (seed, preconditioner,
    /// batch sizes, BatchNorm mode, trace loss and form).
    pub chain: ChainConfig,
    /// Calibrate first and sample with the recommendation, spread over `chain_count` chains.
    pub calibration: Option<CalibrationConfig>,
    /// Chains of the whole run.
    pub chain_count: usize,
    /// Run only this chain (a cluster array's task); its files carry a `-chain-K` suffix.
    pub only_chain: Option<usize>,
    /// Write this chain's random draws to a folder (chain 0; [`StepRecorder`]).
    pub record_steps: Option<PathBuf>,
}

impl SampleRunConfig {
    /// The chains this call runs.
    pub fn chains(&self) -> Vec<usize> {
        match self.only_chain {
            Some(chain) => vec![chain],
            None => (0..self.chain_count).collect(),
        }
    }

    /// The suffix of the trace and diagnostics files: `-chain-K` for one chain of a run.
    pub fn file_suffix(&self) -> String {
        self.only_chain
            .map_or_else(String::new, |chain| format!("-chain-{chain}"))
    }

    /// Every file and folder the run writes under `out` (the step record's folder included),
    /// for [`check_outputs`] against the files it reads.
    pub fn output_files(&self, out: &Path) -> Vec<PathBuf> {
        let suffix = self.file_suffix();
        [
            files::TASK_JSON.to_string(),
            files::TASK_NPZ.into(),
            files::CALIBRATION.into(),
            files::traces(&suffix),
            files::diagnostics(&suffix),
        ]
        .iter()
        .map(|name| out.join(name))
        .chain(self.record_steps.clone())
        .collect()
    }

    /// Refuses settings out of range (the calibration's, or the chains').
    pub fn validate(&self) -> Result<(), MadError> {
        match &self.calibration {
            Some(calibration) => calibration.validate(),
            None => self.chain.validate(),
        }
    }

    /// What identifies the run's folder: the settings as the user gave them.
    fn identity_settings(&self) -> serde_json::Value {
        serde_json::json!({
            "calibration": self.calibration,
            "chain": self.calibration.is_none().then(|| self.chain.clone()),
            "chains": self.chain_count,
        })
    }
}

/// The chains about to run, as [`ChainEvent::Sampling`] reports them.
#[derive(Debug, Clone, Copy)]
pub struct SamplingPlan<'a> {
    /// Chain indices.
    pub chains: &'a [usize],
    /// Settings of every chain.
    pub config: &'a ChainConfig,
    /// Trusted samples traced at every draw.
    pub trusted: usize,
    /// Test samples traced at every draw.
    pub test: usize,
}

/// How well the anomaly scores of a trace file separate its anomalous test samples.
#[derive(Debug)]
pub enum TraceEvaluation {
    /// The file does not say which samples are anomalous, or all or none are.
    Unknown,
    /// The scores are undefined (every trusted trace constant, say): why.
    Undefined(MadError),
    /// AUROC of every score.
    Measured(ScoreReport),
}

impl TraceEvaluation {
    /// The AUROCs, when measured.
    pub fn report(&self) -> Option<&ScoreReport> {
        match self {
            Self::Measured(report) => Some(report),
            _ => None,
        }
    }
}

/// Scores `traces` against its anomaly flags, when it has both normal and anomalous samples.
pub fn evaluate_traces(traces: &LossTraces) -> Result<TraceEvaluation, MadError> {
    let Some(flags) = &traces.test_is_anomalous else {
        return Ok(TraceEvaluation::Unknown);
    };
    if !flags.iter().any(|&f| f) || flags.iter().all(|&f| f) {
        return Ok(TraceEvaluation::Unknown);
    }
    let coupling = match coupling(traces, 0) {
        Ok(coupling) => coupling,
        Err(e) => return Ok(TraceEvaluation::Undefined(e)),
    };
    let scores = anomaly_scores(&coupling, &traces.trusted_labels);
    Ok(TraceEvaluation::Measured(evaluate_scores(&scores, flags)?))
}

/// The traces and diagnostics of a finished sampling run.
#[derive(Debug)]
pub struct SampleReport {
    /// The traces, as written.
    pub traces: LossTraces,
    /// Where they are written.
    pub traces_path: PathBuf,
    /// Every chain's diagnostics, as written beside them.
    pub diagnostics: Vec<ChainDiagnostics>,
    /// The AUROC of every score, when the anomalies are known. Measured after the files are
    /// written, so undefined scores do not cost the traces.
    pub evaluation: TraceEvaluation,
    /// How reproducible the scores are between halves of the run, without labels
    /// ([`split_run_stability`]); `None` when a half cannot be scored (one chain of fewer than 4
    /// draws, every trusted trace constant).
    pub stability: Option<ScoreStability>,
}

/// How [`run_sample`] ended.
#[derive(Debug)]
pub enum SampleOutcome {
    /// Every chain ran; the files are written.
    Finished(Box<SampleReport>),
    /// `progress` stopped a chain; it is checkpointed and calling again continues it.
    Interrupted,
}

/// Samples `model` around its weights on `task` ([`run_chains`]) into `out`: calibrates first
/// when asked (or reuses the folder's calibration), writes the task ([`files::TASK_JSON`] with
/// `data`, the caller's description of it, and [`files::TASK_NPZ`]), runs the chains with
/// checkpoints in [`files::RESUME`], then writes the traces and diagnostics and measures the
/// AUROCs when the anomalies are known.
///
/// Before anything is written: a trusted set calibration cannot use, chain indices the trace
/// file cannot store, traces that cannot fit in memory (at the longest run calibration may
/// recommend), and a folder holding another run's state are refused. The caller checks that
/// no output replaces an input ([`SampleRunConfig::output_files`]) before loading the task.
pub fn run_sample(
    config: &SampleRunConfig,
    model: &Classifier,
    task: &MadTask,
    data: serde_json::Value,
    out: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<ChainEvent<'e>>,
) -> Result<SampleOutcome, MadRunError> {
    config.validate()?;
    let chains = config.chains();
    match &config.calibration {
        Some(calibration) => calibration.check_run(model, task, &chains)?,
        None => {
            check_run(model, task, &config.chain, &chains)?;
        }
    }
    let identity =
        RunIdentity::for_madfa_task("madfa-sample", model, task, config.identity_settings())?;
    if identity::claim(out, &identity, SAMPLE_STATE)? == FolderState::Resuming {
        progress.report(ChainEvent::Resuming(out));
    }
    let mut chain_config = config.chain.clone();
    if let Some(calibration_config) = &config.calibration {
        let path = out.join(files::CALIBRATION);
        // Safe to reuse: the folder's identity (claimed above) is this run's.
        let calibration = if path.exists() {
            progress.report(ChainEvent::CalibrationReused(&path));
            read_calibration(&path)?
        } else {
            let calibration = calibrate(
                model,
                &task.trusted,
                &task.sampling,
                calibration_config,
                device,
                progress,
            )?;
            write_json_atomic(&path, &calibration)?;
            calibration
        };
        progress.report(ChainEvent::Calibrated(&calibration));
        chain_config = calibration.per_chain(config.chain_count);
    }
    chain_config.validate()?;
    progress.report(ChainEvent::Sampling(&SamplingPlan {
        chains: &chains,
        config: &chain_config,
        trusted: task.trusted.len(),
        test: task.test.len(),
    }));
    write_json_atomic(&out.join(files::TASK_JSON), &data)?;
    task.save_npz(&out.join(files::TASK_NPZ))?;
    let mut recorder = config
        .record_steps
        .as_ref()
        .map(|dir| StepRecorder::new(dir, 0, &chain_config));
    let finished = run_chains(
        model,
        task,
        &chain_config,
        &chains,
        data,
        Some(&out.join(files::RESUME)),
        device,
        progress,
        recorder.as_mut(),
    )?;
    let Some((traces, diagnostics)) = finished else {
        return Ok(SampleOutcome::Interrupted);
    };
    let suffix = config.file_suffix();
    let traces_path = out.join(files::traces(&suffix));
    traces.save(&traces_path)?;
    write_json_atomic(&out.join(files::diagnostics(&suffix)), &diagnostics)?;
    let evaluation = evaluate_traces(&traces)?;
    let stability = split_run_stability(&traces).ok();
    Ok(SampleOutcome::Finished(Box::new(SampleReport {
        traces,
        traces_path,
        diagnostics,
        evaluation,
        stability,
    })))
}

/// Scoring a trace file, as data.
#[derive(Debug, Clone, PartialEq)]
pub struct ScoreRunConfig {
    /// The trace file.
    pub traces: PathBuf,
    /// Draws dropped at the start of every chain.
    pub burn_in: usize,
    /// Keep only the first this many draws after the burn-in.
    pub draws: Option<usize>,
    /// Keep every this-many-th of those draws.
    pub every: usize,
    /// Where the per-sample scores go.
    pub scores: PathBuf,
    /// Also write each test sample's this many most explaining trusted samples, to
    /// [`ScoreRunConfig::attribution_path`].
    pub top_k: Option<usize>,
}

impl ScoreRunConfig {
    /// `attribution.csv`, beside the scores.
    pub fn attribution_path(&self) -> PathBuf {
        self.scores.with_file_name("attribution.csv")
    }
}

/// What [`score_traces`] measured and wrote.
#[derive(Debug)]
pub struct ScoreRun {
    /// Chains in the file.
    pub chains: usize,
    /// Draws per chain used.
    pub draws: usize,
    /// Trusted samples.
    pub trusted: usize,
    /// Test samples (one row each in the scores).
    pub test: usize,
    /// Constant traces found (their warnings say what they mean).
    pub constant: ConstantTraces,
    /// The attributions' file, when written.
    pub attribution: Option<PathBuf>,
    /// The AUROC of every score, when the file says which samples are anomalous.
    pub report: Option<ScoreReport>,
    /// Split-run reliability of the scores used ([`SampleReport::stability`]).
    pub stability: Option<ScoreStability>,
}

/// Scores every test sample of a trace file by how strongly its loss co-varies with the
/// trusted samples' ([`coupling`], [`anomaly_scores`]), writes one CSV row per test sample
/// (`test_index,source_id`, every score of [`super::SCORE_NAMES`]`[,is_anomalous],path`) and, when
/// asked, the top attributions; measures the AUROCs when the file has anomaly flags. Neither
/// table may replace the traces, nor the two tables each other.
pub fn score_traces(config: &ScoreRunConfig) -> Result<ScoreRun, MadRunError> {
    let attribution = config.top_k.map(|_| config.attribution_path());
    check_outputs(
        [&config.traces],
        std::iter::once(&config.scores).chain(attribution.as_ref()),
    )?;
    let mut traces = LossTraces::load(&config.traces)?;
    if config.burn_in >= traces.draws() {
        return Err(MadRunError::NoDrawsLeft {
            burn_in: config.burn_in,
            path: config.traces.clone(),
            draws: traces.draws(),
        });
    }
    if config.every == 0 {
        return Err(MadRunError::ZeroThinning);
    }
    traces = traces.select_draws(config.burn_in, config.draws, config.every);
    if traces.draws() < 2 {
        return Err(MadRunError::TooFewDraws(traces.draws()));
    }
    let coupling = coupling(&traces, 0).map_err(|source| MadRunError::Scoring {
        path: config.traces.clone(),
        source,
    })?;
    let scores = anomaly_scores(&coupling, &traces.trusted_labels);
    write_atomic(&config.scores, scores_csv(&traces, &scores).as_bytes())?;
    if let (Some(k), Some(path)) = (config.top_k, &attribution) {
        let mut table =
            String::from("test_index,rank,trusted_index,trusted_source_id,correlation,bif\n");
        for (i, row) in top_attributions(&coupling, k).iter().enumerate() {
            for (rank, a) in row.iter().enumerate() {
                let source = traces
                    .trusted_ids
                    .as_ref()
                    .map_or(a.trusted as i64, |ids| ids[a.trusted]);
                let _ = writeln!(
                    table,
                    "{i},{},{},{source},{},{}",
                    rank + 1,
                    a.trusted,
                    a.correlation,
                    a.bif
                );
            }
        }
        write_atomic(path, table.as_bytes())?;
    }
    let report = match traces.test_is_anomalous.as_deref() {
        Some(flags) if flags.iter().any(|&f| f) && !flags.iter().all(|&f| f) => {
            Some(evaluate_scores(&scores, flags)?)
        }
        _ => None,
    };
    Ok(ScoreRun {
        chains: traces.chains(),
        draws: traces.draws(),
        trusted: traces.n_trusted(),
        test: traces.n_test(),
        constant: coupling.constant,
        attribution,
        report,
        stability: split_run_stability(&traces).ok(),
    })
}

/// The scores table: one row per test sample, with its anomaly flag when known and its file
/// when the traces came from image folders.
fn scores_csv(traces: &LossTraces, scores: &super::AnomalyScores) -> String {
    let flags = traces.test_is_anomalous.as_deref();
    let paths = test_paths(traces);
    let named = scores.named();
    let mut csv = format!(
        "test_index,source_id,{}",
        named.map(|(name, _)| name).join(",")
    );
    if flags.is_some() {
        csv.push_str(",is_anomalous");
    }
    csv.push_str(",path\n");
    for i in 0..traces.n_test() {
        let id = traces.test_ids.as_ref().map_or(i as i64, |ids| ids[i]);
        let _ = write!(csv, "{i},{id}");
        for (_, values) in &named {
            let _ = write!(csv, ",{}", values[i]);
        }
        if let Some(flags) = flags {
            let _ = write!(csv, ",{}", u8::from(flags[i]));
        }
        let path = paths
            .as_ref()
            .and_then(|p| p.get(i))
            .map_or("", String::as_str);
        let _ = writeln!(csv, ",{}", csv_field(path));
    }
    csv
}

/// The file of each test sample when the traces came from image folders (`vigil sample --model`
/// records them in the settings' data as `test_paths`, test then anomalous), if they are there
/// and one per test sample.
fn test_paths(traces: &LossTraces) -> Option<Vec<String>> {
    let settings: serde_json::Value =
        serde_json::from_str(traces.settings_json.as_deref()?).ok()?;
    let paths = settings.get("data")?.get("test_paths")?.clone();
    let paths: Vec<String> = serde_json::from_value(paths).ok()?;
    (paths.len() == traces.n_test()).then_some(paths)
}

#[cfg(test)]
mod tests {
    use ndarray::Array3;

    use super::*;
    use crate::data::test_util::ScratchDir;
    use crate::data::{ImageSet, ImageShape, Label};
    use crate::device::default_device;
    use crate::madfa::{Quiet, SgldConfig, user_task};
    use crate::models::{Architecture, ModelSpec};

    /// Traces of 2 chains x `draws` draws: 4 trusted samples (classes 0, 1, 0, 1) and 3 test
    /// samples, the last anomalous, every value a distinct pseudo-random number.
    fn traces(draws: usize) -> LossTraces {
        let noise = |k: usize, d: usize, i: usize, salt: u64| -> f32 {
            let h = crate::train::mix(k as u64, d as u64, i as u64 ^ salt);
            (h % 10_000) as f32 / 10_000.0
        };
        LossTraces {
            trusted: Array3::from_shape_fn((2, draws, 4), |(k, d, i)| noise(k, d, i, 1)),
            test: Array3::from_shape_fn((2, draws, 3), |(k, d, i)| noise(k, d, i, 2)),
            trusted_labels: vec![0, 1, 0, 1],
            test_is_anomalous: Some(vec![false, false, true]),
            chain_indices: Some(vec![0, 1]),
            trusted_ids: Some(vec![10, 11, 12, 13]),
            test_ids: Some(vec![20, 21, 21]),
            test_labels: Some(vec![0, 1, 1]),
            settings_json: None,
        }
    }

    #[test]
    fn scoring_a_trace_file_writes_one_row_per_test_sample_and_the_attributions() {
        let dir = ScratchDir::new("madfa-score");
        let path = dir.path().join("traces.npz");
        traces(6).save(&path).unwrap();
        let config = ScoreRunConfig {
            traces: path.clone(),
            burn_in: 1,
            draws: None,
            every: 1,
            scores: dir.path().join("scores.csv"),
            top_k: Some(2),
        };
        let run = score_traces(&config).unwrap();
        assert_eq!((run.chains, run.draws, run.trusted, run.test), (2, 5, 4, 3));
        let report = run.report.expect("both normal and anomalous samples");
        assert_eq!((report.normal, report.anomalous), (2, 1));
        let csv = std::fs::read_to_string(&config.scores).unwrap();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            lines[0],
            "test_index,source_id,mean_corr,clc,mean_ccc,class_ccc,nearest_corr,clc_plus_class_ccc,is_anomalous,path"
        );
        assert_eq!(lines.len(), 4);
        assert!(lines[3].starts_with("2,21,"), "{}", lines[3]);
        assert!(lines[3].ends_with(",1,"), "{}", lines[3]);
        let attribution = std::fs::read_to_string(run.attribution.unwrap()).unwrap();
        assert_eq!(attribution.lines().count(), 1 + 2 * 3);
    }

    #[test]
    fn scoring_refuses_selections_that_leave_too_few_draws_and_outputs_over_the_input() {
        let dir = ScratchDir::new("madfa-score-refused");
        let path = dir.path().join("traces.npz");
        traces(4).save(&path).unwrap();
        let config = |burn_in, every, scores: &str| ScoreRunConfig {
            traces: path.clone(),
            burn_in,
            draws: None,
            every,
            scores: dir.path().join(scores),
            top_k: None,
        };
        assert!(matches!(
            score_traces(&config(4, 1, "a.csv")),
            Err(MadRunError::NoDrawsLeft { draws: 4, .. })
        ));
        assert!(matches!(
            score_traces(&config(0, 0, "a.csv")),
            Err(MadRunError::ZeroThinning)
        ));
        assert!(matches!(
            score_traces(&config(3, 1, "a.csv")),
            Err(MadRunError::TooFewDraws(1))
        ));
        assert!(matches!(
            score_traces(&config(0, 1, "traces.npz")),
            Err(MadRunError::Io(_))
        ));
        assert!(!dir.path().join("a.csv").exists());
    }

    /// `n` 1x8x8 images of classes `i % 2`, distinct pixels.
    fn images(n: usize, salt: usize) -> ImageSet {
        let shape = ImageShape::new(1, 8, 8);
        let pixels = (0..n * shape.num_values())
            .map(|i| ((i * 7 + salt) % 23) as f32 / 23.0)
            .collect();
        let labels = (0..n).map(|i| (i % 2) as Label).collect();
        ImageSet::new(pixels, labels, shape, vec!["a".into(), "b".into()], "toy").unwrap()
    }

    /// Stops the chains at the first step it sees, else stays quiet; counts resumed folders.
    #[derive(Default)]
    struct Counting {
        stop: bool,
        resumed: usize,
        plans: usize,
    }

    impl Progress<ChainEvent<'_>> for Counting {
        fn report(&mut self, event: ChainEvent<'_>) {
            match event {
                ChainEvent::Resuming(_) => self.resumed += 1,
                ChainEvent::Sampling(plan) => {
                    assert_eq!((plan.trusted, plan.test), (6, 6));
                    self.plans += 1;
                }
                _ => {}
            }
        }

        fn should_stop(&mut self) -> bool {
            self.stop
        }
    }

    #[test]
    fn a_sampling_run_writes_its_folder_resumes_it_and_refuses_another_run_in_it() {
        let device = default_device();
        let spec = ModelSpec {
            architecture: Architecture::SmallCnn {
                width: 2,
                hidden: 4,
            },
            input_shape: [1, 8, 8],
            class_names: vec!["a".into(), "b".into()],
            normalization: None,
        };
        let model = Classifier::new(spec, &device).unwrap();
        let task = user_task(images(6, 0), images(8, 1), images(4, 2), Some(images(2, 3))).unwrap();
        let config = SampleRunConfig {
            chain: ChainConfig {
                sgld: SgldConfig {
                    lr: 1e-5,
                    batch_size: 4,
                    ..SgldConfig::reference()
                },
                draws: 3,
                burn_in: 2,
                thinning: 1,
                trace_batch_size: 8,
                ..ChainConfig::reference()
            },
            calibration: None,
            chain_count: 2,
            only_chain: None,
            record_steps: None,
        };
        let dir = ScratchDir::new("madfa-sample");
        let out = dir.path().join("run");

        // Stopped at once: checkpointed, no traces.
        let mut stopping = Counting {
            stop: true,
            ..Counting::default()
        };
        let outcome = run_sample(
            &config,
            &model,
            &task,
            "toy".into(),
            &out,
            &device,
            &mut stopping,
        );
        assert!(matches!(outcome, Ok(SampleOutcome::Interrupted)));
        assert!(out.join(files::TASK_NPZ).is_file());
        assert!(!out.join(files::traces("")).exists());

        // Called again: the folder is this run's, so it continues to the end.
        let mut observer = Counting::default();
        let outcome = run_sample(
            &config,
            &model,
            &task,
            "toy".into(),
            &out,
            &device,
            &mut observer,
        )
        .unwrap();
        let SampleOutcome::Finished(report) = outcome else {
            panic!("not finished");
        };
        assert_eq!((observer.resumed, observer.plans), (1, 1));
        assert_eq!(report.traces_path, out.join("traces.npz"));
        assert_eq!(
            LossTraces::load(&report.traces_path).unwrap(),
            report.traces
        );
        assert_eq!(report.traces.trusted.dim(), (2, 3, 6));
        assert_eq!(report.diagnostics.len(), 2);
        assert!(out.join(files::diagnostics("")).is_file());

        // Other settings in the same folder are refused before anything is written.
        let other = SampleRunConfig {
            chain_count: 3,
            ..config.clone()
        };
        assert!(matches!(
            run_sample(
                &other,
                &model,
                &task,
                "toy".into(),
                &out,
                &device,
                &mut Quiet
            ),
            Err(MadRunError::Identity(_))
        ));

        // One chain of a run has its own file names.
        let single = SampleRunConfig {
            only_chain: Some(1),
            ..config
        };
        assert_eq!(single.chains(), [1]);
        assert!(
            single
                .output_files(&out)
                .contains(&out.join("traces-chain-1.npz"))
        );
    }
}
