//! Next-token losses of a causal language model.
//!
//! Position `t`'s logits predict token `t + 1`, so a sequence of `s` tokens has `s - 1` losses.
//! A mask chooses the positions that count (a response's tokens, not its prompt's, nor right
//! padding); MAD-FA's traces on text are the per-sample masked mean (docs/language-models.md).

use burn::tensor::{Int, Tensor};

use crate::kernels::cross_entropy_rows;

/// Cross-entropy of every next-token prediction, `[batch, positions - 1]`.
///
/// Every position's logits go through one row-wise cross-entropy (the last position's, which
/// predicts nothing, with no target), so the logits are neither sliced nor copied: at a
/// vocabulary of 49,152 they are the largest tensor of the pass (docs/performance.md, "The
/// language models' loss").
pub fn next_token_losses(logits: Tensor<3>, tokens: Tensor<2, Int>) -> Tensor<2> {
    let [batch, positions, vocab] = logits.dims();
    let predictions = positions.saturating_sub(1);
    let ids: Vec<i64> = tokens.into_data().iter::<i64>().collect();
    let targets: Vec<Option<u32>> = (0..batch * positions)
        .map(|i| {
            let next = i + 1;
            (next % positions != 0).then(|| u32::try_from(ids[next]).unwrap_or(u32::MAX))
        })
        .collect();
    cross_entropy_rows(logits.reshape([batch * positions, vocab]), &targets)
        .reshape([batch, positions])
        .slice([0..batch, 0..predictions])
}

/// Per-sample mean of `losses` `[batch, n]` over the positions where `mask` (same shape, 1 or
/// 0) is 1, `[batch]`; a sample with no counted position gets 0.
pub fn masked_mean(losses: Tensor<2>, mask: Tensor<2>) -> Tensor<1> {
    let [batch, _] = losses.dims();
    let counts = mask.clone().sum_dim(1).clamp_min(1.0);
    ((losses * mask).sum_dim(1) / counts).reshape([batch])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    /// Values from PyTorch: `F.cross_entropy(logits[0, :-1], tokens[0, 1:], reduction='none')`
    /// for logits = arange(24).reshape(1, 4, 6).sin() * 3, tokens = [[1, 5, 0, 2]]:
    /// `python3 -c "import torch; l=torch.arange(24.).reshape(1,4,6).sin()*3; t=torch.tensor([[1,5,0,2]]); print(torch.nn.functional.cross_entropy(l[0,:-1], t[0,1:], reduction='none').tolist())"`
    #[test]
    fn next_token_losses_match_pytorch() {
        let device = default_device();
        let logits: Vec<f32> = (0..24).map(|i| (i as f32).sin() * 3.0).collect();
        let logits = Tensor::<3>::from_data(TensorData::new(logits, [1, 4, 6]), &device);
        let tokens =
            Tensor::<2, Int>::from_data(TensorData::new(vec![1i64, 5, 0, 2], [1, 4]), &device);
        let losses: Vec<f32> = next_token_losses(logits, tokens)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = [6.293_543_f32, 4.264_228, 0.454_615_83];
        for (got, want) in losses.iter().zip(expected) {
            assert!((got - want).abs() < 1e-5, "{losses:?} vs {expected:?}");
        }
        assert_eq!(losses.len(), 3);
    }

    #[test]
    fn masked_mean_skips_masked_positions_and_empty_rows() {
        let device = default_device();
        let losses = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 2.0, 4.0, 8.0, 16.0, 32.0], [2, 3]),
            &device,
        );
        let mask = Tensor::<2>::from_data(
            TensorData::new(vec![1.0f32, 0.0, 1.0, 0.0, 0.0, 0.0], [2, 3]),
            &device,
        );
        let mean: Vec<f32> = masked_mean(losses, mask)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(mean, vec![2.5, 0.0]);
    }
}
