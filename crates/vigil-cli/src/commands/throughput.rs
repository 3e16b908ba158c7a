//! `vigil throughput`: images per second of the training step, the batched per-sample-loss forward
//! and the PGD step, for the small CNN (see `bench/compare.sh` for the PyTorch comparison).

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::models::Architecture;
use vigil_core::throughput::{BenchConfig, run as run_bench};

/// Measure throughput of vigil's inner loops on the small CNN (conv32-conv64-fc128,
/// 1x28x28, batch 128, random data) or another architecture. A benchmark, not a test: figures
/// depend on the machine.
#[derive(Args, Debug)]
pub struct ThroughputArgs {
    /// Architecture: small-cnn, resnet18, preact-resnet18 or preact-resnet18-halo (1x28x28
    /// inputs, 10 classes).
    #[arg(long, value_name = "NAME", default_value = "small-cnn")]
    arch: String,

    /// Channel width (small CNN: first conv, default 32; ResNets: stem, default 64).
    #[arg(long, value_name = "N")]
    width: Option<usize>,

    /// Images per batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,

    /// Untimed warm-up iterations.
    #[arg(long, default_value_t = 3)]
    warmup: usize,

    /// Timed iterations per measurement.
    #[arg(long, default_value_t = 20)]
    iters: usize,

    /// Print one JSON object on stdout instead of a table.
    #[arg(long)]
    json: bool,
}

pub fn run(args: ThroughputArgs) -> Result<ExitCode> {
    let mut architecture = Architecture::by_name(&args.arch)?;
    if let Some(width) = args.width {
        architecture = architecture.with_width(width);
    }
    let config = BenchConfig {
        architecture,
        batch: args.batch,
        warmup: args.warmup,
        iters: args.iters,
    };
    let report = run_bench(config, &default_device())?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["threads"] = rayon::current_num_threads().into();
        println!("{value}");
    } else {
        println!(
            "backend {} | {} | batch {} | {} iterations | {} threads",
            report.backend,
            report.architecture.name(),
            report.batch,
            report.iters,
            rayon::current_num_threads()
        );
        println!(
            "  training step         {:>10.0} img/s",
            report.train_step_img_per_s
        );
        println!(
            "  forward + per-sample  {:>10.0} img/s",
            report.forward_loss_img_per_s
        );
        println!(
            "  PGD step              {:>10.0} img/s",
            report.pgd_step_img_per_s
        );
        println!(
            "  HALO step (PGD-10)    {:>10.0} ID img/s",
            report.halo_step_img_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
