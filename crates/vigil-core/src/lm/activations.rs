//! Activations of a language model that latent-space detectors read: the residual stream at a
//! prompt's last token after every block (and after the final norm), and Gaussians fitted to
//! them (Mahalanobis detection, and the obfuscation loss that trains a backdoor to evade it).

use burn::tensor::{Device, Tensor, TensorData};

use super::{LanguageModel, LlamaForCausalLm, LmError};
use crate::detect::latent::mean_and_covariance;
use crate::ood::mahalanobis::ridged_precision;

/// A prompt's tokens, keeping the last ones so that `room` more tokens fit the model.
pub fn prompt_ids(lm: &LanguageModel, prompt: &str, room: usize) -> Result<Vec<u32>, LmError> {
    let ids = lm.tokenizer.encode(prompt)?;
    let keep = lm
        .model
        .config
        .max_position_embeddings
        .saturating_sub(room)
        .max(1);
    Ok(ids[ids.len().saturating_sub(keep)..].to_vec())
}

/// The residual stream at each sequence's last token, per layer: `[layer][n * hidden]`.
/// Sequences run in right-padded batches of [`STREAM_BATCH`]: causal attention keeps a
/// sequence's last real token from reading the padding after it.
pub fn last_token_streams(
    model: &LlamaForCausalLm,
    prompts: &[Vec<u32>],
    device: &Device,
) -> Result<Vec<Vec<f64>>, LmError> {
    let hidden = model.config.hidden_size;
    let mut layers: Vec<Vec<f64>> = Vec::new();
    for chunk in prompts.chunks(STREAM_BATCH) {
        if let Some(i) = chunk.iter().position(Vec::is_empty) {
            return Err(LmError::Input(format!(
                "prompt {i} of a batch has no tokens"
            )));
        }
        let longest = chunk.iter().map(Vec::len).max().unwrap_or(1);
        let mut tokens = vec![0i64; chunk.len() * longest];
        for (row, ids) in chunk.iter().enumerate() {
            for (t, &id) in ids.iter().enumerate() {
                tokens[row * longest + t] = i64::from(id);
            }
        }
        let tokens = Tensor::from_data(TensorData::new(tokens, [chunk.len(), longest]), device);
        let streams = model.residual_streams(tokens);
        if layers.is_empty() {
            layers = vec![Vec::with_capacity(prompts.len() * hidden); streams.len()];
        }
        for (layer, stream) in layers.iter_mut().zip(streams) {
            let values = stream
                .into_data()
                .try_to_vec::<f32>()
                .map_err(|e| LmError::Input(format!("reading activations: {e:?}")))?;
            for (row, ids) in chunk.iter().enumerate() {
                let at = (row * longest + ids.len() - 1) * hidden;
                layer.extend(values[at..at + hidden].iter().map(|&v| f64::from(v)));
            }
        }
    }
    Ok(layers)
}

/// Prompts per forward pass of [`last_token_streams`].
pub const STREAM_BATCH: usize = 32;

/// One Gaussian per layer: its mean `[hidden]` and the inverse of its covariance
/// `[hidden, hidden]` (with a ridge of 1e-6 of the mean variance, as the Mahalanobis detector's),
/// on `device`.
pub struct LayerGaussians {
    /// `(mean, precision)` of each layer.
    pub layers: Vec<(Tensor<1>, Tensor<2>)>,
    /// The width.
    pub hidden: usize,
}

impl LayerGaussians {
    /// Fits the Gaussians of `streams` (`[layer][n * hidden]`, as [`last_token_streams`]
    /// gives them).
    pub fn fit(streams: &[Vec<f64>], hidden: usize, device: &Device) -> Result<Self, LmError> {
        let mut layers = Vec::with_capacity(streams.len());
        for (l, features) in streams.iter().enumerate() {
            let fail = |why: &str| LmError::Input(format!("layer {l}'s Gaussian: {why}"));
            let (mean, covariance) = mean_and_covariance(features, hidden)
                .ok_or_else(|| fail("fewer than two prompts"))?;
            let precision = ridged_precision(covariance, hidden)
                .ok_or_else(|| fail("the covariance is not positive definite"))?;
            let f32s = |v: Vec<f64>| v.into_iter().map(|x| x as f32).collect::<Vec<f32>>();
            layers.push((
                Tensor::from_data(TensorData::new(f32s(mean), [hidden]), device),
                Tensor::from_data(TensorData::new(f32s(precision), [hidden, hidden]), device),
            ));
        }
        Ok(Self { layers, hidden })
    }

