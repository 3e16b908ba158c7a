//! Loading a [`LlamaForCausalLm`] from a GGUF file or from Hugging Face safetensors.
//!
//! Both paths end in the same place: a map of tensors under Hugging Face's names in PyTorch's
//! layout, applied to the model by [`crate::checkpoint`] (which transposes Linear weights for
//! burn and fails unless every parameter is set and every tensor used).
//!
//! GGUF renames the tensors (`blk.0.attn_q.weight`) and, for Llama, llama.cpp's converter
//! reorders the rows of the query and key projections so that its rotary encoding can rotate
//! neighbouring pairs: within each head, row `2b + a` of the file is row `a * width/2 + b` of
//! the Hugging Face weight (`a` in {0, 1}, `b` below half the head width). The loader undoes
//! that, so the model keeps Hugging Face's rotation of the two halves of each head.

use std::collections::BTreeMap;
use std::path::Path;

use burn::store::bridge::from_data;
use burn::store::burn_pack::Tensor as PackTensor;
use burn::tensor::{Device, TensorData};

use super::LmError;
use super::gguf::Gguf;
use super::llama::{LlamaConfig, LlamaForCausalLm};
use crate::{checkpoint, memory};

/// The model sizes a GGUF file's metadata describes (`general.architecture` must be `llama`).
pub fn config_from_gguf(gguf: &Gguf) -> Result<LlamaConfig, LmError> {
    let arch = gguf.get_str("general.architecture")?;
    if arch != "llama" {
        return Err(LmError::Config(format!(
            "GGUF architecture `{arch}`: vigil reads `llama` models"
        )));
    }
    let key = |k: &str| format!("llama.{k}");
    if let Ok(scaling) = gguf.get_str(&key("rope.scaling.type"))
        && scaling != "none"
    {
        return Err(LmError::Config(format!(
            "rotary scaling `{scaling}` is not supported"
        )));
    }
    let heads = gguf.get_usize(&key("attention.head_count"))?;
    let vocab_size = match gguf.get_usize(&key("vocab_size")) {
        Ok(v) => v,
        Err(_) => gguf.tensor("token_embd.weight")?.shape[0],
    };
    let config = LlamaConfig {
        vocab_size,
        hidden_size: gguf.get_usize(&key("embedding_length"))?,
        intermediate_size: gguf.get_usize(&key("feed_forward_length"))?,
        num_hidden_layers: gguf.get_usize(&key("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: gguf
            .get_usize(&key("attention.head_count_kv"))
            .unwrap_or(heads),
        rms_norm_eps: gguf.get_f64(&key("attention.layer_norm_rms_epsilon"))?,
        rope_theta: gguf.get_f64(&key("rope.freq_base")).unwrap_or(10_000.0),
        tie_word_embeddings: gguf.tensor("output.weight").is_err(),
        max_position_embeddings: gguf.get_usize(&key("context_length"))?,
    };
    config.validate()?;
    if let Ok(rotary) = gguf.get_usize(&key("rope.dimension_count"))
        && rotary != config.head_dim()
    {
        return Err(LmError::Config(format!(
            "rotary dimension {rotary} differs from the head width {} (partial rotary \
             encodings are not supported)",
            config.head_dim()
        )));
    }
    Ok(config)
}

/// Builds the model a GGUF file holds, its weights dequantised to f32. `path` names the file
/// in errors.
pub fn load_gguf(gguf: &Gguf, path: &Path, device: &Device) -> Result<LlamaForCausalLm, LmError> {
    let config = config_from_gguf(gguf)?;
    let mut tensors = BTreeMap::new();
    for info in &gguf.tensors {
        let name = hf_name(&info.name);
        let mut values = gguf.dequantize(&info.name)?;
        if let Some(heads) = permuted_heads(&info.name, &config) {
            values = unpermute_rows(&values, &info.shape, heads)
                .map_err(|reason| LmError::Config(format!("tensor `{}`: {reason}", info.name)))?;
        }
        let tensor = from_data(
            TensorData::new(values, info.shape.clone()),
            name.clone(),
            None,
        );
        tensors.insert(name, tensor);
    }
    apply(path, &config, tensors, device)
}

/// Builds a model from Hugging Face's `config.json` and `model.safetensors` bytes. A tied
/// model's file may or may not carry `lm_head.weight`; it is ignored when tied.
pub fn load_hf_safetensors(
    config_json: &[u8],
    safetensors: Vec<u8>,
    path: &Path,
    device: &Device,
) -> Result<LlamaForCausalLm, LmError> {
    let config = LlamaConfig::from_hf_json(config_json)?;
    let mut tensors = checkpoint::safetensors_tensors(path, safetensors)?;
    if config.tie_word_embeddings {
        tensors.remove("lm_head.weight");
    }
    apply(path, &config, tensors, device)
}

/// Builds the model and applies the tensors. The sizes come from the file's metadata, a claim
/// like any other: the model is built only once the file's tensors hold exactly as many values
/// as the sizes need (and they fit in memory), so a header claiming a huge model is refused
/// without allocating it.
fn apply(
    path: &Path,
    config: &LlamaConfig,
    tensors: BTreeMap<String, PackTensor>,
    device: &Device,
) -> Result<LlamaForCausalLm, LmError> {
    let held: u64 = tensors
        .values()
        .map(|t| t.shape.num_elements() as u64)
        .sum();
    let needed = config.parameter_count();
    if needed != Some(held) {
        return Err(LmError::Config(format!(
            "the config describes {} parameters, the file's tensors hold {held}",
            needed.map_or("too many".to_string(), |n| n.to_string())
        )));
    }
    memory::check_fits("the language model's parameters", held.saturating_mul(4))
        .map_err(|e| LmError::Config(e.to_string()))?;
    let mut model = LlamaForCausalLm::new(config, device)?;
    checkpoint::apply_pytorch_tensors(path, "llama", &mut model, &tensors)?;
    Ok(model)
}

/// Hugging Face's name of a GGUF tensor of a Llama model; other names pass unchanged (and are
/// then reported as unused by the loader).
pub fn hf_name(gguf_name: &str) -> String {
    match gguf_name {
        "token_embd.weight" => return "model.embed_tokens.weight".into(),
        "output_norm.weight" => return "model.norm.weight".into(),
        "output.weight" => return "lm_head.weight".into(),
        _ => {}
    }
    let Some(rest) = gguf_name.strip_prefix("blk.") else {
        return gguf_name.into();
    };
    let Some((layer, tensor)) = rest.split_once('.') else {
        return gguf_name.into();
    };
    let part = match tensor {
        "attn_norm.weight" => "input_layernorm.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return gguf_name.into(),
    };
    format!("model.layers.{layer}.{part}")
}

/// The head count whose rows llama.cpp reordered in this tensor, if any.
fn permuted_heads(gguf_name: &str, config: &LlamaConfig) -> Option<usize> {
    if gguf_name.ends_with(".attn_q.weight") {
        Some(config.num_attention_heads)
    } else if gguf_name.ends_with(".attn_k.weight") {
        Some(config.num_key_value_heads)
    } else {
        None
    }
}

/// Undoes llama.cpp's `permute`: of a `[rows, cols]` weight with `heads` heads, row
/// `h * width + a * width/2 + b` is taken from file row `h * width + 2b + a`.
pub fn unpermute_rows(values: &[f32], shape: &[usize], heads: usize) -> Result<Vec<f32>, String> {
    let &[rows, cols] = shape else {
        return Err(format!("shape {shape:?} is not a matrix"));
    };
    if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) {
        return Err(format!(
            "{rows} rows do not split into {heads} heads of even width"
        ));
    }
    let width = rows / heads;
    let half = width / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..half {
                let to = h * width + a * half + b;
                let from = h * width + 2 * b + a;
                out[to * cols..(to + 1) * cols]
                    .copy_from_slice(&values[from * cols..(from + 1) * cols]);
            }
        }
    }
    Ok(out)
}
