//! A decoder-only transformer in Llama's form: RMSNorm before each block, rotary positions,
//! grouped-query attention, a SwiGLU feed-forward, and output weights tied to the embedding
//! where the checkpoint ties them (SmolLM2 does).
//!
//! Parameters carry Hugging Face's names and layouts (`model.layers.0.self_attn.q_proj.weight`
//! is `[out, in]` in the file), so a `transformers` checkpoint saved as safetensors loads as it
//! is, through the same function as every other checkpoint ([`crate::checkpoint`]); a GGUF file
//! loads by renaming its tensors and undoing llama.cpp's reordering of the query and key rows
//! ([`crate::lm::weights`]). The rotary encoding is Hugging Face's: the two halves of each head
//! are rotated against each other (`rotate_half`), not neighbouring pairs.
//!
//! The element-wise parts run as vigil's fused kernels ([`kernels::rms_norm`],
//! [`kernels::causal_softmax`], [`kernels::swiglu`]), each one pass forward and one backward
//! where burn would run several operations (docs/performance.md).
//!
//! PyTorch twin: `transformers.LlamaForCausalLM` (`bench/peer/lm_peer.py`, and the fixtures
//! of `tests/fixtures/lm/make_fixtures.py`).

use burn::module::{Module, ModuleMapper, Param};
use burn::nn::{
    Embedding, EmbeddingConfig, Initializer, Linear, LinearConfig, RmsNorm, RmsNormConfig,
};
use burn::tensor::activation::softmax;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

use super::LmError;
use crate::kernels;

/// The sizes of a Llama-style model (the fields of Hugging Face's `LlamaConfig` vigil uses).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Tokens in the vocabulary.
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the SwiGLU feed-forward.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention; equal to the query heads for plain attention).
    pub num_key_value_heads: usize,
    /// RMSNorm's epsilon.
    pub rms_norm_eps: f64,
    /// Base of the rotary frequencies.
    pub rope_theta: f64,
    /// Whether the output projection is the embedding matrix.
    pub tie_word_embeddings: bool,
    /// Longest sequence the model was trained for.
    pub max_position_embeddings: usize,
}

impl LlamaConfig {
    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Parameters of the model these sizes describe, `None` if the count overflows.
    pub fn parameter_count(&self) -> Option<u64> {
        let d = self.hidden_size as u64;
        let kv = (self.num_key_value_heads as u64).checked_mul(self.head_dim() as u64)?;
        let ffn = self.intermediate_size as u64;
        let vocab = self.vocab_size as u64;
        let attention = d
            .checked_mul(d)?
            .checked_mul(2)?
            .checked_add(d.checked_mul(kv)?.checked_mul(2)?)?;
        let block = attention
            .checked_add(d.checked_mul(ffn)?.checked_mul(3)?)?
            .checked_add(d.checked_mul(2)?)?;
        let outputs = if self.tie_word_embeddings { 1 } else { 2 };
        block
            .checked_mul(self.num_hidden_layers as u64)?
            .checked_add(vocab.checked_mul(d)?.checked_mul(outputs)?)?
            .checked_add(d)
    }

    /// Parses Hugging Face's `config.json`.
    pub fn from_hf_json(bytes: &[u8]) -> Result<Self, LmError> {
        #[derive(Deserialize)]
        struct Hf {
            vocab_size: usize,
            hidden_size: usize,
            intermediate_size: usize,
            num_hidden_layers: usize,
            num_attention_heads: usize,
            num_key_value_heads: Option<usize>,
            #[serde(default = "default_eps")]
            rms_norm_eps: f64,
            #[serde(default = "default_theta")]
            rope_theta: f64,
            #[serde(default)]
            tie_word_embeddings: bool,
            #[serde(default = "default_positions")]
            max_position_embeddings: usize,
        }
        fn default_eps() -> f64 {
            1e-6
        }
        fn default_theta() -> f64 {
            10_000.0
        }
        fn default_positions() -> usize {
            2048
        }
        let hf: Hf = serde_json::from_slice(bytes)
            .map_err(|e| LmError::Config(format!("config.json: {e}")))?;
        let config = Self {
            vocab_size: hf.vocab_size,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta,
            tie_word_embeddings: hf.tie_word_embeddings,
            max_position_embeddings: hf.max_position_embeddings,
        };
        config.validate()?;
        Ok(config)
    }

