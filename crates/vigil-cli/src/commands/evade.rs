//! `vigil evade`: an attacker who knows MAD-FA pushes triggered inputs to look trusted while the
//! backdoor keeps working; detection before and after.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::evasion::{EvasionConfig, EvasionEvent, RecordEvasion, evade_record_run, files};
use vigil_core::ood::ScoreKind;
use vigil_core::progress::Progress;

use super::{MadfaScoreArg, RecordRunArgs, parse_fraction};

/// Attack the detectors themselves: move triggered inputs, within an L-infinity ball, so each
/// detector scores them as normal while the model keeps them in the backdoor's target class;
/// measure MAD-FA and a latent detector (Mahalanobis) before and after an attack on their own
/// scores, on the same inputs at the same budget.
///
/// RUN is a `vigil sample --record RECORD` run: its split (task.json) and its sampler settings
/// and seed (traces.npz) are reused, and its chains are run again with linearised traces, so
/// the attacker knows the model, the trusted set, the score, the threshold rule and the
/// defender's own chains (white box). The score is differentiated through the linearised traces
/// (docs/madfa.md, "The score as a function of the input"); each attacked input takes --steps
/// sign-gradient steps of 2.5 eps / steps on score + keep * (target's trace loss), and keeps the
/// iterate of least score that the model still puts in the target class. Defender and attacker
/// score with the same linearised traces. The latent detector, fitted on the trusted set as
/// `vigil detect` fits it, is attacked on its own score plus keep * the target's cross-entropy
/// (the same steps, through the model). --out gets evasion.json (per detector: AUROC and TPR at
/// the trusted --fpr threshold before and after, how many stay in the target class, timings;
/// the settings) and examples.png (originals, each detector's attacked inputs, the amplified
/// differences).
#[derive(Args, Debug)]
pub struct EvadeArgs {
    #[command(flatten)]
    paths: RecordRunArgs,

    /// L-infinity radius, in [0, 1] pixel units (`8/255` or `0.0314`).
    #[arg(long, default_value = "8/255", value_parser = parse_fraction)]
    eps: f64,

    /// Sign-gradient steps.
    #[arg(long, default_value_t = 20)]
    steps: usize,

    /// Weight of the target's loss in the objective (0: the score alone; either way only
    /// iterates the model still sends to the target are kept).
    #[arg(long, default_value_t = 0.0)]
    keep: f64,

    /// The score attacked and measured.
    #[arg(long, value_enum, default_value_t = MadfaScoreArg::Recommended)]
    score: MadfaScoreArg,

    /// Triggered inputs attacked at most (spread evenly over the task's).
    #[arg(long, default_value_t = 100)]
    inputs: usize,

    /// Trusted false-positive rate of the threshold the TPRs are read at.
    #[arg(long, default_value_t = 0.05)]
    fpr: f64,

    /// The detectors attacked beside MAD-FA, each on its own score, comma-separated
    /// (differentiable OOD scores: mahalanobis, knn, msp, energy, ...).
    #[arg(long, value_delimiter = ',', default_value = "mahalanobis")]
    latent: Vec<ScoreKind>,

    /// Also score MAD-FA's attacked inputs as a defender with its own chain seed would: exact
    /// traces of fresh chains of the run's settings drawn with this seed, which the attacker
    /// does not know (the attack transfers from the run's chains).
    #[arg(long, value_name = "SEED")]
    defender_seed: Option<u64>,

    /// Print evasion.json on stdout.
    #[arg(long)]
    json: bool,
}

/// Prints one line per stage.
struct Printer;

impl Progress<EvasionEvent> for Printer {
    fn report(&mut self, event: EvasionEvent) {
        match event {
            EvasionEvent::Sampled { chain, chains } => {
                eprintln!("chain {chain} of {chains} sampled (linearised)")
            }
            EvasionEvent::Scored { done: 0, total } => {
                eprintln!("scoring {total} inputs")
            }
            EvasionEvent::Attacked { done, total } if done % 10 == 0 || done == total => {
                eprintln!("attacked {done} of {total}")
            }
            _ => {}
        }
    }
}

pub fn run(args: EvadeArgs) -> Result<ExitCode> {
    let experiment = RecordEvasion {
        record: args.paths.record.clone(),
        run: args.paths.run.clone(),
        data_dir: args.paths.data_dir.clone(),
        config: EvasionConfig {
            eps: args.eps,
            steps: args.steps,
            keep: args.keep,
            score: args.score.into(),
            max_inputs: args.inputs,
            fpr: args.fpr,
        },
        latent: args.latent.clone(),
        defender_seed: args.defender_seed,
        out: args.paths.out.clone(),
    };
    let file =
        evade_record_run(&experiment, &default_device(), &mut Printer).with_context(|| {
            format!(
                "attacking MAD-FA on {} with the run {}",
                args.paths.record.display(),
                args.paths.run.display()
            )
        })?;
    for r in &file.detectors {
        eprintln!(
            "{}: {} attacked ({} still in the target class), {} clean: AUROC {:.4} -> {:.4}, TPR at {:.0}% trusted FPR {:.3} -> {:.3}",
            r.detector,
            r.attacked,
            r.still_target,
            r.clean,
            r.auroc_before,
            r.auroc_after,
            100.0 * args.fpr,
            r.tpr_before,
            r.tpr_after
        );
    }
    eprintln!(
        "written {} and {} in {}",
        files::REPORT,
        files::EXAMPLES,
        args.paths.out.display()
    );
    if args.json {
        println!("{}", serde_json::to_string(&file)?);
    }
    Ok(ExitCode::SUCCESS)
}
