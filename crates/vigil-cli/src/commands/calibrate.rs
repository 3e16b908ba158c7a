//! `vigil calibrate`: MAD-FA sampler settings chosen from trusted and sampling data alone.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::madfa::{self, CALIBRATED_CHAINS, Calibration, TraceLoss};

use super::sample::{CalibrationArgs, ChainProgress, MadInputArgs, SamplerArgs};
use crate::progress::Interruptible;

/// Choose MAD-FA's sampler settings (lr, gamma, n_beta, number of draws) from the trusted and
/// sampling data alone: no anomalous input is looked at.
///
/// lr is set so the localization pulls the chain back by --pull per step where RMSprop's gain
/// is largest (at the reference settings consecutive draws are correlated over ~20 steps, which
/// makes single runs a lottery; pull 1 makes them nearly independent). Then, for every
/// candidate gamma and n_beta, two short independent chains trace the trusted set, split per
/// class into a reference half and a probe half; the agreement of the probes' CLC scores
/// between the two chains (their reliability) gives, by the Spearman-Brown formula, the draws
/// needed for --target-reliability. Candidates whose chains diverge, raise the loss by more
/// than 10% of chance level or leave >10% of trusted traces constant are rejected; the healthy
/// one needing the fewest draws wins. Method and measurements: docs/madfa.md.
///
/// Writes --out/calibration.json and prints the `vigil sample` flags to use (or run
/// `vigil sample --calibrate`, which calibrates and samples in one go).
#[derive(Args, Debug)]
pub struct CalibrateArgs {
    #[command(flatten)]
    input: MadInputArgs,

    #[command(flatten)]
    calibration: CalibrationArgs,

    #[command(flatten)]
    base: SamplerArgs,

    /// Output folder (calibration.json).
    #[arg(long, value_name = "DIR")]
    out: PathBuf,

    /// Print the calibration as JSON on stdout.
    #[arg(long)]
    json: bool,
}

/// The candidates table and the recommendation, on stderr.
pub fn print_calibration(c: &Calibration) {
    eprintln!(
        "calibration ({} reference + {} probe trusted samples, 2 x {} probe draws per candidate, {:.0}s):",
        c.reference_size, c.probe_size, c.config.probe_draws, c.seconds
    );
    eprintln!(
        "  {:>8} {:>7} {:>9} {:>8} {:>9} {:>8} {:>9} {:>7}  verdict",
        "gamma", "n_beta", "lr", "CLC rel", "coupl rel", "draws", "loss rise", "const"
    );
    for (i, r) in c.candidates.iter().enumerate() {
        let verdict = match (&r.rejected, i == c.chosen) {
            (Some(why), _) => format!("rejected: {why}"),
            (None, true) => "chosen".into(),
            (None, false) => "ok".into(),
        };
        eprintln!(
            "  {:>8.0e} {:>7} {:>9.1e} {:>8.3} {:>9.3} {:>8} {:>9.4} {:>6.1}%  {verdict}",
            r.gamma,
            r.n_beta,
            r.lr,
            r.clc_reliability,
            r.coupling_reliability,
            r.draws_needed
                .map_or_else(|| "-".into(), |d| format!("{:.0}", d.ceil())),
            r.loss_rise,
            100.0 * r.constant_trusted_fraction,
        );
    }
    for warning in c.warnings() {
        eprintln!("warning: {warning}");
    }
    let s = c.per_chain(CALIBRATED_CHAINS);
    let loss = match s.loss {
        TraceLoss::Reference => " --loss reference",
        TraceLoss::Precise => " --loss precise",
        TraceLoss::Log => " --loss log",
    };
    eprintln!(
        "recommended (predicted CLC reliability {:.3}, {} draws over {CALIBRATED_CHAINS} chains): vigil sample --lr {:e} --gamma {:e} --n-beta {} --draws {} --burn-in {} --thinning 1 --chains {CALIBRATED_CHAINS} --seed {}{loss}",
        c.predicted_reliability,
        c.recommended.draws,
        s.sgld.lr,
        s.sgld.gamma,
        s.sgld.n_beta,
        s.draws,
        s.burn_in,
        s.seed
    );
}

pub fn run(args: CalibrateArgs) -> Result<ExitCode> {
    let device = default_device();
    let config = args.calibration.config(args.base.chain_config());
    config.validate()?;
    // Before the probes run for minutes: --out must take files, and calibration.json may not
    // replace an input.
    vigil_core::io::check_writable_dir(&args.out)?;
    vigil_core::io::check_outputs(
        args.input.input_paths(),
        [args.out.join(madfa::experiment::files::CALIBRATION)],
    )?;
    let (classifier, task, _) = args
        .input
        .load(config.base.trace_batch_size, false, &device)?;
    let linearised = config.base.traces == madfa::TraceForm::Linearised;
    let mut progress = Interruptible::new(ChainProgress::new(linearised));
    let run = madfa::run_calibration(
        &config,
        &classifier,
        &task,
        &args.out,
        &device,
        &mut progress,
    )?;
    if run.reused {
        eprintln!(
            "{} is a calibration of the same model, data and settings: reusing it",
            run.path.display()
        );
    }
    print_calibration(&run.calibration);
    if !run.reused {
        eprintln!("wrote {}", run.path.display());
    }
    if args.json {
        println!("{}", serde_json::to_string(&run.calibration)?);
    }
    Ok(ExitCode::SUCCESS)
}
