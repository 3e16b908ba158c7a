//! `vigil eval`: accuracy and loss of a checkpoint on a dataset split.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use vigil_core::data::image_folder::FolderLabels;
use vigil_core::data::{DatasetKind, ImageSet, Split, source};
use vigil_core::device::default_device;
use vigil_core::inference::evaluate_set;
use vigil_core::models::ModelSpec;

use super::sample::{model_folder, note_folders};
use super::{DataArgs, ModelArgs, limit, trained_on};

/// Evaluate a checkpoint: accuracy, mean loss and per-class accuracy on a split.
///
/// The dataset defaults to the one the checkpoint was trained on (from its metadata).
/// Prints a table on stderr and, with --json, one JSON object on stdout.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint written by `vigil train` (model.safetensors), or a PyTorch state_dict with
    /// --arch.
    checkpoint: PathBuf,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    data: DataArgs,

    /// Which split to evaluate.
    #[arg(long, default_value = "test", value_parser = parse_split)]
    split: Split,

    /// Evaluation batch size.
    #[arg(long, default_value_t = 512)]
    batch_size: usize,

    /// Evaluate on this many samples only (a seeded random subset).
    #[arg(long, value_name = "N")]
    limit: Option<usize>,

    /// Print the result as JSON on stdout.
    #[arg(long)]
    json: bool,
}

fn parse_split(s: &str) -> Result<Split, String> {
    match s {
        "train" => Ok(Split::Train),
        "test" => Ok(Split::Test),
        other => Err(format!("unknown split `{other}` (train or test)")),
    }
}

#[derive(Serialize)]
struct EvalReport {
    checkpoint: String,
    dataset: String,
    split: String,
    samples: usize,
    accuracy: f64,
    mean_loss: f64,
    per_class_accuracy: Vec<(String, f64)>,
    seconds: f64,
}

pub fn run(args: EvalArgs) -> Result<ExitCode> {
    let device = default_device();
    let kind = args
        .data
        .dataset
        .or_else(|| trained_on(&args.checkpoint))
        .context("the checkpoint does not say which dataset it was trained on: pass --dataset")?;
    let classifier = args.model.load(&args.checkpoint, &device)?;
    let set = args.load_split(kind, &classifier.spec)?;
    let started = std::time::Instant::now();
    let evaluation = evaluate_set(&classifier, &set, args.batch_size, &device);
    let report = EvalReport {
        checkpoint: args.checkpoint.display().to_string(),
        dataset: kind.to_string(),
        split: args.split.to_string(),
        samples: evaluation.samples,
        accuracy: evaluation.accuracy,
        mean_loss: evaluation.mean_loss,
        per_class_accuracy: evaluation.per_class_accuracy,
        seconds: started.elapsed().as_secs_f64(),
    };
    print_report(&report);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(ExitCode::SUCCESS)
}

impl EvalArgs {
    /// The split to evaluate, checked against the model `spec` and limited to --limit samples.
    /// An image folder's class folders are matched to the model's classes, its images checked
    /// against its input.
    fn load_split(&self, kind: DatasetKind, spec: &ModelSpec) -> Result<ImageSet> {
        let set = if kind == DatasetKind::ImageFolder {
            let root = source::locate(
                kind,
                self.split,
                self.data.data_dir.as_deref(),
                &source::default_data_root(),
            )?
            .join(self.split.name());
            let images = model_folder(&root, spec, FolderLabels::Required, "evaluation")?;
            note_folders(&[(self.split.name(), &images)], spec);
            images.set
        } else {
            self.data.load(kind, self.split)?
        };
        set.check_model_input(spec.input_shape, spec.num_classes())
            .with_context(|| format!("evaluating {}", self.checkpoint.display()))?;
        limit(set, self.limit, 0)
    }
}

/// Accuracy and mean loss, then each class's accuracy, on stderr.
fn print_report(report: &EvalReport) {
    eprintln!(
        "{} on {} {} ({} samples): accuracy {:.4}, mean loss {:.4}",
        report.checkpoint,
        report.dataset,
        report.split,
        report.samples,
        report.accuracy,
        report.mean_loss
    );
    for (name, acc) in &report.per_class_accuracy {
        eprintln!("  {name:>14}  {acc:.4}");
    }
}