    /// Refuses sizes the model cannot be built with.
    pub fn validate(&self) -> Result<(), LmError> {
        let bad = |why: String| Err(LmError::Config(why));
        let positive = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("max_position_embeddings", self.max_position_embeddings),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} is 0"));
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "head width {} is odd (rotary positions rotate pairs)",
                self.head_dim()
            ));
        }
        if !self
            .num_attention_heads
            .is_multiple_of(self.num_key_value_heads)
        {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite()) {
            return bad(format!(
                "rms_norm_eps {} is not positive",
                self.rms_norm_eps
            ));
        }
        if !(self.rope_theta > 1.0 && self.rope_theta.is_finite()) {
            return bad(format!("rope_theta {} is not above 1", self.rope_theta));
        }
        Ok(())
    }
}

/// The causal language model: [`LlamaModel`] and the output projection.
#[derive(Module, Debug)]
pub struct LlamaForCausalLm {
    /// Embedding and blocks.
    pub model: LlamaModel,
    /// Output projection `[hidden -> vocab]`; `None` when tied to the embedding.
    pub lm_head: Option<Linear>,
    /// The sizes it was built with.
    #[module(skip)]
    pub config: LlamaConfig,
}

/// Embedding, blocks and the final norm.
#[derive(Module, Debug)]
pub struct LlamaModel {
    /// Token embedding `[vocab, hidden]`.
    pub embed_tokens: Embedding,
    /// The transformer blocks.
    pub layers: Vec<DecoderLayer>,
    /// Final RMSNorm.
    pub norm: RmsNorm,
}

/// One block: `h = x + attn(norm(x))`, `out = h + mlp(norm(h))`.
#[derive(Module, Debug)]
pub struct DecoderLayer {
    /// Grouped-query self-attention.
    pub self_attn: Attention,
    /// SwiGLU feed-forward.
    pub mlp: Mlp,
    /// RMSNorm before the attention.
    pub input_layernorm: RmsNorm,
    /// RMSNorm before the feed-forward.
    pub post_attention_layernorm: RmsNorm,
}

/// Self-attention with `num_key_value_heads` key/value heads shared by groups of query heads.
#[derive(Module, Debug)]
pub struct Attention {
    /// Query projection.
    pub q_proj: Linear,
    /// Key projection.
    pub k_proj: Linear,
    /// Value projection.
    pub v_proj: Linear,
    /// Output projection.
    pub o_proj: Linear,
}

/// `down(silu(gate(x)) * up(x))`, the gating through [`kernels::swiglu`].
#[derive(Module, Debug)]
pub struct Mlp {
    /// Gate projection.
    pub gate_proj: Linear,
    /// Up projection.
    pub up_proj: Linear,
    /// Down projection.
    pub down_proj: Linear,
}

/// Keys and values of the positions already seen, per block, for generation one token at a
/// time: `[batch, kv heads, positions, head width]` each.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<(Tensor<4>, Tensor<4>)>,
}

