use super::*;
use crate::device::default_device;
use crate::lm::gguf::Gguf;
use crate::lm::loss::next_token_losses;
use crate::lm::{greedy, greedy_batch, weights};
use std::path::{Path, PathBuf};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/lm")
}

fn tokens(ids: &[i64], device: &Device) -> Tensor<2, Int> {
    Tensor::from_data(TensorData::new(ids.to_vec(), [1, ids.len()]), device)
}

fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data().try_to_vec::<f32>().unwrap()
}

fn tiny_from_gguf(device: &Device) -> LlamaForCausalLm {
    let path = fixtures().join("tiny_llama.gguf");
    let gguf = Gguf::open(&path).unwrap();
    weights::load_gguf(&gguf, &path, device).unwrap()
}

/// The tiny random Llama (grouped-query attention, tied embeddings) exported to GGUF with
/// llama.cpp's row order: logits, next-token losses and greedy continuations equal
/// `transformers`' on the same weights (`tests/fixtures/lm/make_fixtures.py`).
#[test]
fn tiny_llama_from_gguf_matches_transformers() {
    let device = default_device();
    let model = tiny_from_gguf(&device);
    assert!(model.config.tie_word_embeddings);
    assert!(model.config.num_key_value_heads < model.config.num_attention_heads);
    let expected: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixtures().join("tiny_llama.json")).unwrap())
            .unwrap();
    let cases = expected["sequences"].as_array().unwrap();
    assert!(cases.len() >= 3);
    for case in cases {
        let ids: Vec<i64> = case["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_i64().unwrap())
            .collect();
        let logits = model.forward(tokens(&ids, &device));
        let got = values(logits.clone());
        let want: Vec<f64> = case["logits"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|row| row.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()))
            .collect();
        assert_eq!(got.len(), want.len());
        let worst = got
            .iter()
            .zip(&want)
            .map(|(&g, &w)| (g as f64 - w).abs())
            .fold(0.0, f64::max);
        assert!(
            worst < 1e-5,
            "{} tokens: logits differ by {worst}",
            ids.len()
        );
        if ids.len() > 1 {
            let losses = values(next_token_losses(logits, tokens(&ids, &device)));
            let want: Vec<f64> = case["losses"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect();
            for (g, w) in losses.iter().zip(&want) {
                assert!((*g as f64 - w).abs() < 1e-5, "{losses:?} vs {want:?}");
            }
        }
        let prompt: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let continuation = greedy(&model, &prompt, 8, None, &device).unwrap();
        let want: Vec<u32> = case["greedy"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(continuation, want, "greedy continuation of {ids:?}");
    }
}

/// The same model from Hugging Face's safetensors and config.json gives the GGUF's logits.
#[test]
fn tiny_llama_from_hf_safetensors_equals_the_gguf() {
    let device = default_device();
    let dir = fixtures();
    let path = dir.join("tiny_llama.safetensors");
    let model = weights::load_hf_safetensors(
        &std::fs::read(dir.join("tiny_llama_config.json")).unwrap(),
        std::fs::read(&path).unwrap(),
        &path,
        &device,
    )
    .unwrap();
    let reference = tiny_from_gguf(&device);
    // GGUF stores epsilon as f32 (1e-5 reads back as 9.9999997e-6); the rest is equal.
    let mut config = model.config.clone();
    assert!((config.rms_norm_eps - reference.config.rms_norm_eps).abs() < 1e-12);
    config.rms_norm_eps = reference.config.rms_norm_eps;
    assert_eq!(config, reference.config);
    let ids = [3, 14, 15, 9, 26, 5, 35];
    let a = values(model.forward(tokens(&ids, &device)));
    let b = values(reference.forward(tokens(&ids, &device)));
    let worst = a
        .iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-6, "{worst}");
}

fn small_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 23,
        hidden_size: 24,
        intermediate_size: 40,
        num_hidden_layers: 2,
        num_attention_heads: 6,
        num_key_value_heads: 2,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: false,
        max_position_embeddings: 64,
    }
}

