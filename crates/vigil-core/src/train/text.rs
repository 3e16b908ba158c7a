//! The settings of a language-model training run, recorded in its [`super::TrainConfig`]:
//! plain data, as [`super::robust`] is for robust runs. The training itself is in
//! [`crate::lm::train`].

use serde::{Deserialize, Serialize};

use crate::lm::LlamaConfig;
use crate::lm::backdoor::TextPoisoning;

/// What a text run records about its model and data, so it resumes with the same.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TextSettings {
    /// Longest training sequence, in tokens (longer texts are cut, longer pairs shortened).
    pub sequence_length: usize,
    /// Where the run starts: a model (GGUF file or Hugging Face folder, a vigil text run
    /// included) to fine-tune, or `None` for a fresh model of `model`'s sizes.
    pub init: Option<String>,
    /// The fresh model's sizes (its vocabulary is the tokenizer trained on the data); `None`
    /// when fine-tuning.
    pub model: Option<LlamaConfig>,
    /// Tokens of the tokenizer a fresh run trains on its data.
    pub vocab_size: usize,
    /// Held-out entries, drawn with the run's seed, to evaluate on after every epoch (clean:
    /// the poisoning applies to the training part only).
    pub eval_size: usize,
    /// A backdoor planted in the training pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poisoning: Option<TextPoisoning>,
}
