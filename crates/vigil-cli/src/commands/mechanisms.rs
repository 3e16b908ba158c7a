//! `vigil mechanisms`: tell apart the backdoors of a two-backdoor record from a MAD-FA run's
//! signatures, against the model's own features.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, ValueEnum};
use vigil_core::device::default_device;
use vigil_core::mechanisms::{KRule, MechanismConfig, analyse, files};

use super::RecordRunArgs;

/// Cluster the inputs MAD-FA flags on a record with two backdoors, and measure how well the
/// clusters match the backdoors.
///
/// RUN is a `vigil sample --record RECORD` run folder (its task.json and traces.npz). Test
/// inputs whose recommended MAD-FA score reaches the threshold of a trusted --fpr (set on the
/// trusted samples' leave-one-out scores) are flagged. MAD-FA's signatures of a flagged
/// triggered input: its own trace z-scored over the draws (inputs of one mechanism move
/// together), its row of Pearson couplings with the trusted samples, and the class means of
/// that row. k-means with k chosen without labels (2..=--max-k; by default the k whose
/// clustering random halves of the inputs reproduce best) clusters each,
/// and the adjusted Rand index compares the clusters with the backdoor that made each input;
/// the ARI with k set to the true number of backdoors is reported beside it. The model's
/// penultimate activations of the same inputs are clustered the same way, as the baseline;
/// every feature kind is also clustered over every triggered input, flagged or not. --out gets
/// mechanisms.json (every clustering: k, silhouettes, ARI), assignments.csv and signatures.svg
/// (the flagged inputs' features on their first two principal components, coloured by backdoor
/// and by cluster).
#[derive(Args, Debug)]
pub struct MechanismsArgs {
    #[command(flatten)]
    paths: RecordRunArgs,

    /// Trusted false-positive rate of the flagging threshold.
    #[arg(long, default_value_t = 0.05)]
    fpr: f64,

    /// Most clusters tried (k runs from 2).
    #[arg(long, default_value_t = 6)]
    max_k: usize,

    /// How k is chosen: stability (split-half reproducibility, Ben-Hur et al. 2002) or
    /// silhouette.
    #[arg(long, value_enum, default_value_t = KRuleArg::Stability)]
    choose_k: KRuleArg,

    /// k-means restarts per k (k-means++ seeds).
    #[arg(long, default_value_t = 10)]
    restarts: usize,

    /// Seed of the k-means seeding.
    #[arg(long, default_value_t = 0)]
    seed: u64,

    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum KRuleArg {
    Stability,
    Silhouette,
}

pub fn run(args: MechanismsArgs) -> Result<ExitCode> {
    let config = MechanismConfig {
        data_dir: args.paths.data_dir.clone(),
        fpr: args.fpr,
        max_k: args.max_k,
        restarts: args.restarts,
        k_rule: match args.choose_k {
            KRuleArg::Stability => KRule::Stability,
            KRuleArg::Silhouette => KRule::Silhouette,
        },
        seed: args.seed,
        ..MechanismConfig::new(
            args.paths.record.clone(),
            args.paths.run.clone(),
            args.paths.out.clone(),
        )
    };
    let report = analyse(&config, &default_device()).with_context(|| {
        format!(
            "telling apart the backdoors of {} from the run {}",
            args.paths.record.display(),
            args.paths.run.display()
        )
    })?;
    eprintln!(
        "flagged by {} above {:.4} ({:.0}% trusted FPR): clean {}/{}; {}",
        report.flagging_score,
        report.threshold,
        100.0 * report.fpr,
        report.clean_flagged.0,
        report.clean_flagged.1,
        report
            .mechanisms
            .iter()
            .zip(&report.triggered_flagged)
            .map(|(name, (flagged, all))| format!("{name} {flagged}/{all}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!(
        "madfa.traces_off_trusted: the traces without the {} principal directions that explain \
         {:.0}% of the trusted traces' variance",
        report.trusted_directions_removed,
        100.0 * vigil_core::mechanisms::TRUSTED_VARIANCE_REMOVED
    );
    eprintln!(
        "{:<26} {:<10} {:>5} {:>3} {:>7} {:>16}",
        "features", "inputs", "n", "k", "ARI", "ARI (k given)"
    );
    for row in &report.rows {
        eprintln!(
            "{:<26} {:<10} {:>5} {:>3} {:>7.3} {:>16.3}",
            row.features, row.inputs, row.n, row.k, row.ari, row.ari_true_k
        );
    }
    eprintln!(
        "written: {}, {}, {} in {}",
        files::REPORT,
        files::ASSIGNMENTS,
        files::PICTURE,
        args.paths.out.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}
