//! `vigil info`: what a checkpoint holds.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use vigil_core::checkpoint::{self, CheckpointInfo};
use vigil_core::models::ModelSpec;

/// Describe a checkpoint: architecture, input shape, classes, normalisation, training
/// configuration, vigil version, other metadata and tensors (with their dtypes). Reads the
/// header only, no weights; a PyTorch pickle without running pickle code.
#[derive(Args, Debug)]
pub struct InfoArgs {
    /// A safetensors file (vigil checkpoint or PyTorch state_dict) or a PyTorch pickle
    /// (.pt/.pth: a state_dict, or a checkpoint dict such as BackdoorBench's attack_result.pt).
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
    println!("file:          {}", args.checkpoint.display());
    print_spec(info.spec.as_ref())?;
    if let Some(training) = &info.training {
        println!("training:      {training}");
    }
    if let Some(version) = &info.vigil_version {
        println!("vigil version: {version}");
    }
    print_other_metadata(&info);
    print_tensor_summary(&info);
    if args.tensors {
        for t in &info.tensors {
            println!("  {:<40} {:<4} {:?}", t.name, t.dtype, t.shape);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Architecture, input shape, classes and normalisation, or that the file has no vigil metadata.
fn print_spec(spec: Option<&ModelSpec>) -> Result<()> {
    let Some(spec) = spec else {
        println!("architecture:  unknown (no vigil metadata; a plain state_dict?)");
        return Ok(());
    };
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
    Ok(())
}

/// Metadata other than vigil's own (shown above): a PyTorch file's format and the plain values
/// saved beside its tensors, or what another tool wrote into a safetensors header.
fn print_other_metadata(info: &CheckpointInfo) {
    let mut other: Vec<_> = info
        .metadata
        .iter()
        .filter(|(key, _)| !key.starts_with("vigil."))
        .collect();
    other.sort();
    for (key, value) in other {
        println!("metadata:      {key} = {value}");
    }
}

/// How many tensors and scalars, by dtype, and a note when weights are converted on load.
fn print_tensor_summary(info: &CheckpointInfo) {
    let scalars: usize = info
        .tensors
        .iter()
        .map(|t| t.shape.iter().product::<usize>())
        .sum();
    let mut dtypes: Vec<(&str, usize)> = Vec::new();
    for t in &info.tensors {
        match dtypes.iter_mut().find(|(d, _)| *d == t.dtype) {
            Some((_, n)) => *n += 1,
            None => dtypes.push((&t.dtype, 1)),
        }
    }
    let dtypes = dtypes
        .iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect::<Vec<_>>()
        .join(", ");
    println!(
        "tensors:       {} ({scalars} scalars; {dtypes})",
        info.tensors.len()
    );
    if info
        .tensors
        .iter()
        .any(|t| matches!(t.dtype.as_str(), "F16" | "BF16" | "F64"))
    {
        println!("               (f16, bf16 and f64 weights are converted to f32 on load)");
    }
}
