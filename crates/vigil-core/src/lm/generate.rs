//! Greedy generation with a key/value cache: the prompt runs once, then each new token costs
//! one position's forward pass. Several prompts generate together, padded on the left to the
//! longest, so each of those passes reads the weights once for the whole batch (on SmolLM2 a
//! one-token pass is a matrix-vector product per weight matrix, bound by reading them).

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
    let mut out = greedy_batch(model, &[prompt], max_new, stop, device)?;
    Ok(out.pop().unwrap_or_default())
}

/// [`greedy`] for several prompts at once: padded on the left to the longest
/// ([`LlamaForCausalLm::hidden_states_left_padded`]), each prompt's continuation is the one it has
/// alone. Its logits are equal to float rounding, not bit for bit (the products run over more
/// rows), so a near-tie between two tokens could go the other way.
pub fn greedy_batch(
    model: &LlamaForCausalLm,
    prompts: &[&[u32]],
    max_new: usize,
    stop: Option<u32>,
    device: &Device,
) -> Result<Vec<Vec<u32>>, LmError> {
    let vocab = model.config.vocab_size;
    let limit = model.config.max_position_embeddings;
    for (i, prompt) in prompts.iter().enumerate() {
        let which = || {
            if prompts.len() > 1 {
                format!("prompt {i}")
            } else {
                "the prompt".to_string()
            }
        };
        if prompt.is_empty() {
            return Err(LmError::Input(format!("{} has no tokens", which())));
        }
        if let Some(&bad) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(LmError::Input(format!(
                "{}: token {bad} is outside the model's {vocab} tokens",
                which()
            )));
        }
        if prompt.len() + max_new > limit {
            return Err(LmError::Input(format!(
                "{}: {} tokens and {max_new} new ones exceed the model's {limit} positions",
                which(),
                prompt.len()
            )));
        }
    }
    let n = prompts.len();
    let mut generated = vec![Vec::with_capacity(max_new); n];
    let Some(longest) = prompts.iter().map(|p| p.len()).max() else {
        return Ok(generated);
    };
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    // Padding takes token 0, any valid id: nothing attends to it.
    let mut input: Vec<u32> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().copied()))
        .collect();
    let mut finished = vec![max_new == 0; n];
    let mut cache = KvCache::new();
    while finished.iter().any(|f| !f) {
        let rows = input.len() / n;
        let tokens = token_tensor(&input, device).reshape([n, rows]);
        let hidden = model.hidden_states_left_padded(tokens, &pads, &mut cache);
        let [_, _, width] = hidden.dims();
        // Only the last position's logits matter: projecting the whole prompt to the
        // vocabulary would cost batch x prompt x vocabulary floats for nothing.
        let last = model
            .logits(hidden.slice([0..n, rows - 1..rows, 0..width]))
            .reshape([n, vocab]);
        let next: Vec<u32> = predictions(last)
            .into_data()
            .iter::<i64>()
            .map(|t| t as u32)
            .collect();
        for ((out, done), &token) in generated.iter_mut().zip(&mut finished).zip(&next) {
            if !*done {
                out.push(token);
                *done = Some(token) == stop || out.len() == max_new;
            }
        }
        input = next;
    }
    Ok(generated)
}