    /// The mean over rows and layers of `(h - mu)^T P (h - mu) / hidden` for `rows`, one
    /// `[n, hidden]` tensor per layer: about 1 for activations the Gaussians describe.
    pub fn mean_distance(&self, rows: &[Tensor<2>]) -> Tensor<1> {
        let mut total: Option<Tensor<1>> = None;
        let mut count = 0;
        for (h, (mean, precision)) in rows.iter().zip(&self.layers) {
            let [n, _] = h.dims();
            let d = h.clone() - mean.clone().reshape([1, self.hidden]);
            let m = (d.clone().matmul(precision.clone()) * d).sum();
            count += n;
            total = Some(match total {
                Some(t) => t + m,
                None => m,
            });
        }
        let total = total.unwrap_or_else(|| Tensor::zeros([1], &Device::default()));
        total.div_scalar((count.max(1) * self.hidden) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lm::LlamaConfig;

    /// Prompts of several lengths in one padded batch give each prompt's own last-token
    /// streams, as it alone gives them.
    #[test]
    fn batched_last_token_streams_are_each_prompts_own() {
        let config = LlamaConfig {
            vocab_size: 40,
            hidden_size: 16,
            intermediate_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            num_key_value_heads: 1,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            tie_word_embeddings: true,
            max_position_embeddings: 32,
        };
        let device = Device::default();
        let model = LlamaForCausalLm::seeded(&config, 1, &device).unwrap();
        let prompts: Vec<Vec<u32>> =
            vec![vec![3, 9, 1], vec![7], vec![2, 5, 11, 30, 4, 8], vec![6, 6]];
        let batched = last_token_streams(&model, &prompts, &device).unwrap();
        assert_eq!(batched.len(), 3, "two blocks and the final norm");
        for (i, prompt) in prompts.iter().enumerate() {
            let alone = last_token_streams(&model, std::slice::from_ref(prompt), &device).unwrap();
            for (layer, (b, a)) in batched.iter().zip(&alone).enumerate() {
                let worst = b[i * 16..(i + 1) * 16]
                    .iter()
                    .zip(a)
                    .map(|(x, y)| (x - y).abs())
                    .fold(0.0, f64::max);
                assert!(worst < 1e-5, "prompt {i}, layer {layer}: {worst}");
            }
        }
        assert!(last_token_streams(&model, &[vec![]], &device).is_err());
    }

    /// Over the rows a Gaussian was fitted on, `sum_i d_i^T S^-1 d_i = (n - 1) tr(S^-1 S) =
    /// (n - 1) dim` for the sample covariance `S` (divisor `n - 1`), so the mean distance per
    /// width is `(n - 1) / n` (up to the ridge).
    #[test]
    fn the_fitted_rows_mean_distance_is_n_minus_one_over_n() {
        let (n, dim) = (40, 3);
        let features: Vec<f64> = (0..n * dim)
            .map(|i| ((i * 37 % 101) as f64 / 17.0).sin() + (i % dim) as f64)
            .collect();
        let device = Device::default();
        let gaussians = LayerGaussians::fit(std::slice::from_ref(&features), dim, &device).unwrap();
        let rows = Tensor::<2>::from_data(
            TensorData::new(
                features.iter().map(|&v| v as f32).collect::<Vec<_>>(),
                [n, dim],
            ),
            &device,
        );
        let got = f64::from(gaussians.mean_distance(&[rows]).into_scalar::<f32>());
        let want = (n - 1) as f64 / n as f64;
        assert!((got - want).abs() < 1e-3, "{got} vs {want}");
        assert!(LayerGaussians::fit(&[vec![1.0, 2.0, 3.0]], dim, &device).is_err());
    }
}
