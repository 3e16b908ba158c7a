//! `vigil detect`: fit detectors on trusted data, then score and flag inputs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_core::data::text::{read_jsonl, read_prompts};
use vigil_core::detect::experiment::{
    self, DetectConfig, DetectData, DetectProgress, DetectReport,
};
use vigil_core::detect::files;
use vigil_core::detect::page::PageData;
use vigil_core::detect::{DetectError, GroundTruth};
use vigil_core::device::default_device;
use vigil_core::io::check_outputs;
use vigil_core::lm::detect::{detect_prompts, write_prompt_report};
use vigil_core::lm::detection::{PARTIAL_FILE, TextDetectionConfig, TextInputs, remove_partial};
use vigil_core::lm::{LanguageModel, LmError};
use vigil_core::madfa::MadTask;

use super::sample::MadInputArgs;
use super::{MadfaDetectorArgs, ThresholdArgs};
use crate::progress::{Interruptible, TextDetectionBars};

/// Check inputs for anomalies: fit each detector on trusted clean data, set its threshold at
/// --target-fpr on trusted samples the detector was not fitted on (--thresholds; never on the
/// inputs), then score and flag every input.
///
/// Inputs come from an attack record (`--record`: its model, the trusted / sampling / test
/// split of its clean test set, the test part's clean and triggered images as inputs, with
/// the truth known) or your own model (`--model`) with image folders: --trusted and --sampling
/// (clean, labelled by class folder), --test (the inputs to check: a flat folder will do) and,
/// optionally, --anomalous (inputs known to be anomalous, to measure the detectors).
///
/// Writes to --out: scores.csv (per input: file, score and flag of every detector column, and
/// MAD-FA's most and least attributed trusted samples), report.json (thresholds, flag counts
/// and, when the truth is known, AUROC, AUPR, FPR at 95% TPR, and the TPR and actual FPR at the
/// threshold; anomalous inputs are the positive class) and report.html (one self-contained page:
/// the detectors, score histograms with thresholds, the flagged inputs as images beside their
/// attributed trusted images). Detectors and their settings: docs/detectors.md.
///
/// With --text, checks a language model's prompts instead: --model is a language model (a text
/// run's folder, a Hugging Face folder, a GGUF file); --trusted, --test and --anomalous are
/// JSON-lines files of prompts (`{"prompt": ...}`), --sampling one of clean `{"prompt",
/// "response"}` pairs (MAD-FA's chains sample them; Mahalanobis is fitted on their prompts).
/// The detectors are MAD-FA on the model's own greedy responses, the perplexity filter, and
/// Mahalanobis and spectral signatures at the last block (docs/language-models.md); the
/// thresholds flag --target-fpr of the trusted prompts' scores.
#[derive(Args, Debug)]
pub struct DetectArgs {
    #[command(flatten)]
    input: MadInputArgs,

    /// Prompts of a language model, not images (see above).
    #[arg(
        long,
        requires_all = ["model", "trusted", "sampling"],
        conflicts_with_all = ["record", "detectors", "holdout", "folds", "show"]
    )]
    text: bool,

    /// Longest sampling sequence in tokens, with --text.
    #[arg(long, default_value_t = 128, value_name = "N", requires = "text")]
    sequence_length: usize,

    /// Detectors, comma-separated: madfa, msp, energy, max-logit, odin, mahalanobis, knn, react,
    /// strip, scale-up, ibd-psc, teco, sentinet, spectral, que (each with its reference
    /// settings; docs/detectors.md).
    #[arg(long, value_delimiter = ',', default_value = "madfa,mahalanobis,msp")]
    detectors: Vec<String>,

    #[command(flatten)]
    madfa: MadfaDetectorArgs,

    #[command(flatten)]
    thresholds: ThresholdArgs,

    /// Batch size of forward passes.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,

    /// Seed of the held-back trusted part (or folds) and of every detector's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Flagged inputs shown as images on the HTML page (most often flagged first).
    #[arg(long, default_value_t = 24, value_name = "N")]
    show: usize,

    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

impl DetectArgs {
    /// The detectors, thresholds, batch size and seed these flags ask for.
    fn config(&self) -> Result<DetectConfig> {
        let config = DetectConfig {
            detectors: self.madfa.detectors(&self.detectors)?,
            thresholds: self.thresholds.config(),
            batch_size: self.batch_size,
            seed: self.seed,
        };
        config.thresholds.validate()?;
        Ok(config)
    }
}

