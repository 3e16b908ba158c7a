//! A language model on a list of prompts: each prompt's tokens, next-token losses and logits,
//! and its greedy continuation. `vigil generate` prints and saves this; `bench/peer/lm_peer.py`
//! computes the same with `transformers`, so the two can be compared token for token.
//!
//! And a language model on a text ([`evaluate_text`], `vigil eval --text`): mean next-token
//! loss and token accuracy, by the evaluation a training run reports every epoch.

use std::io::Cursor;
use std::path::Path;

use burn::tensor::{Device, TensorData};
use ndarray::Array2;
use ndarray_npy::NpzWriter;
use serde::Serialize;

use super::loss::next_token_losses;
use super::train::{TextData, TextRunError, check_sequences};
use super::{LanguageModel, LmError, greedy, token_tensor};
use crate::io::write_atomic;
use crate::progress::Progress;
use crate::train::Trainee;

/// What [`evaluate`] found for one prompt.
#[derive(Debug, Clone, Serialize)]
pub struct PromptResult {
    /// The prompt.
    pub text: String,
    /// Its token ids.
    pub ids: Vec<u32>,
    /// Next-token cross-entropy at each position but the last (`ids.len() - 1` values).
    pub losses: Vec<f32>,
    /// Their mean, if there is any.
    pub mean_loss: Option<f64>,
    /// The greedy continuation's token ids.
    pub generated: Vec<u32>,
    /// Its text.
    pub generated_text: String,
    /// The first eight logits of the last prompt position, to eyeball against another run.
    pub last_logits_head: Vec<f32>,
    /// All logits `[ids.len(), vocab]`, row-major (written to an npz, not to JSON).
    #[serde(skip)]
    pub logits: Vec<f32>,
}

/// Progress of [`evaluate`]: prompt `done` of `total` finished.
#[derive(Debug, Clone, Copy)]
pub struct PromptDone {
    /// Prompts finished.
    pub done: usize,
    /// Prompts in all.
    pub total: usize,
}

/// Runs every prompt once through the model (logits and losses) and generates `max_new` tokens
/// greedily after it, stopping at the tokenizer's end token.
pub fn evaluate(
    lm: &LanguageModel,
    prompts: &[String],
    max_new: usize,
    device: &Device,
    progress: &mut dyn Progress<PromptDone>,
) -> Result<Vec<PromptResult>, LmError> {
    let vocab = lm.model.config.vocab_size;
    let mut results = Vec::with_capacity(prompts.len());
    for (i, text) in prompts.iter().enumerate() {
        let ids = lm.tokenizer.encode(text)?;
        if ids.is_empty() {
            return Err(LmError::Input(format!("prompt {i} has no tokens")));
        }
        let tokens = token_tensor(&ids, device);
        let logits = lm.model.forward(tokens.clone());
        let losses = floats(next_token_losses(logits.clone(), tokens).into_data())?;
        let logits = floats(logits.into_data())?;
        let mean_loss = (!losses.is_empty())
            .then(|| losses.iter().map(|&l| l as f64).sum::<f64>() / losses.len() as f64);
        let generated = if max_new > 0 {
            greedy(&lm.model, &ids, max_new, lm.tokenizer.eos, device)?
        } else {
            Vec::new()
        };
        let last = (ids.len() - 1) * vocab;
        results.push(PromptResult {
            text: text.clone(),
            generated_text: lm.tokenizer.decode(&generated)?,
            ids,
            losses,
            mean_loss,
            generated,
            last_logits_head: logits[last..last + vocab.min(8)].to_vec(),
            logits,
        });
        progress.report(PromptDone {
            done: i + 1,
            total: prompts.len(),
        });
    }
    Ok(results)
}

fn floats(data: TensorData) -> Result<Vec<f32>, LmError> {
    data.try_to_vec::<f32>()
        .map_err(|e| LmError::Input(format!("reading logits: {e:?}")))
}

/// Writes every prompt's logits to an npz archive, `logits_<i>` `[tokens, vocab]` float32, the
/// layout `bench/peer/lm_peer.py` writes.
pub fn write_logits_npz(
    path: &Path,
    results: &[PromptResult],
    vocab: usize,
) -> Result<(), LmError> {
    let encode = |e: ndarray_npy::WriteNpzError| LmError::Input(format!("{}: {e}", path.display()));
    let mut buffer = Cursor::new(Vec::new());
    let mut npz = NpzWriter::new(&mut buffer);
    for (i, r) in results.iter().enumerate() {
        let array = Array2::from_shape_vec((r.ids.len(), vocab), r.logits.clone())
            .map_err(|e| LmError::Input(e.to_string()))?;
        npz.add_array(format!("logits_{i}"), &array)
            .map_err(encode)?;
    }
    npz.finish().map_err(encode)?;
    write_atomic(path, buffer.get_ref()).map_err(|e| LmError::Input(e.to_string()))
}

/// What [`evaluate_text`] found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextEvaluation {
    /// Sequences the text was cut into.
    pub sequences: usize,
    /// Predictions counted: every token of plain text after a piece's first, the response
    /// tokens (and end token) of pairs.
    pub counted_tokens: usize,
    /// Mean next-token cross-entropy over them, in nats.
    pub mean_loss: f64,
    /// Fraction of them the model predicts first.
    pub token_accuracy: f64,
}

/// `lm` on `data` cut into sequences of at most `sequence_length` tokens, in batches of
/// `batch_size`: the held-out evaluation of a training run ([`Trainee::evaluate`]), so a run's
/// reported loss and this agree for the same text, length and batch size.
pub fn evaluate_text(
    lm: &LanguageModel,
    data: &TextData,
    sequence_length: usize,
    batch_size: usize,
    device: &Device,
) -> Result<TextEvaluation, TextRunError> {
    let set = data.sequences(&lm.tokenizer, sequence_length)?;
    check_sequences(&set, &lm.model.config, "evaluation")?;
    let evaluation = lm.evaluate(&set, batch_size, device)?;
    Ok(TextEvaluation {
        sequences: set.len(),
        counted_tokens: set.counted_tokens(),
        mean_loss: evaluation.mean_loss,
        token_accuracy: evaluation.accuracy,
    })
}