impl KvCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Positions held.
    pub fn len(&self) -> usize {
        self.layers.first().map_or(0, |(k, _)| k.dims()[2])
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Hugging Face's initialisation: weights from N(0, 0.02), norms at 1.
const INIT_STD: f64 = 0.02;

impl LlamaForCausalLm {
    /// A freshly initialised model (weights N(0, 0.02) as `transformers` initialises them).
    pub fn new(config: &LlamaConfig, device: &Device) -> Result<Self, LmError> {
        config.validate()?;
        let init = Initializer::Normal {
            mean: 0.0,
            std: INIT_STD,
        };
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_bias(false)
                .with_initializer(init.clone())
                .init(device)
        };
        let norm = || {
            RmsNormConfig::new(config.hidden_size)
                .with_epsilon(config.rms_norm_eps)
                .init(device)
        };
        let (d, kv) = (
            config.hidden_size,
            config.num_key_value_heads * config.head_dim(),
        );
        let layers = (0..config.num_hidden_layers)
            .map(|_| DecoderLayer {
                self_attn: Attention {
                    q_proj: linear(d, d),
                    k_proj: linear(d, kv),
                    v_proj: linear(d, kv),
                    o_proj: linear(d, d),
                },
                mlp: Mlp {
                    gate_proj: linear(d, config.intermediate_size),
                    up_proj: linear(d, config.intermediate_size),
                    down_proj: linear(config.intermediate_size, d),
                },
                input_layernorm: norm(),
                post_attention_layernorm: norm(),
            })
            .collect();
        Ok(Self {
            model: LlamaModel {
                embed_tokens: EmbeddingConfig::new(config.vocab_size, d)
                    .with_initializer(init.clone())
                    .init(device),
                layers,
                norm: norm(),
            },
            lm_head: (!config.tie_word_embeddings).then(|| linear(d, config.vocab_size)),
            config: config.clone(),
        })
    }

    /// A fresh model whose weights are a pure function of `seed`: each matrix drawn from
    /// N(0, 0.02) by its own generator seeded by `(seed, its index)`, norms at 1. Unlike
    /// [`LlamaForCausalLm::new`] it draws nothing from the device's generator, which other
    /// threads share.
    pub fn seeded(config: &LlamaConfig, seed: u64, device: &Device) -> Result<Self, LmError> {
        struct Redraw {
            seed: u64,
            index: u64,
        }
        impl ModuleMapper for Redraw {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                let (id, tensor, mapper) = param.consume();
                let dims = tensor.dims();
                // Norm weights (vectors) keep their 1s; every matrix is redrawn.
                if D < 2 {
                    return Param::from_mapped_value(id, tensor, mapper);
                }
                let mut rng = StdRng::seed_from_u64(crate::train::mix(self.seed, self.index, 0));
                self.index += 1;
                let n: usize = dims.iter().product();
                let values: Vec<f32> = (0..n)
                    .map(|_| {
                        let z: f32 = StandardNormal.sample(&mut rng);
                        z * INIT_STD as f32
                    })
                    .collect();
                let device = tensor.device();
                let require_grad = tensor.is_require_grad();
                let mut next = Tensor::<D>::from_data(TensorData::new(values, dims), &device);
                if require_grad {
                    next = next.require_grad();
                }
                Param::from_mapped_value(id, next, mapper)
            }
        }
        Ok(Self::new(config, device)?.map(&mut Redraw { seed, index: 0 }))
    }

    /// Logits `[batch, positions, vocab]` of every position of `tokens` `[batch, positions]`.
    ///
    /// Sequences of different lengths may share a batch right-padded (with any token): causal
    /// attention never lets a real position see a later padding one, so only the loss must skip
    /// the padding ([`crate::lm::loss`]).
    pub fn forward(&self, tokens: Tensor<2, Int>) -> Tensor<3> {
        self.logits(self.hidden_states(tokens, None))
    }

    /// Logits of `tokens`, which follow the positions in `cache`; the cache grows by them.
    pub fn forward_cached(&self, tokens: Tensor<2, Int>, cache: &mut KvCache) -> Tensor<3> {
        self.logits(self.hidden_states(tokens, Some(cache)))
    }

    /// The final norm's output `[batch, positions, hidden]` for `tokens` `[batch, positions]`,
    /// which follow the positions in `cache`, of sequences padded on the left: the first
    /// `pads[b]` positions of sequence `b` (counted from the start of the cache) are padding,
    /// which no other position attends to, and its real tokens take rotary positions from 0.
    /// Each sequence's outputs are then those it has alone (to float rounding: the products run
    /// over more rows), so prompts of different lengths can generate together
    /// ([`crate::lm::greedy_batch`], which projects only the last position to the vocabulary).
    /// The cache grows by `tokens`.
    pub fn hidden_states_left_padded(
        &self,
        tokens: Tensor<2, Int>,
        pads: &[usize],
        cache: &mut KvCache,
    ) -> Tensor<3> {
        self.padded_hidden_states(tokens, Some(cache), pads)
    }

    /// The final norm's output `[batch, positions, hidden]`, the input of the output projection.
    pub fn hidden_states(&self, tokens: Tensor<2, Int>, cache: Option<&mut KvCache>) -> Tensor<3> {
        self.padded_hidden_states(tokens, cache, &[])
    }

    /// [`Self::hidden_states`] with the left padding of [`Self::hidden_states_left_padded`]
    /// (`pads` empty: none).
    fn padded_hidden_states(
        &self,
        tokens: Tensor<2, Int>,
        cache: Option<&mut KvCache>,
        pads: &[usize],
    ) -> Tensor<3> {
        let [_, positions] = tokens.dims();
        let device = tokens.device();
        let start = cache.as_ref().map_or(0, |c| c.len());
        let rope = Rope::padded(&self.config, start, positions, pads, &device);
        let mut cache = cache;
        let mut x = self.model.embed_tokens.forward(tokens);
        for (i, layer) in self.model.layers.iter().enumerate() {
            let past = cache.as_ref().and_then(|c| c.layers.get(i).cloned());
            let (out, kv) = layer.forward_kv(x, &rope, &self.config, past);
            x = out;
            if let Some(cache) = cache.as_deref_mut() {
                match cache.layers.get_mut(i) {
                    Some(slot) => *slot = kv,
                    None => cache.layers.push(kv),
                }
            }
        }
        rms_norm(&self.model.norm, x)
    }

    /// The residual stream entering block `blocks`, `[batch, positions, hidden]` (the
    /// embedding's output when 0): with [`Self::forward_from`], the forward pass in two parts,
    /// so a frozen prefix's output can be computed once and reused.
    pub fn stream_after(&self, tokens: Tensor<2, Int>, blocks: usize) -> Tensor<3> {
        let [_, positions] = tokens.dims();
        let rope = Rope::new(&self.config, 0, positions, &tokens.device());
        let mut x = self.model.embed_tokens.forward(tokens);
        for layer in self.model.layers.iter().take(blocks) {
            x = layer.forward_kv(x, &rope, &self.config, None).0;
        }
        x
    }

    /// Logits from `stream`, the residual stream entering block `from` (as
    /// [`Self::stream_after`] gives it): the remaining blocks, the final norm, the output
    /// projection.
    pub fn forward_from(&self, stream: Tensor<3>, from: usize) -> Tensor<3> {
        self.logits(self.hidden_from(stream, from))
    }

    /// The final norm's output from `stream`, the residual stream entering block `from`: the
    /// remaining blocks and the final norm, without the output projection.
    pub fn hidden_from(&self, stream: Tensor<3>, from: usize) -> Tensor<3> {
        let [_, positions, _] = stream.dims();
        let rope = Rope::new(&self.config, 0, positions, &stream.device());
        let mut x = stream;
        for layer in self.model.layers.iter().skip(from) {
            x = layer.forward_kv(x, &rope, &self.config, None).0;
        }
        rms_norm(&self.model.norm, x)
    }

    /// The residual stream after every block, `[batch, positions, hidden]` each, and the final
    /// norm's output last: the activations latent-space detectors read, layer by layer.
    pub fn residual_streams(&self, tokens: Tensor<2, Int>) -> Vec<Tensor<3>> {
        let [_, positions] = tokens.dims();
        let rope = Rope::new(&self.config, 0, positions, &tokens.device());
        let mut x = self.model.embed_tokens.forward(tokens);
        let mut streams = Vec::with_capacity(self.model.layers.len() + 1);
        for layer in &self.model.layers {
            x = layer.forward_kv(x, &rope, &self.config, None).0;
            streams.push(x.clone());
        }
        streams.push(rms_norm(&self.model.norm, x));
        streams
    }

    /// Output projection of the final hidden states.
    pub fn logits(&self, hidden: Tensor<3>) -> Tensor<3> {
        match &self.lm_head {
            Some(head) => head.forward(hidden),
            None => {
                // As one 2-D product with the transposed embedding as a strided view: giving
                // the transpose a batch axis instead would copy the whole vocab x hidden matrix
                // on every call (10% of a SmolLM2 forward, measured).
                let [batch, positions, width] = hidden.dims();
                let weight = self.model.embed_tokens.weight.val();
                hidden
                    .reshape([batch * positions, width])
                    .matmul(weight.transpose())
                    .reshape([batch, positions, self.config.vocab_size])
            }
        }
    }
}

