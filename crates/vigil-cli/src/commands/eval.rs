//! `vigil eval`: accuracy and loss of a checkpoint on a dataset split, or of a language model
//! on a text.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use serde::Serialize;
use vigil_core::data::image_folder::FolderLabels;
use vigil_core::data::{DatasetKind, ImageSet, Split, source};
use vigil_core::device::default_device;
use vigil_core::inference::evaluate_set;
use vigil_core::lm::LanguageModel;
use vigil_core::lm::evaluate::evaluate_text;
use vigil_core::lm::train::{TextData, held_out_of};
use vigil_core::models::ModelSpec;
use vigil_core::train::saved_state;

use super::sample::{model_folder, note_folders};
use super::{DataArgs, ModelArgs, limit, trained_on};

/// Evaluate a checkpoint: accuracy, mean loss and per-class accuracy on a split; or a language
/// model's next-token loss and token accuracy on a text (--text, --held-out-of).
///
/// The dataset defaults to the one the checkpoint was trained on (from its metadata).
/// Prints a table on stderr and, with --json, one JSON object on stdout.
#[derive(Args, Debug)]
pub struct EvalArgs {
    /// Checkpoint written by `vigil train` (model.safetensors), or a PyTorch state_dict with
    /// --arch; with --text or --held-out-of, a language model (a text run's folder, a Hugging
    /// Face folder, a GGUF or safetensors file).
    checkpoint: PathBuf,

    /// Evaluate a language model on this text: `fortunes`, `fortunes:NAMES`, `fortune-pairs`
    /// or a JSON-lines file of {"prompt", "response"} pairs (loss over the responses; over every
    /// token of plain text).
    #[arg(long, value_name = "SOURCE", conflicts_with = "held_out_of")]
    text: Option<String>,

    /// Evaluate a language model on the entries this text run held out (its text, split,
    /// sequence length and evaluation batch size): the loss the run reported, for any model,
    /// such as the one it was fine-tuned from.
    #[arg(long, value_name = "RUN")]
    held_out_of: Option<PathBuf>,

    /// Longest sequence in tokens, with --text.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 128,
        conflicts_with = "held_out_of"
    )]
    sequence_length: usize,

    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    data: DataArgs,

    /// Which split to evaluate.
    #[arg(long, default_value = "test", value_parser = parse_split)]
    split: Split,

    /// Evaluation batch size [default: 512 images; 32 sequences with --text; the run's own
    /// with --held-out-of].
    #[arg(long, value_name = "N")]
    batch_size: Option<usize>,

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
    if args.text.is_some() || args.held_out_of.is_some() {
        return run_text(&args);
    }
    let device = default_device();
    let kind = args
        .data
        .dataset
        .or_else(|| trained_on(&args.checkpoint))
        .context("the checkpoint does not say which dataset it was trained on: pass --dataset")?;
    let classifier = args.model.load(&args.checkpoint, &device)?;
    let set = args.load_split(kind, &classifier.spec)?;
    let started = std::time::Instant::now();
    let evaluation = evaluate_set(&classifier, &set, args.batch_size.unwrap_or(512), &device);
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

#[derive(Serialize)]
struct TextEvalReport {
    model: String,
    text: String,
    sequence_length: usize,
    sequences: usize,
    counted_tokens: usize,
    mean_loss: f64,
    token_accuracy: f64,
    seconds: f64,
}

/// `vigil eval --text` / `--held-out-of`: a language model on a text.
fn run_text(args: &EvalArgs) -> Result<ExitCode> {
    if args.data.dataset.is_some() {
        anyhow::bail!(
            "--text and --held-out-of evaluate a language model: --dataset does not apply"
        );
    }
    if args.limit == Some(0) {
        anyhow::bail!("--limit 0 evaluates nothing");
    }
    let device = default_device();
    let (data, text, sequence_length, batch_size) = match (&args.held_out_of, &args.text) {
        (Some(run), _) => {
            let state = saved_state(run)?
                .with_context(|| format!("{} holds no training run", run.display()))?;
            let settings = state
                .config
                .text
                .as_ref()
                .with_context(|| format!("{} is not a text run", run.display()))?;
            let data = held_out_of(&state.config)
                .with_context(|| format!("the held-out text of {}", run.display()))?;
            (
                data,
                format!("{} held out by {}", state.config.dataset, run.display()),
                settings.sequence_length,
                args.batch_size.unwrap_or(state.config.eval_batch_size),
            )
        }
        (None, Some(source)) => (
            TextData::load(source).with_context(|| format!("reading the text {source}"))?,
            source.clone(),
            args.sequence_length,
            args.batch_size.unwrap_or(32),
        ),
        (None, None) => unreachable!("run_text is called with --text or --held-out-of"),
    };
    let data = match args.limit {
        Some(n) if n < data.len() => {
            let (_, subset) = data.split(n, None, 0)?;
            subset
        }
        _ => data,
    };
    let lm = LanguageModel::load(&args.checkpoint, &device)
        .with_context(|| format!("loading {}", args.checkpoint.display()))?;
    let started = std::time::Instant::now();
    let evaluation = evaluate_text(&lm, &data, sequence_length, batch_size, &device)
        .with_context(|| format!("evaluating {} on {text}", args.checkpoint.display()))?;
    let report = TextEvalReport {
        model: args.checkpoint.display().to_string(),
        text,
        sequence_length,
        sequences: evaluation.sequences,
        counted_tokens: evaluation.counted_tokens,
        mean_loss: evaluation.mean_loss,
        token_accuracy: evaluation.token_accuracy,
        seconds: started.elapsed().as_secs_f64(),
    };
    eprintln!(
        "{} on {} ({} sequences, {} counted tokens): mean loss {:.4}, token accuracy {:.4}",
        report.model,
        report.text,
        report.sequences,
        report.counted_tokens,
        report.mean_loss,
        report.token_accuracy
    );
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
