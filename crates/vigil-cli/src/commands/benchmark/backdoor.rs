//! `vigil benchmark backdoor`: every detector on every attack record.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::benchmark::BenchmarkError;
use vigil_core::benchmark::backdoor::{self, BackdoorBenchmarkConfig, BackdoorRecord, Progress};
use vigil_core::detect::DetectorSettings;
use vigil_core::detect::experiment::{DetectConfig, DetectProgress};
use vigil_core::device::default_device;

use crate::commands::{MadfaDetectorArgs, SplitArgs, ThresholdArgs};
use crate::progress::Interruptible;

/// Backdoor detection over attack records: for each record (a folder written by `vigil
/// attack`), the per-class trusted / sampling / test split of its clean test set (--split,
/// --split-seed), every detector fitted on the trusted part with its threshold at --target-fpr
/// on trusted scores it was not fitted on (--thresholds), and the test part's clean images and triggered copies scored.
/// Per record, detector and score column: AUROC, AUPR and FPR at 95% TPR (triggered inputs are
/// the positive class), the TPR and actual FPR at the threshold, and DER (BackdoorBench's
/// defense effectiveness rating of rejecting flagged inputs, on the whole test part).
///
/// Writes OUT/report.json, OUT/rows.csv, OUT/report.md, OUT/der.svg and OUT/roc-<record>.svg.
/// Every finished (record, detector) is saved under OUT/parts, so rerunning the command after an
/// interruption continues where it stopped, and adding a record or a detector computes only
/// what is new. Detectors: docs/detectors.md.
#[derive(Args, Debug)]
pub struct BackdoorArgs {
    /// Attack record folders; each is named by its folder name in the report.
    #[arg(required = true, value_name = "RECORD")]
    records: Vec<PathBuf>,

    /// Detectors, comma-separated, each with its reference settings [default: all of madfa,
    /// msp, energy, max-logit, odin, mahalanobis, knn, react, strip, scale-up, ibd-psc, teco,
    /// sentinet, spectral, que].
    #[arg(long, value_delimiter = ',')]
    detectors: Vec<String>,

    #[command(flatten)]
    madfa: MadfaDetectorArgs,

    #[command(flatten)]
    thresholds: ThresholdArgs,

    #[command(flatten)]
    split: SplitArgs,

    /// Folder holding the records' dataset (overrides $VIGIL_DATA_DIR, ./data and the Debian
    /// path for Fashion-MNIST).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Batch size of forward passes.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,

    /// Seed of the held-back trusted part (or folds) and of every detector's random choices.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Output folder.
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Print the report as JSON on stdout (else the table of each detector's means).
    #[arg(long)]
    json: bool,
}

pub fn run(args: BackdoorArgs) -> Result<ExitCode> {
    let config = config(&args)?;
    let records = args
        .records
        .iter()
        .map(|path| BackdoorRecord::from_path(path))
        .collect::<Result<Vec<_>, _>>()?;
    let outputs = ["report.json", "rows.csv", "report.md", "der.svg"]
        .map(String::from)
        .into_iter()
        .chain(records.iter().map(|r| format!("roc-{}.svg", r.name)))
        .map(|name| args.out.join(name))
        .collect::<Vec<_>>();
    vigil_core::io::check_outputs(&args.records, &outputs)?;
    let device = default_device();
    let report = match backdoor::run(
        &config,
        &records,
        args.data_dir.as_deref(),
        Some(&args.out),
        &device,
        &mut Interruptible::new(print_progress),
    ) {
        Err(BenchmarkError::Stopped) => {
            eprintln!(
                "stopped; the finished parts are saved: run the same command again to continue"
            );
            return Ok(ExitCode::from(130));
        }
        report => report?,
    };
    report.save(&args.out)?;
    eprintln!(
        "wrote {} (report.json, rows.csv, report.md, der.svg, roc-*.svg) in {:.0} s",
        args.out.display(),
        report.seconds
    );
    if args.json {
        println!(
            "{}",
            serde_json::to_string(&report).context("encoding the report")?
        );
    } else {
        let markdown = report.to_markdown();
        let means = markdown
            .split("\n## ")
            .find(|part| part.starts_with("Per detector"))
            .unwrap_or_default();
        println!("## {}", means.trim_end());
    }
    Ok(ExitCode::SUCCESS)
}

/// The library's settings from the flags.
fn config(args: &BackdoorArgs) -> Result<BackdoorBenchmarkConfig> {
    let names: Vec<String> = if args.detectors.is_empty() {
        DetectorSettings::names()
            .into_iter()
            .map(String::from)
            .collect()
    } else {
        args.detectors
            .iter()
            .map(|d| d.trim().to_string())
            .collect()
    };
    Ok(BackdoorBenchmarkConfig {
        detect: DetectConfig {
            detectors: args.madfa.detectors(&names)?,
            thresholds: args.thresholds.config(),
            batch_size: args.batch_size,
            seed: args.seed,
        },
        split: args.split.sizes()?,
        split_seed: args.split.split_seed,
    })
}

/// One line per record and per detector on it.
fn print_progress(p: Progress<'_>) {
    match p {
        Progress::Record(r) => {
            let s = &r.split;
            eprintln!(
                "{} ({}): trusted {}/{} correct, clean inputs {}/{}, triggered inputs {}/{} attacked successfully",
                r.name,
                r.attack,
                s.trusted.1,
                s.trusted.0,
                s.clean_test.1,
                s.clean_test.0,
                s.triggered_test.1,
                s.triggered_test.0
            );
        }
        Progress::Loaded { record, detector } => {
            eprintln!("  {record} / {detector}: saved by an earlier run, reused");
        }
        Progress::Detect { record, event } => match event {
            DetectProgress::Started(name) => eprintln!("  {record} / {name}: running"),
            DetectProgress::Done(result) => {
                if let Some(why) = &result.no_scores {
                    eprintln!("  {record} / {}: n/a ({why})", result.detector);
                }
                for c in &result.columns {
                    if let Some(e) = &c.evaluation {
                        eprintln!(
                            "  {record} / {}.{}: AUROC {:.4}, TPR {:.3} at FPR {:.3} ({:.0} s)",
                            result.detector, c.column, e.auroc, e.tpr, e.fpr, result.seconds
                        );
                    }
                }
            }
        },
    }
}