impl DecoderLayer {
    /// The block's output and its keys and values (the past ones and this call's).
    fn forward_kv(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        config: &LlamaConfig,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let (attended, kv) = self.self_attn.forward(
            rms_norm(&self.input_layernorm, x.clone()),
            rope,
            config,
            past,
        );
        let h = x + attended;
        let out = h.clone()
            + self
                .mlp
                .forward(rms_norm(&self.post_attention_layernorm, h));
        (out, kv)
    }
}

impl Attention {
    fn forward(
        &self,
        x: Tensor<3>,
        rope: &Rope,
        config: &LlamaConfig,
        past: Option<(Tensor<4>, Tensor<4>)>,
    ) -> (Tensor<3>, (Tensor<4>, Tensor<4>)) {
        let [batch, positions, hidden] = x.dims();
        let (heads, kv_heads, width) = (
            config.num_attention_heads,
            config.num_key_value_heads,
            config.head_dim(),
        );
        let split =
            |t: Tensor<3>, h: usize| t.reshape([batch, positions, h, width]).swap_dims(1, 2);
        let q = rope.apply(split(self.q_proj.forward(x.clone()), heads));
        let mut k = rope.apply(split(self.k_proj.forward(x.clone()), kv_heads));
        let mut v = split(self.v_proj.forward(x), kv_heads);
        if let Some((past_k, past_v)) = past {
            k = Tensor::cat(vec![past_k, k], 2);
            v = Tensor::cat(vec![past_v, v], 2);
        }
        let seen = k.dims()[2];
        let group = heads / kv_heads;
        // Query head h reads key/value head h / group (transformers' `repeat_kv`). Rather than
        // copying each key/value head `group` times, the `group` query heads of one key/value
        // head are stacked along the positions: `[batch, kv heads, group x positions, width]`,
        // a free reshape, and every row still meets only its own head's keys.
        let q = q.reshape([batch, kv_heads, group * positions, width]);
        let scores = q.matmul(k.clone().swap_dims(2, 3));
        let divisor = (width as f64).sqrt();
        let weights = if rope.pads.iter().all(|&p| p == 0) {
            // Causal attention alone: the mask, the scaling and the softmax in one kernel.
            kernels::causal_softmax(scores, positions, divisor)
        } else {
            let mask = attention_mask(positions, seen, group, &rope.pads, &scores.device());
            let scores =
                (scores / divisor).mask_fill(mask.unsqueeze_dim::<4>(1), f32::NEG_INFINITY);
            softmax(scores, 3)
        };
        let out = weights
            .matmul(v.clone())
            .reshape([batch, heads, positions, width])
            .swap_dims(1, 2)
            .reshape([batch, positions, hidden]);
        (self.o_proj.forward(out), (k, v))
    }
}

