//! `vigil train`: train a classifier, evaluating and checkpointing after every epoch.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::data::Split;
use vigil_core::device::default_device;

use super::training::{TrainingArgs, data_selection, drive, open_run};
use super::{DataArgs, limit};

/// Train a classifier with SGD and write a run folder.
///
/// The folder gets model.safetensors (PyTorch-layout weights with vigil metadata, rewritten
/// after every epoch), metrics.jsonl (one JSON line per epoch, also printed on stdout) and
/// resume/ (what --resume needs). Ctrl-C finishes the current batch, checkpoints and exits;
/// `vigil train --resume --out DIR` continues exactly where it stopped.
///
/// Defaults train the small CNN (conv32-conv64-fc128) on Fashion-MNIST: SGD with Nesterov
/// momentum 0.9, weight decay 5e-4, batch 128, one-cycle cosine schedule peaking at 0.05.
#[derive(Args, Debug)]
pub struct TrainArgs {
    #[command(flatten)]
    data: DataArgs,

    /// Run folder to write (created if missing).
    #[arg(long, short, value_name = "DIR")]
    out: PathBuf,

    /// Continue the run in --out from its last checkpoint with its own configuration (other
    /// options are ignored). Without --resume, running the same command again on the same
    /// folder also continues it; a different configuration is refused.
    #[arg(long)]
    resume: bool,

    #[command(flatten)]
    training: TrainingArgs,
}

pub fn run(args: TrainArgs) -> Result<ExitCode> {
    let device = default_device();
    // Reject bad options before spending time on data.
    args.training.architecture()?;
    let (kind, train_limit, test_limit, seed) =
        data_selection(&args.out, args.resume, args.data.dataset, &args.training)?;
    let train_set = limit(args.data.load(kind, Split::Train)?, train_limit, seed)?;
    let test_set = limit(args.data.load(kind, Split::Test)?, test_limit, seed)?;
    let mut run = open_run(
        &args.out,
        args.resume,
        &args.training,
        kind,
        &train_set,
        &device,
    )?;
    drive(&mut run, &train_set, &test_set, &args.out, &device)
}
