//! `vigil info`: what a checkpoint holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::checkpoint;

/// Describe a checkpoint: architecture, input shape, classes, normalisation, training
/// configuration, vigil version and tensors. Reads only the file header.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A safetensors file (vigil checkpoint or PyTorch state_dict).
    checkpoint: PathBuf,

    /// Print everything as JSON on stdout.
    #[arg(long)]
    json: bool,

    /// Also list every tensor with its shape.
    #[arg(long)]
    tensors: bool,
}

pub fn run(args: InfoArgs) -> Result<ExitCode> {
    let info = checkpoint::inspect(&args.checkpoint)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(ExitCode::SUCCESS);
    }
    let scalars: usize = info
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    println!("file:          {}", args.checkpoint.display());
    match &info.spec {
        Some(spec) => {
            let [c, h, w] = spec.input_shape;
            println!(
                "architecture:  {}",
                serde_json::to_string(&spec.architecture)?
            );
            println!("input:         {c}x{h}x{w}");
            println!(
                "classes:       {} ({})",
                spec.num_classes(),
                spec.class_names.join(", ")
            );
            match &spec.normalization {
                Some(n) => println!("normalisation: mean {:?} std {:?}", n.mean, n.std),
                None => println!("normalisation: none (raw [0,1] pixels)"),
            }
        }
        None => println!("architecture:  unknown (no vigil metadata; a plain state_dict?)"),
    }
    if let Some(training) = &info.training {
        println!("training:      {training}");
    }
    if let Some(version) = &info.vigil_version {
        println!("vigil version: {version}");
    }
    println!("tensors:       {} ({scalars} scalars)", info.tensors.len());
    if args.tensors {
        for t in &info.tensors {
            println!("  {:<40} {:<4} {:?}", t.name, t.dtype, t.shape);
        }
    }
    Ok(ExitCode::SUCCESS)
}
