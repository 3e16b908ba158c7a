//! BatchNorm with an explicit mode, named and updated as PyTorch's `BatchNorm2d`.
//!
//! burn's own `BatchNorm` picks its behaviour from the device and a training flag, names its
//! affine parameters `gamma`/`beta`, and updates `running_var` with the biased batch variance.
//! vigil needs three behaviours chosen per call (MAD-FA steps in one mode and records losses in
//! another), PyTorch's state-dict names, and PyTorch's update rule, so that a checkpoint trained
//! in either framework behaves the same in the other.

use crate::kernels;
use burn::module::{Module, Param, RunningState};
use burn::tensor::{Device, Tensor};

/// How BatchNorm layers normalise during a forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BnMode {
    /// Batch statistics; running statistics updated with momentum (PyTorch `model.train()`).
    Train,
    /// Batch statistics; running statistics left untouched. MAD-FA's `frozen` BatchNorm option
    /// steps in this mode so the recorded (eval-mode) losses keep w*'s statistics.
    BatchStatsFrozen,
    /// Running statistics (PyTorch `model.eval()`).
    #[default]
    Eval,
}

impl BnMode {
    /// Whether the batch's own statistics normalise it.
    pub fn uses_batch_stats(self) -> bool {
        !matches!(self, BnMode::Eval)
    }
}

/// 2-D batch normalisation over `[batch, channels, height, width]`.
#[derive(Module, Debug)]
pub struct BatchNorm2d {
    /// Affine scale (PyTorch `weight`, burn `gamma`).
    pub weight: Param<Tensor<1>>,
    /// Affine shift (PyTorch `bias`, burn `beta`).
    pub bias: Param<Tensor<1>>,
    /// Running mean, a buffer: never a gradient target.
    pub running_mean: RunningState<Tensor<1>>,
    /// Running (unbiased) variance, a buffer.
    pub running_var: RunningState<Tensor<1>>,
    /// Weight of the newest batch in the running statistics (PyTorch default 0.1).
    #[module(skip)]
    pub momentum: f64,
    /// Added to the variance before the square root (PyTorch default 1e-5).
    #[module(skip)]
    pub epsilon: f64,
}

impl BatchNorm2d {
    /// A fresh layer as PyTorch initialises it: weight 1, bias 0, mean 0, variance 1.
    pub fn new(channels: usize, device: &Device) -> Self {
        Self {
            weight: Param::from_tensor(Tensor::ones([channels], device)),
            bias: Param::from_tensor(Tensor::zeros([channels], device)),
            running_mean: RunningState::new(Tensor::zeros([channels], device)),
            running_var: RunningState::new(Tensor::ones([channels], device)),
            momentum: 0.1,
            epsilon: 1e-5,
        }
    }

    /// Multiplies the affine scale and shift (`weight`, `bias`) by `factor`, leaving the running
    /// statistics alone: IBD-PSC's parameter amplification (`detect::ibd_psc`).
    pub fn scale_affine(&mut self, factor: f64) {
        self.weight = Param::from_tensor(self.weight.val().mul_scalar(factor));
        self.bias = Param::from_tensor(self.bias.val().mul_scalar(factor));
    }

    /// Normalises `input` according to `mode`.
    pub fn forward(&self, input: Tensor<4>, mode: BnMode) -> Tensor<4> {
        self.normalise(input, mode, false)
    }

    /// `relu(self.forward(input, mode))` in one pass (the ResNets' pre-activations).
    pub fn forward_relu(&self, input: Tensor<4>, mode: BnMode) -> Tensor<4> {
        self.normalise(input, mode, true)
    }