/// `true` where a query may not see a key, `[sequences, groups x queries, keys]`, for a batch of
/// left-padded sequences, `pads` holding each one's padding ([`Rope::pads`]): query `i` (the last
/// `queries` of `keys` positions) sees keys `j <= i`, for `groups` query heads stacked along the
/// rows, and no key among its sequence's first `pads[b]` (padding) but its own, so a padding
/// query still attends to something and stays finite. Batches without padding take
/// [`kernels::causal_softmax`], which masks as it goes.
fn attention_mask(
    queries: usize,
    keys: usize,
    groups: usize,
    pads: &[usize],
    device: &Device,
) -> Tensor<3, burn::tensor::Bool> {
    let offset = keys - queries;
    let masked: Vec<bool> = pads
        .iter()
        .flat_map(|&pad| {
            (0..groups * queries).flat_map(move |row| {
                let i = row % queries + offset;
                (0..keys).map(move |j| j > i || (j < pad && j != i))
            })
        })
        .collect();
    Tensor::from_data(
        TensorData::new(masked, [pads.len(), groups * queries, keys]),
        device,
    )
}

/// `norm` applied to `x` through vigil's fused kernel ([`kernels::rms_norm`]), which computes
/// what burn's `RmsNorm::forward` does in one pass each way.
fn rms_norm<const D: usize>(norm: &RmsNorm, x: Tensor<D>) -> Tensor<D> {
    kernels::rms_norm(x, norm.gamma.val(), norm.epsilon)
}

