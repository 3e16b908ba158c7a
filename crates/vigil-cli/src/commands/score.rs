//! `vigil score`: MAD-FA anomaly scores from a trace file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::madfa::{self, ScoreRun, ScoreRunConfig};

/// Score every test sample of a trace file (from `vigil sample`, or any .npz with `trusted`,
/// `test` [chains, draws, samples] and `trusted_labels`) by how strongly its loss co-varies
/// with the trusted samples' losses. Scores are anomaly scores: higher = more anomalous.
///
/// Writes a CSV with one row per test sample (test_index, unique across test and anomalous
/// inputs; source_id; mean_corr, clc, mean_ccc, class_ccc, nearest_corr, clc_plus_class_ccc; the anomaly flag when the file has
/// one; and the image's file path when it came from an image folder). When the file says which
/// samples are anomalous, prints the AUROC of every score; with --json, stdout is one object
/// {"auroc": {"mean_corr": .., "clc": .., "mean_ccc": .., "class_ccc": .., "nearest_corr": .., "clc_plus_class_ccc": ..}, ...}.
#[derive(Args, Debug)]
pub struct ScoreArgs {
    /// Trace file (.npz).
    traces: PathBuf,

    /// Draws to drop at the start of every chain (vigil's own files hold kept draws only).
    #[arg(long, default_value_t = 0)]
    burn_in: usize,

    /// Use only the first N kept draws of every chain (after --burn-in): detection against
    /// chain length from one long run.
    #[arg(long, value_name = "N")]
    draws: Option<usize>,

    /// Use only every K-th of those draws (thinning after the fact).
    #[arg(long, default_value_t = 1, value_name = "K")]
    every: usize,

    /// Where to write the per-sample scores (default: scores.csv beside the traces).
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,

    /// Also write, per test sample, the K trusted samples that explain it most (correlation
    /// and covariance-form BIF) to attribution.csv beside the scores.
    #[arg(long, value_name = "K")]
    top_k: Option<usize>,

    /// Print the AUROCs as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ScoreArgs) -> Result<ExitCode> {
    let started = std::time::Instant::now();
    let config = ScoreRunConfig {
        traces: args.traces.clone(),
        burn_in: args.burn_in,
        draws: args.draws,
        every: args.every,
        scores: args
            .out
            .clone()
            .unwrap_or_else(|| args.traces.with_file_name("scores.csv")),
        top_k: args.top_k,
    };
    let scored = madfa::score_traces(&config)?;
    print_scored(&config, &scored);
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "traces": args.traces.display().to_string(),
                "burn_in": args.burn_in,
                "every": args.every,
                "chains": scored.chains,
                "draws": scored.draws,
                "auroc": scored.report.as_ref().map(|r| &r.auroc),
                "normal": scored.report.as_ref().map(|r| r.normal),
                "anomalous": scored.report.as_ref().map(|r| r.anomalous),
                "scores_csv": config.scores.display().to_string(),
                "constant_traces": scored.constant,
                "stability": scored.stability,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Constant-trace warnings, what was scored and where the tables are, and the AUROCs, on stderr.
fn print_scored(config: &ScoreRunConfig, scored: &ScoreRun) {
    for warning in scored.constant.warnings() {
        eprintln!("warning: {warning}");
    }
    eprintln!(
        "{}: {} chains x {} draws used, {} trusted, {} test; scores in {}",
        config.traces.display(),
        scored.chains,
        scored.draws,
        scored.trusted,
        scored.test,
        config.scores.display()
    );
    if let Some(path) = &scored.attribution {
        eprintln!("attributions in {}", path.display());
    }
    if let Some(report) = &scored.report {
        eprintln!(
            "{} normal vs {} anomalous test samples:",
            report.normal, report.anomalous
        );
        for (name, auroc) in &report.auroc {
            eprintln!("  AUROC {name:>10}: {auroc:.4}");
        }
    }
    if let Some(stability) = &scored.stability {
        eprintln!("{}", stability.summary(madfa::RECOMMENDED_SCORE));
    }
}