#[test]
fn the_cache_gives_the_full_forward_and_later_tokens_never_change_earlier_logits() {
    let device = default_device();
    let model = LlamaForCausalLm::new(&small_config(), &device).unwrap();
    let ids = [1, 7, 3, 22, 0, 5, 9];
    let full = values(model.forward(tokens(&ids, &device)));
    // Prompt of 4, then one token at a time, then two at once.
    let mut cache = KvCache::new();
    let mut pieces = values(model.forward_cached(tokens(&ids[..4], &device), &mut cache));
    pieces.extend(values(
        model.forward_cached(tokens(&ids[4..5], &device), &mut cache),
    ));
    pieces.extend(values(
        model.forward_cached(tokens(&ids[5..], &device), &mut cache),
    ));
    assert_eq!(cache.len(), ids.len());
    let worst = full
        .iter()
        .zip(&pieces)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    assert!(worst < 1e-5, "{worst}");
    // Changing the last token leaves every earlier position's logits as they were.
    let mut other = ids;
    other[6] = 4;
    let changed = values(model.forward(tokens(&other, &device)));
    let vocab = model.config.vocab_size;
    assert_eq!(&changed[..6 * vocab], &full[..6 * vocab]);
    assert_ne!(&changed[6 * vocab..], &full[6 * vocab..]);
    // A right-padded batch gives each sequence's own logits on its real positions.
    let batch = Tensor::<2, Int>::from_data(
        TensorData::new(vec![1i64, 7, 3, 22, 2, 8, 0, 0], [2, 4]),
        &device,
    );
    let both = values(model.forward(batch));
    let alone = values(model.forward(tokens(&[2, 8], &device)));
    assert!(
        both[..4 * vocab]
            .iter()
            .zip(&full[..4 * vocab])
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );
    assert!(
        both[4 * vocab..6 * vocab]
            .iter()
            .zip(&alone)
            .all(|(a, b)| (a - b).abs() < 1e-5)
    );
}

/// The forward pass in two parts, at every split point, is the forward pass.
/// Prompts of different lengths padded on the left and run together: every real position's
/// logits are the ones the prompt gives alone (prompt pass and cached steps), and the batched
/// greedy continuations equal the one-prompt ones, stop token included.
#[test]
fn left_padded_prompts_give_their_own_logits_and_continuations() {
    let device = default_device();
    let model = tiny_from_gguf(&device);
    let prompts: [&[u32]; 3] = [&[5, 9, 2, 11, 7], &[3], &[8, 1, 4]];
    let longest = 5;
    let pads: Vec<usize> = prompts.iter().map(|p| longest - p.len()).collect();
    let padded: Vec<i64> = prompts
        .iter()
        .zip(&pads)
        .flat_map(|(p, &pad)| std::iter::repeat_n(0, pad).chain(p.iter().map(|&t| i64::from(t))))
        .collect();
    let batch = Tensor::from_data(TensorData::new(padded, [3, longest]), &device);
    let mut cache = KvCache::new();
    let logits = model.logits(model.hidden_states_left_padded(batch, &pads, &mut cache));
    let vocab = model.config.vocab_size;
    let step: Vec<i64> = vec![6, 6, 6];
    let next = model.logits(model.hidden_states_left_padded(
        Tensor::from_data(TensorData::new(step, [3, 1]), &device),
        &pads,
        &mut cache,
    ));
    let (all, next) = (values(logits), values(next));
    for (b, prompt) in prompts.iter().enumerate() {
        let mut alone: Vec<i64> = prompt.iter().map(|&t| i64::from(t)).collect();
        alone.push(6);
        let want = values(model.forward(tokens(&alone, &device)));
        let got: Vec<f32> = all[(b * longest + pads[b]) * vocab..(b + 1) * longest * vocab]
            .iter()
            .chain(&next[b * vocab..(b + 1) * vocab])
            .copied()
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "prompt {b}: {g} vs {w}"
            );
        }
    }
    for stop in [None, Some(3)] {
        let together = greedy_batch(&model, &prompts, 6, stop, &device).unwrap();
        for (prompt, got) in prompts.iter().zip(&together) {
            assert_eq!(got, &greedy(&model, prompt, 6, stop, &device).unwrap());
        }
    }
    assert!(greedy_batch(&model, &[&[1], &[]], 2, None, &device).is_err());
    assert_eq!(
        greedy_batch(&model, &[&[1], &[2, 3]], 0, None, &device).unwrap(),
        vec![Vec::<u32>::new(); 2]
    );
}