impl Mlp {
    fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        self.down_proj.forward(kernels::swiglu(
            self.gate_proj.forward(x.clone()),
            self.up_proj.forward(x),
        ))
    }
}

/// Rotary tables for a run of positions: `cos` and `sin` `[sequences, positions, head width]`,
/// each half of the width repeating the frequencies, as `transformers` builds them.
struct Rope {
    /// `[sequences, positions, width]`, one row of `pads` each.
    cos: Tensor<3>,
    sin: Tensor<3>,
    /// Each sequence's left padding, for the attention mask; `[0]` for a batch without
    /// padding, whose sequences all share one table.
    pads: Vec<usize>,
}

impl Rope {
    fn new(config: &LlamaConfig, start: usize, positions: usize, device: &Device) -> Self {
        Self::padded(config, start, positions, &[], device)
    }

    /// The tables for positions `start..start + positions` of sequences whose first `pads[b]`
    /// positions are padding: sequence `b`'s position `p` is its token `p - pads[b]` (padding
    /// positions take 0; the mask keeps them apart).
    fn padded(
        config: &LlamaConfig,
        start: usize,
        positions: usize,
        pads: &[usize],
        device: &Device,
    ) -> Self {
        let width = config.head_dim();
        let half = width / 2;
        // transformers computes the inverse frequencies and their products with the positions
        // in float32; doing the same keeps long positions' angles equal to its own.
        let inverse: Vec<f32> = (0..half)
            .map(|i| (1.0 / config.rope_theta.powf((2 * i) as f64 / width as f64)) as f32)
            .collect();
        let pads = if pads.is_empty() {
            vec![0]
        } else {
            pads.to_vec()
        };
        let mut cos = Vec::with_capacity(pads.len() * positions * width);
        let mut sin = Vec::with_capacity(cos.capacity());
        for &pad in &pads {
            for p in start..start + positions {
                let p = p.saturating_sub(pad);
                let angles: Vec<f32> = inverse.iter().map(|f| p as f32 * f).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|&a| (a as f64).cos() as f32));
                    sin.extend(angles.iter().map(|&a| (a as f64).sin() as f32));
                }
            }
        }
        let shape = [pads.len(), positions, width];
        let table = |v: Vec<f32>| Tensor::from_data(TensorData::new(v, shape), device);
        Self {
            cos: table(cos),
            sin: table(sin),
            pads,
        }
    }

    /// `x * cos + rotate_half(x) * sin` for `x` `[batch, heads, positions, width]`, with
    /// `rotate_half([a, b]) = [-b, a]` over the two halves of the width.
    fn apply(&self, x: Tensor<4>) -> Tensor<4> {
        let [batch, heads, positions, width] = x.dims();
        let half = width / 2;
        let first = x.clone().slice([0..batch, 0..heads, 0..positions, 0..half]);
        let second = x
            .clone()
            .slice([0..batch, 0..heads, 0..positions, half..width]);
        let rotated = Tensor::cat(vec![second.neg(), first], 3);
        x * self.cos.clone().unsqueeze_dim::<4>(1)
            + rotated * self.sin.clone().unsqueeze_dim::<4>(1)
    }
}

#[cfg(test)]
mod tests;
