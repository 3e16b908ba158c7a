//! Greedy generation with a key/value cache: the prompt runs once, then each new token costs
//! one position's forward pass.

use burn::tensor::Device;

use super::llama::{KvCache, LlamaForCausalLm};
use super::{LmError, token_tensor};
use crate::loss::predictions;

/// The `max_new` tokens that greedily follow `prompt` (argmax of each position's logits, ties
/// to the lowest id, by [`predictions`] as everywhere else), stopping after `stop` if it is
/// generated.
pub fn greedy(
    model: &LlamaForCausalLm,
    prompt: &[u32],
    max_new: usize,
    stop: Option<u32>,
    device: &Device,
) -> Result<Vec<u32>, LmError> {
    let vocab = model.config.vocab_size;
    if prompt.is_empty() {
        return Err(LmError::Input("the prompt has no tokens".into()));
    }
    if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
        return Err(LmError::Input(format!(
            "prompt token {bad} is outside the model's {vocab} tokens"
        )));
    }
    let limit = model.config.max_position_embeddings;
    if prompt.len() + max_new > limit {
        return Err(LmError::Input(format!(
            "{} prompt tokens and {max_new} new ones exceed the model's {limit} positions",
            prompt.len()
        )));
    }
    let mut cache = KvCache::new();
    let mut input = prompt.to_vec();
    let mut generated = Vec::with_capacity(max_new);
    while generated.len() < max_new {
        let logits = model.forward_cached(token_tensor(&input, device), &mut cache);
        let [_, positions, _] = logits.dims();
        let last = logits
            .slice([0..1, positions - 1..positions, 0..vocab])
            .reshape([1, vocab]);
        let next = predictions(last).into_scalar::<i64>() as u32;
        generated.push(next);
        if Some(next) == stop {
            break;
        }
        input = vec![next];
    }
    Ok(generated)
}