#[test]
fn the_stream_entering_a_block_and_the_rest_of_the_pass_give_the_forward() {
    let device = default_device();
    let model = LlamaForCausalLm::new(&small_config(), &device).unwrap();
    let ids = [1, 7, 3, 22, 0, 5, 9];
    let full = values(model.forward(tokens(&ids, &device)));
    for from in 0..=model.model.layers.len() {
        let stream = model.stream_after(tokens(&ids, &device), from);
        assert_eq!(stream.dims(), [1, ids.len(), model.config.hidden_size]);
        assert_eq!(
            values(model.forward_from(stream, from)),
            full,
            "split at {from}"
        );
    }
}

#[test]
fn bad_configs_and_prompts_are_errors() {
    let device = default_device();
    let mut config = small_config();
    config.num_key_value_heads = 4;
    assert!(LlamaForCausalLm::new(&config, &device).is_err());
    let mut config = small_config();
    config.hidden_size = 25;
    assert!(config.validate().is_err());
    let mut config = small_config();
    config.rope_theta = f64::NAN;
    assert!(config.validate().is_err());
    let model = LlamaForCausalLm::new(&small_config(), &device).unwrap();
    assert!(greedy(&model, &[], 3, None, &device).is_err());
    assert!(greedy(&model, &[23], 3, None, &device).is_err());
    assert!(greedy(&model, &[1; 60], 10, None, &device).is_err());
    assert_eq!(greedy(&model, &[1, 2], 5, None, &device).unwrap().len(), 5);
}

/// `unpermute_rows` inverts llama.cpp's `permute` (reshape(heads, 2, width/2, cols),
/// swap axes 1 and 2), written here independently on row indices.
#[test]
fn unpermuting_inverts_llama_cpp_permute() {
    let (heads, width, cols) = (3, 8, 2);
    let rows = heads * width;
    let hf: Vec<f32> = (0..rows * cols).map(|i| i as f32).collect();
    // permute: file[h, b, a] = hf[h, a, b] for a < 2, b < width / 2.
    let mut file = vec![0.0; hf.len()];
    for h in 0..heads {
        for a in 0..2 {
            for b in 0..width / 2 {
                let hf_row = h * width + a * (width / 2) + b;
                let file_row = h * width + b * 2 + a;
                file[file_row * cols..(file_row + 1) * cols]
                    .copy_from_slice(&hf[hf_row * cols..(hf_row + 1) * cols]);
            }
        }
    }
    assert_ne!(file, hf);
    assert_eq!(
        weights::unpermute_rows(&file, &[rows, cols], heads).unwrap(),
        hf
    );
    assert!(weights::unpermute_rows(&file, &[rows, cols], 5).is_err());
    assert!(weights::unpermute_rows(&file, &[rows * cols], 3).is_err());
}

#[test]
fn gguf_names_map_to_hugging_face_names() {
    assert_eq!(
        weights::hf_name("blk.12.attn_q.weight"),
        "model.layers.12.self_attn.q_proj.weight"
    );
    assert_eq!(
        weights::hf_name("blk.0.ffn_norm.weight"),
        "model.layers.0.post_attention_layernorm.weight"
    );
    assert_eq!(
        weights::hf_name("token_embd.weight"),
        "model.embed_tokens.weight"
    );
    assert_eq!(weights::hf_name("rope_freqs.weight"), "rope_freqs.weight");
}

/// A config claiming a model far larger than the file's tensors is refused before the model is
/// built (so before gigabytes are allocated), naming both counts.
#[test]
fn a_config_larger_than_its_tensors_is_refused_before_building() {
    let device = default_device();
    let dir = fixtures();
    let path = dir.join("tiny_llama.safetensors");
    let mut config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("tiny_llama_config.json")).unwrap())
            .unwrap();
    config["hidden_size"] = serde_json::json!(1 << 20);
    config["num_hidden_layers"] = serde_json::json!(1 << 20);
    let err = weights::load_hf_safetensors(
        config.to_string().as_bytes(),
        std::fs::read(&path).unwrap(),
        &path,
        &device,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("parameters"), "{err}");
    let tiny = tiny_from_gguf(&device);
    assert_eq!(
        tiny.config.parameter_count(),
        Some(tiny.num_params() as u64)
    );
}
