//! `vigil throughput`: images per second of the training step, the batched per-sample-loss forward
//! and the PGD step, for the small CNN (see `bench/compare.sh` for the PyTorch comparison).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::lm::LanguageModel;
use vigil_core::models::Architecture;
use vigil_core::throughput::{BenchConfig, LmBenchConfig, run as run_bench};

/// Measure throughput of vigil's inner loops on the small CNN (conv32-conv64-fc128,
/// 1x28x28, batch 128, random data) or another architecture and input shape. A benchmark, not a test: figures
/// depend on the machine.
#[derive(Args, Debug)]
pub struct ThroughputArgs {
    /// Architecture: small-cnn, resnet18, preact-resnet18 or preact-resnet18-halo (10 classes).
    #[arg(long, value_name = "NAME", default_value = "small-cnn")]
    arch: String,

    /// Channel width (small CNN: first conv, default 32; ResNets: stem, default 64).
    #[arg(long, value_name = "N")]
    width: Option<usize>,

    /// Input shape (3,32,32 is BackdoorBench's CIFAR shape).
    #[arg(
        long,
        value_delimiter = ',',
        value_name = "C,H,W",
        default_value = "1,28,28"
    )]
    input_shape: Vec<usize>,

    /// Skip the HALO step (by far the slowest measurement).
    #[arg(long)]
    no_halo: bool,

    /// Images per batch (sequences with --lm).
    #[arg(long, default_value_t = 128)]
    batch: usize,

    /// Measure a language model instead (a .gguf file or a Hugging Face folder): forward with
    /// per-sequence mean next-token loss, and a localized SGLD step over every weight, in
    /// tokens per second (`bench/peer/bench_lm_torch.py` is the PyTorch side).
    #[arg(long, value_name = "MODEL")]
    lm: Option<std::path::PathBuf>,

    /// Tokens per sequence (with --lm).
    #[arg(long, default_value_t = 128)]
    seq_len: usize,

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
    if let Some(path) = &args.lm {
        return run_lm(&args, path);
    }
    let mut architecture = Architecture::by_name(&args.arch)?;
    if let Some(width) = args.width {
        architecture = architecture.with_width(width);
    }
    let input_shape = <[usize; 3]>::try_from(args.input_shape.as_slice())
        .map_err(|_| anyhow::anyhow!("--input-shape takes three sizes: channels,height,width"))?;
    let config = BenchConfig {
        architecture,
        input_shape,
        halo: !args.no_halo,
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
        let [c, h, w] = report.input_shape;
        println!(
            "backend {} | {} on {c}x{h}x{w} ({:.4} GFLOP per image forward) | batch {} | {} iterations | {} threads",
            report.backend,
            report.architecture.name(),
            report.forward_gflop_per_image,
            report.batch,
            report.iters,
            rayon::current_num_threads()
        );
        println!(
            "  training step         {:>10.0} img/s  {:>7.1} GFLOP/s",
            report.train_step_img_per_s, report.train_step_gflop_per_s
        );
        println!(
            "  forward + per-sample  {:>10.0} img/s  {:>7.1} GFLOP/s",
            report.forward_loss_img_per_s, report.forward_loss_gflop_per_s
        );
        println!(
            "  PGD step              {:>10.0} img/s  {:>7.1} GFLOP/s",
            report.pgd_step_img_per_s, report.pgd_step_gflop_per_s
        );
        if let Some(halo) = report.halo_step_img_per_s {
            println!("  HALO step (PGD-10)    {halo:>10.0} ID img/s");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn run_lm(args: &ThroughputArgs, path: &std::path::Path) -> Result<ExitCode> {
    let device = default_device();
    let lm = LanguageModel::load(path, &device)
        .with_context(|| format!("loading {}", path.display()))?;
    let config = LmBenchConfig {
        batch: args.batch,
        seq_len: args.seq_len,
        warmup: args.warmup,
        iters: args.iters,
    };
    let report = vigil_core::throughput::run_lm(&config, lm.model, &device)?;
    if args.json {
        let mut value = serde_json::to_value(&report)?;
        value["threads"] = rayon::current_num_threads().into();
        println!("{value}");
    } else {
        println!(
            "backend {} | {} ({} blocks, width {}) | {} x {} tokens | {} iterations | {} threads",
            report.backend,
            path.display(),
            report.model.num_hidden_layers,
            report.model.hidden_size,
            report.batch,
            report.seq_len,
            report.iters,
            rayon::current_num_threads()
        );
        println!(
            "  forward + per-sample loss {:>10.0} tokens/s",
            report.forward_loss_tokens_per_s
        );
        println!(
            "  SGLD step                 {:>10.0} tokens/s",
            report.sgld_step_tokens_per_s
        );
    }
    Ok(ExitCode::SUCCESS)
}