    /// Both forwards, through `kernels`' fused batch normalisation.
    fn normalise(&self, input: Tensor<4>, mode: BnMode, relu: bool) -> Tensor<4> {
        match mode {
            BnMode::Eval => kernels::batch_norm_eval(
                input,
                [
                    self.weight.val(),
                    self.bias.val(),
                    self.running_mean.value_sync(),
                    self.running_var.value_sync(),
                ],
                self.epsilon,
                relu,
            ),
            BnMode::Train | BnMode::BatchStatsFrozen => {
                let [n, _, h, w] = input.dims();
                let (output, mean, variance) = kernels::batch_norm_train(
                    input,
                    self.weight.val(),
                    self.bias.val(),
                    self.epsilon,
                    relu,
                );
                if mode == BnMode::Train {
                    self.update_running_stats(mean, variance, n * h * w);
                }
                output
            }
        }
    }

    /// PyTorch's rule: the running variance tracks the *unbiased* batch variance.
    fn update_running_stats(&self, mean: Tensor<1>, biased_var: Tensor<1>, count: usize) {
        let m = self.momentum;
        let unbias = if count > 1 {
            count as f64 / (count as f64 - 1.0)
        } else {
            1.0
        };
        let mean = mean.detach().without_autodiff();
        let var = biased_var.detach().without_autodiff().mul_scalar(unbias);
        let new_mean = self
            .running_mean
            .value_sync()
            .without_autodiff()
            .mul_scalar(1.0 - m)
            .add(mean.mul_scalar(m));
        let new_var = self
            .running_var
            .value_sync()
            .without_autodiff()
            .mul_scalar(1.0 - m)
            .add(var.mul_scalar(m));
        self.running_mean.update(new_mean);
        self.running_var.update(new_var);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::TensorData;

    fn input(scale: f32, f: fn(f32) -> f32, mul: f32, add: f32) -> Tensor<4> {
        let values: Vec<f32> = (0..24).map(|i| f(i as f32 * scale) * mul + add).collect();
        Tensor::from_data(TensorData::new(values, [3, 2, 2, 2]), &default_device())
    }

    fn values(t: Tensor<1>) -> Vec<f32> {
        t.into_data().try_to_vec::<f32>().unwrap()
    }

    fn assert_close(got: &[f32], expected: &[f32], what: &str) {
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-6, "{what}: {got:?} vs {expected:?}");
        }
    }

    /// Two train-mode forwards against PyTorch 2.15's `BatchNorm2d` (momentum 0.1, unbiased
    /// running variance): values printed by `tests/fixtures/torch/batch_norm_running_stats.py`.
    /// MAD-FA's `reference` BatchNorm policy depends on this update.
    #[test]
    #[allow(clippy::excessive_precision)] // the constants as PyTorch printed them
    fn running_stats_match_pytorch() {
        let bn = BatchNorm2d::new(2, &default_device());
        let out = bn.forward(input(0.37, f32::sin, 1.0, 0.0), BnMode::Train);
        assert_close(
            &values(bn.running_mean.value_sync()),
            &[0.010776891373097897, 0.028370777145028114],
            "mean after one",
        );
        assert_close(
            &values(bn.running_var.value_sync()),
            &[0.9269174933433533, 0.9760990142822266],
            "var after one",
        );
        let first: Vec<f32> = out.flatten::<1>(0, 3).into_data().try_to_vec().unwrap();
        assert_close(
            &first[..4],
            &[
                -0.2169509381055832,
                0.5110216736793518,
                1.140466570854187,
                1.5861912965774536,
            ],
            "output",
        );
        bn.forward(input(1.3, f32::cos, 2.0, 0.5), BnMode::Train);
        assert_close(
            &values(bn.running_mean.value_sync()),
            &[0.058008018881082535, 0.07506975531578064],
            "mean after two",
        );
        assert_close(
            &values(bn.running_var.value_sync()),
            &[1.048459529876709, 1.1003636121749878],
            "var after two",
        );
        // Frozen statistics: a batch-statistics forward that leaves them alone.
        bn.forward(input(0.37, f32::sin, 1.0, 0.0), BnMode::BatchStatsFrozen);
        assert_close(
            &values(bn.running_mean.value_sync()),
            &[0.058008018881082535, 0.07506975531578064],
            "mean after frozen",
        );
    }
}