pub fn run(args: DetectArgs) -> Result<ExitCode> {
    if args.text {
        return run_text(&args);
    }
    let outputs = files::paths(&args.out);
    check_outputs(args.input.input_paths(), &outputs)?;
    let config = args.config()?;
    let device = default_device();
    let (classifier, task, data) = args.input.load(args.batch_size, true, &device)?;
    let truth = task
        .test_is_anomalous
        .clone()
        .map(|is_anomalous| GroundTruth { is_anomalous });
    let inputs = DetectData {
        model: &classifier,
        trusted: &task.trusted,
        sampling: &task.sampling,
        inputs: &task.test,
        truth: truth.as_ref(),
    };
    let mut progress = Interruptible::new(print_progress);
    let report = match experiment::run(&config, &inputs, &device, &mut progress) {
        Err(DetectError::Stopped) => {
            eprintln!("stopped before every detector ran; nothing written");
            return Ok(ExitCode::from(130));
        }
        report => report?,
    };
    write_outputs(&args.out, &report, &task, truth.as_ref(), &data, args.show)?;
    let [scores, report_json, page] = &outputs;
    eprintln!(
        "wrote {}, {} and {}",
        scores.display(),
        report_json.display(),
        page.display()
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `vigil detect --text`.
fn run_text(args: &DetectArgs) -> Result<ExitCode> {
    let [Some(model), Some(trusted), Some(sampling), test, anomalous] = args.input.given_paths()
    else {
        bail!("--text needs --model, --trusted and --sampling");
    };
    if test.is_none() && anomalous.is_none() {
        bail!("--text needs prompts to check: --test and/or --anomalous");
    }
    let outputs = ["report.json", "report.md", "scores.csv"].map(|f| args.out.join(f));
    check_outputs(args.input.input_paths(), &outputs)?;
    let prompts = |path: &PathBuf| {
        read_prompts(path).with_context(|| format!("reading prompts from {}", path.display()))
    };
    let trusted = prompts(trusted)?;
    let clean_pairs = read_jsonl(sampling)
        .with_context(|| format!("reading pairs from {}", sampling.display()))?;
    let normal = test.map(prompts).transpose()?.unwrap_or_default();
    let bad = anomalous.map(prompts).transpose()?;
    let truth: Option<Vec<bool>> = bad.as_ref().map(|bad| {
        std::iter::repeat_n(false, normal.len())
            .chain(std::iter::repeat_n(true, bad.len()))
            .collect()
    });
    let mut checked = normal;
    checked.extend(bad.unwrap_or_default());
    let device = default_device();
    let lm = LanguageModel::load(model, &device)
        .with_context(|| format!("loading {}", model.display()))?;
    let config = TextDetectionConfig {
        seed: args.seed,
        batch_size: args.batch_size,
        ..TextDetectionConfig::default()
    };
    let inputs = TextInputs {
        trusted: &trusted,
        test: &checked,
        clean_pairs: &clean_pairs,
        sequence_length: args.sequence_length,
    };
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Responses and finished chains are kept here until the report is written, so that an
    // interrupted run continues where it stopped.
    let partial = args.out.join(PARTIAL_FILE);
    let mut progress = Interruptible::new(TextDetectionBars::new());
    let report = match detect_prompts(
        &lm,
        &inputs,
        truth.as_deref(),
        args.thresholds.target_fpr,
        &config,
        &device,
        Some(&partial),
        &mut progress,
    ) {
        Err(LmError::Stopped(kept)) => {
            eprintln!("{kept}");
            return Ok(ExitCode::from(130));
        }
        report => report?,
    };
    progress.inner().finish();
    write_prompt_report(&args.out, &report, &checked)?;
    remove_partial(&partial)?;
    for c in &report.columns {
        let measured = c.evaluation.map_or(String::new(), |e| {
            format!(
                "; AUROC {:.4}, TPR {:.3} at FPR {:.3}",
                e.auroc, e.tpr, e.fpr
            )
        });
        eprintln!(
            "  {}: threshold {:.4e}, {} of {} flagged{measured}",
            c.column,
            c.threshold,
            c.flagged,
            checked.len()
        );
    }
    eprintln!(
        "wrote {}",
        outputs.map(|p| p.display().to_string()).join(", ")
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes scores.csv, report.json and report.html, naming inputs and trusted samples by their
/// files (from `data`, the task's description), or by their place in the record's clean test
/// set.
fn write_outputs(
    out: &Path,
    report: &DetectReport,
    task: &MadTask,
    truth: Option<&GroundTruth>,
    data: &serde_json::Value,
    max_shown: usize,
) -> Result<()> {
    let strings = |key: &str| -> Vec<String> {
        data[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|p| p.as_str().unwrap_or_default().to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let paths = strings("test_paths");
    // Trusted samples are files of --trusted, or images of the record's clean test set.
    let mut trusted_names = strings("trusted_paths");
    if trusted_names.is_empty() {
        trusted_names = task
            .trusted_ids
            .iter()
            .map(|id| format!("clean test image {id}"))
            .collect();
    }
    let page = PageData {
        report,
        inputs: &task.test,
        trusted: &task.trusted,
        truth,
        input_names: &paths,
        trusted_names: &trusted_names,
        max_shown,
    };
    Ok(files::save(out, &page)?)
}

/// One line per detector stage, and its flag counts and measurements when done.
fn print_progress(p: DetectProgress<'_>) {
    match p {
        DetectProgress::Started(name) => {
            eprintln!("{name}: fitting on the trusted data, scoring the inputs")
        }
        DetectProgress::Done(result) => {
            if let Some(why) = &result.no_scores {
                eprintln!("  {}: n/a ({why})", result.detector);
            }
            for c in &result.columns {
                let measured = c.evaluation.as_ref().map_or(String::new(), |e| {
                    format!(
                        "; AUROC {:.4}, TPR {:.3} at FPR {:.3}",
                        e.auroc, e.tpr, e.fpr
                    )
                });
                eprintln!(
                    "  {}.{}: threshold {:.4e}, {} flagged{measured}",
                    result.detector, c.column, c.threshold, c.flagged
                );
            }
        }
    }
}
