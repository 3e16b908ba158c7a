//! `vigil table`: one Markdown table from several attack records.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::attack::summary::{CleanRun, RecordSummary, summarize_record};
use vigil_core::device::default_device;

/// Summarise attack records (folders written by `vigil attack`) as a Markdown table: clean
/// accuracy, attack success rate (on non-target-class test images), poisoned samples, epochs
/// and training time. With --clean, also the clean model's accuracy, each drop from it, and the
/// clean model's own "ASR" on each record's triggered test set: how often the trigger alone,
/// without a backdoor, sends an image to the target (a trigger that is merely adversarial would
/// score high there).
#[derive(Args, Debug)]
pub struct TableArgs {
    /// Attack record folders.
    #[arg(required = true)]
    records: Vec<PathBuf>,

    /// A clean training run (folder written by `vigil train`) to compare accuracy against.
    #[arg(long, value_name = "DIR")]
    clean: Option<PathBuf>,
}

pub fn run(args: TableArgs) -> Result<ExitCode> {
    let device = default_device();
    let clean = args
        .clean
        .as_ref()
        .map(|dir| CleanRun::load(dir, &device))
        .transpose()?;
    if let Some(clean) = &clean {
        println!(
            "Clean model ({}): test accuracy {:.2}%\n",
            clean.architecture.as_deref().unwrap_or_default(),
            100.0 * clean.test_accuracy.unwrap_or(0.0)
        );
    }
    println!(
        "| attack | settings | target | rate | poisoned (+noise) | clean acc | Δ vs clean | ASR | ASR of clean model | epochs | train time |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for dir in &args.records {
        let summary = summarize_record(dir, clean.as_ref(), &device)?;
        print_row(&summary, clean.as_ref().and_then(|c| c.test_accuracy));
    }
    Ok(ExitCode::SUCCESS)
}

/// One record's row; `clean_accuracy` is the clean model's, for the difference.
fn print_row(summary: &RecordSummary, clean_accuracy: Option<f64>) {
    let manifest = &summary.manifest;
    let (settings, target) = (&summary.changed_settings, summary.target());
    let Some(r) = &summary.results else {
        println!(
            "| {} | {settings} | {target} | {} | - | unfinished | - | - | - | - | - |",
            manifest.attack, manifest.rate
        );
        return;
    };
    let delta = clean_accuracy
        .map(|c| format!("{:+.2}", 100.0 * (r.clean_accuracy - c)))
        .unwrap_or_else(|| "-".into());
    let clean_asr = match summary.clean_model_asr {
        Some(Some(asr)) => format!("{:.2}%", 100.0 * asr),
        _ => "-".into(),
    };
    let noise = if r.noise_samples > 0 {
        format!(" (+{})", r.noise_samples)
    } else {
        String::new()
    };
    println!(
        "| {} | {settings} | {target} | {} | {}{noise} | {:.2}% | {delta} | {:.2}% | {clean_asr} | {} | {:.0} s |",
        manifest.attack,
        manifest.rate,
        r.poisoned_samples,
        100.0 * r.clean_accuracy,
        100.0 * r.attack_success_rate,
        r.epochs,
        r.train_seconds
    );
}
