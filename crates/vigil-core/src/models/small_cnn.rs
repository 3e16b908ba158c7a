//! The small CNN that carries vigil's full experiment tables.
//!
//! conv(3x3, `width`), ReLU, maxpool 2, conv(3x3, 2 `width`), ReLU, maxpool 2, fc(`hidden`),
//! ReLU, fc(classes). Padding 1 keeps each convolution size-preserving, so any input whose
//! sides divide by 4 works (28x28 Fashion-MNIST, 32x32 CIFAR). No dropout: MAD-FA needs a
//! deterministic forward. PyTorch twin: `tests/fixtures/torch/reference_models.py::SmallCnn`.

use crate::kernels::{conv2d_layer, max_pool2d};
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::relu;
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
        let (last_conv, rest) = self.split_at_last_conv(x);
        rest(last_conv)
    }

    /// `conv2`'s output (before its ReLU) and the rest of the network from it to the
    /// penultimate features; [`SmallCnn::features`] is the two composed. Grad-CAM reads here.
    pub fn split_at_last_conv(
        &self,
        x: Tensor<4>,
    ) -> (Tensor<4>, impl Fn(Tensor<4>) -> Tensor<2> + '_) {
        // Pooling before the ReLU, not after: the two commute exactly (values, gradients and
        // NaN; `pool_then_relu_equals_relu_then_pool`), and the ReLU then runs on a quarter
        // of the values, forward and backward.
        let x = relu(pool2(conv2d_layer(&self.conv1, x)));
        let rest = |last_conv: Tensor<4>| {
            let x: Tensor<2> = relu(pool2(last_conv)).flatten(1, 3);
            relu(self.fc1.forward(x))
        };
        (conv2d_layer(&self.conv2, x), rest)
    }
}

/// 2x2 max-pooling, stride 2, through vigil's kernel (`kernels::max_pool2d`).
fn pool2(x: Tensor<4>) -> Tensor<4> {
    max_pool2d(x, [2, 2], [2, 2], [0, 0])
}
