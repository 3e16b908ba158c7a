//! `vigil score`: MAD-FA anomaly scores from a trace file.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::io::write_atomic;
use vigil_core::madfa::{self, LossTraces};
use vigil_core::report::csv_field;

/// Score every test sample of a trace file (from `vigil sample`, or any .npz with `trusted`,
/// `test` [chains, draws, samples] and `trusted_labels`) by how strongly its loss co-varies
/// with the trusted samples' losses. Scores are anomaly scores: higher = more anomalous.
///
/// Writes a CSV with one row per test sample (test_index, unique across test and anomalous
/// inputs; source_id; mean_corr, clc, mean_ccc, class_ccc; the anomaly flag when the file has
/// one; and the image's file path when it came from an image folder). When the file says which
/// samples are anomalous, prints the AUROC of every score; with --json, stdout is one object
/// {"auroc": {"mean_corr": .., "clc": .., "mean_ccc": .., "class_ccc": ..}, ...}.
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
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| args.traces.with_file_name("scores.csv"));
    let attribution = out.with_file_name("attribution.csv");
    // Before any work: neither table may replace the traces, nor the two tables each other.
    vigil_core::io::check_outputs(
        [&args.traces],
        std::iter::once(&out).chain(args.top_k.map(|_| &attribution)),
    )?;
    let mut traces = LossTraces::load(&args.traces)?;
    if args.burn_in >= traces.draws() {
        anyhow::bail!(
            "--burn-in {} leaves no draws: {} has {} per chain",
            args.burn_in,
            args.traces.display(),
            traces.draws()
        );
    }
    if args.every == 0 {
        anyhow::bail!("--every must be at least 1");
    }
    traces = traces.select_draws(args.burn_in, args.draws, args.every);
    if traces.draws() < 2 {
        anyhow::bail!(
            "the selected draws leave {} per chain; need at least 2",
            traces.draws()
        );
    }
    let coupling = madfa::coupling(&traces, 0)
        .with_context(|| format!("scoring {}", args.traces.display()))?;
    let scores = madfa::anomaly_scores(&coupling, &traces.trusted_labels);
    for warning in coupling.constant.warnings() {
        eprintln!("warning: {warning}");
    }
    let flags = traces.test_is_anomalous.as_deref();
    let ids = traces.test_ids.clone();
    let paths = test_paths(&traces);
    let mut csv = String::from("test_index,source_id,mean_corr,clc,mean_ccc,class_ccc");
    if flags.is_some() {
        csv.push_str(",is_anomalous");
    }
    csv.push_str(",path\n");
    for i in 0..traces.n_test() {
        let id = ids.as_ref().map_or(i as i64, |ids| ids[i]);
        let _ = write!(
            csv,
            "{i},{id},{},{},{},{}",
            scores.mean_corr[i], scores.clc[i], scores.mean_ccc[i], scores.class_ccc[i]
        );
        if let Some(flags) = flags {
            let _ = write!(csv, ",{}", u8::from(flags[i]));
        }
        let path = paths
            .as_ref()
            .and_then(|p| p.get(i))
            .map_or("", String::as_str);
        let _ = writeln!(csv, ",{}", csv_field(path));
    }
    write_atomic(&out, csv.as_bytes())?;
    eprintln!(
        "{}: {} chains x {} draws used, {} trusted, {} test; scores in {}",
        args.traces.display(),
        traces.chains(),
        traces.draws(),
        traces.n_trusted(),
        traces.n_test(),
        out.display()
    );
    if let Some(k) = args.top_k {
        let path = &attribution;
        let mut table =
            String::from("test_index,rank,trusted_index,trusted_source_id,correlation,bif\n");
        for (i, row) in madfa::top_attributions(&coupling, k).iter().enumerate() {
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
        eprintln!("attributions in {}", path.display());
    }
    let report = match flags {
        Some(flags) if flags.iter().any(|&f| f) && !flags.iter().all(|&f| f) => {
            Some(madfa::evaluate_scores(&scores, flags)?)
        }
        _ => None,
    };
    if let Some(report) = &report {
        eprintln!(
            "{} normal vs {} anomalous test samples:",
            report.normal, report.anomalous
        );
        for (name, auroc) in &report.auroc {
            eprintln!("  AUROC {name:>10}: {auroc:.4}");
        }
    }
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "traces": args.traces.display().to_string(),
                "burn_in": args.burn_in,
                "every": args.every,
                "chains": traces.chains(),
                "draws": traces.draws(),
                "auroc": report.as_ref().map(|r| &r.auroc),
                "normal": report.as_ref().map(|r| r.normal),
                "anomalous": report.as_ref().map(|r| r.anomalous),
                "scores_csv": out.display().to_string(),
                "constant_traces": coupling.constant,
                "seconds": started.elapsed().as_secs_f64(),
            })
        );
    }
    Ok(ExitCode::SUCCESS)
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
