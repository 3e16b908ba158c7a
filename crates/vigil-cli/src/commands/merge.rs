//! `vigil merge`: join trace files of single chains into one.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::madfa::LossTraces;

/// Join trace files written by `vigil sample --chain K` (one per chain, e.g. from a Slurm
/// array) into one file with the chains in index order. Refuses files whose settings, samples
/// or draw counts differ, and chains present twice. The result equals a single run of all the
/// chains, bit for bit.
#[derive(Args, Debug)]
pub struct MergeArgs {
    /// Trace files to join.
    #[arg(required = true, num_args = 2..)]
    inputs: Vec<PathBuf>,

    /// The merged trace file.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: MergeArgs) -> Result<ExitCode> {
    // Before reading anything: the merged file may not replace one of its parts.
    vigil_core::io::check_outputs(&args.inputs, [&args.out])?;
    let parts = args
        .inputs
        .iter()
        .map(|p| Ok((p.clone(), LossTraces::load(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let merged = LossTraces::merge(parts)?;
    merged.save(&args.out)?;
    eprintln!(
        "wrote {}: chains {:?}, {} draws each",
        args.out.display(),
        merged.chain_indices(),
        merged.draws()
    );
    Ok(ExitCode::SUCCESS)
}
