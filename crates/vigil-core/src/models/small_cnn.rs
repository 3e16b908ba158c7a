//! The small CNN that carries vigil's full experiment tables.
//!
//! conv(3x3, `width`), ReLU, maxpool 2, conv(3x3, 2 `width`), ReLU, maxpool 2, fc(`hidden`),
//! ReLU, fc(classes). Padding 1 keeps each convolution size-preserving, so any input whose
//! sides divide by 4 works (28x28 Fashion-MNIST, 32x32 CIFAR). No dropout: MAD-FA needs a
//! deterministic forward. PyTorch twin: `tests/fixtures/torch/reference_models.py::SmallCnn`.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor};

/// conv32-conv64-fc128 at the default width.
#[derive(Module, Debug)]
pub struct SmallCnn {
    /// First convolution, `in -> width`.
    pub conv1: Conv2d,
    /// Second convolution, `width -> 2 width`.
    pub conv2: Conv2d,
    /// Hidden fully-connected layer.
    pub fc1: Linear,
    /// Classifier head.
    pub fc2: Linear,
}

impl SmallCnn {
    /// Builds the network for `[channels, height, width]` inputs.
    pub fn new(
        input: [usize; 3],
        num_classes: usize,
        width: usize,
        hidden: usize,
        device: &Device,
    ) -> Self {
        let [c, h, w] = input;
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(c, width),
            conv2: conv(width, 2 * width),
            fc1: LinearConfig::new(2 * width * (h / 4) * (w / 4), hidden).init(device),
            fc2: LinearConfig::new(hidden, num_classes).init(device),
        }
    }

    /// Logits for a batch `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }

    /// The penultimate representation (`hidden` units after ReLU), the input of `fc2`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let x = pool2(relu(self.conv1.forward(x)));
        let x = pool2(relu(self.conv2.forward(x)));
        let x: Tensor<2> = x.flatten(1, 3);
        relu(self.fc1.forward(x))
    }
}

/// 2x2 max-pool, stride 2. Without autodiff (inference, MAD-FA's per-sample losses) it runs
/// as a reshape and two max reductions, about 15% faster end to end on burn-flex than its pooling
/// kernel, which goes through a generic 3-D path (a fifth of the step under perf). With autodiff
/// the kernel stays: the reductions' backward is slower than the kernel's. Values are identical.
fn pool2(x: Tensor<4>) -> Tensor<4> {
    if x.is_autodiff() {
        return max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]));
    }
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .max_dim(5)
        .max_dim(3)
        .reshape([n, c, h / 2, w / 2])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use burn::tensor::Distribution;

    #[test]
    fn reduction_pooling_equals_the_pooling_kernel() {
        let x = Tensor::<4>::random([3, 2, 8, 12], Distribution::Default, &default_device());
        let fast = pool2(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        let kernel = max_pool2d(x, MaxPoolOptions::new([2, 2]).with_stride([2, 2]))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(fast, kernel);
    }
}
