//! Greedy generation with a key/value cache: the prompt runs once, then each new token costs
//! one position's forward pass.

use burn::tensor::{Device, Int, Tensor, TensorData};

use super::LmError;
use super::llama::{KvCache, LlamaForCausalLm};

/// The `max_new` tokens that greedily follow `prompt` (argmax of each position's logits,
/// ties to the lowest id), stopping after `stop` if it is generated.
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
        let tokens = Tensor::<2, Int>::from_data(
            TensorData::new(
                input.iter().map(|&t| t as i64).collect::<Vec<_>>(),
                [1, input.len()],
            ),
            device,
        );
        let logits = model.forward_cached(tokens, &mut cache);
        let [_, positions, _] = logits.dims();
        let last: Vec<f32> = logits
            .slice([0..1, positions - 1..positions, 0..vocab])
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| LmError::Input(format!("{e:?}")))?;
        let next = argmax(&last);
        generated.push(next);
        if Some(next) == stop {
            break;
        }
        input = vec![next];
    }
    Ok(generated)
}

/// Index of the largest value, the first of equal ones (as `torch.argmax` on CPU).
fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &v) in values.iter().enumerate() {
        if v > values[best] {
            best = i;
        }
    }
    best as u32
}
