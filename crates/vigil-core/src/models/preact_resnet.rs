//! Pre-activation ResNet-18 in its two published variants, which differ only in the head:
//!
//! - [`PreActHead::BackdoorBench`] (`models/preact_resnet.py`, used by MAD-FA): the last block's
//!   output goes straight to an adaptive average pool and `linear`; no final BatchNorm or ReLU.
//!   Registry name `preact-resnet18`.
//! - [`PreActHead::Halo`] (HALO `architectures/preactresnet.py`): a final `bn` and ReLU, then a
//!   4x4 average pool. Registry name `preact-resnet18-halo`.

use crate::kernels::conv2d_layer;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::module::adaptive_avg_pool2d;
use burn::tensor::{Device, Tensor};

use super::batch_norm::{BatchNorm2d, BnMode};
use super::layers::{avg_pool4, conv1x1, conv3x3, resnet18_stages};

/// Which published head the network ends with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PreActHead {
    /// Adaptive average pool, no final BatchNorm (BackdoorBench).
    BackdoorBench,
    /// Final BatchNorm + ReLU, 4x4 average pool (HALO).
    Halo,
}

/// bn-relu-conv-bn-relu-conv plus the identity or a 1x1 projection of the pre-activation.
#[derive(Module, Debug)]
pub struct PreActBlock {
    /// BatchNorm on the block input.
    pub bn1: BatchNorm2d,
    /// First 3x3 convolution (carries the stride).
    pub conv1: Conv2d,
    /// BatchNorm before `conv2`.
    pub bn2: BatchNorm2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// `shortcut.0`: 1x1 projection where the shape changes, else empty.
    pub shortcut: Vec<Conv2d>,
}

impl PreActBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let shortcut = if stride != 1 || in_planes != planes {
            vec![conv1x1(in_planes, planes, stride, device)]
        } else {
            Vec::new()
        };
        Self {
            bn1: BatchNorm2d::new(in_planes, device),
            conv1: conv3x3(in_planes, planes, stride, device),
            bn2: BatchNorm2d::new(planes, device),
            conv2: conv3x3(planes, planes, 1, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<4> {
        let (out, skip) = self.forward_parts(x, bn);
        out + skip
    }

    /// `conv2`'s output and the shortcut it is added to (the block's output is their sum).
    fn forward_parts(&self, x: Tensor<4>, bn: BnMode) -> (Tensor<4>, Tensor<4>) {
        let pre = self.bn1.forward_relu(x.clone(), bn);
        // The projection sees the pre-activation; the identity sees the raw input.
        let skip = match self.shortcut.first() {
            Some(conv) => conv2d_layer(conv, pre.clone()),
            None => x,
        };
        let out = conv2d_layer(&self.conv1, pre);
        let out = conv2d_layer(&self.conv2, self.bn2.forward_relu(out, bn));
        (out, skip)
    }
}

/// Pre-activation ResNet-18 with the head chosen at construction.
#[derive(Module, Debug)]
pub struct PreActResNet18 {
    /// Stem convolution, 3x3, stride 1, no bias.
    pub conv1: Conv2d,
    /// Stage 1 (stride 1).
    pub layer1: Vec<PreActBlock>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<PreActBlock>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<PreActBlock>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<PreActBlock>,
    /// Final BatchNorm, present only in the HALO head.
    pub bn: Option<BatchNorm2d>,
    /// Classifier head.
    pub linear: Linear,
    /// Which head this is.
    #[module(skip)]
    pub head: PreActHead,
}

impl PreActResNet18 {
    /// `width` is the stem's channel count (64 in the references).
    pub fn new(
        in_channels: usize,
        num_classes: usize,
        width: usize,
        head: PreActHead,
        device: &Device,
    ) -> Self {
        let [layer1, layer2, layer3, layer4] =
            resnet18_stages(width, |i, p, s| PreActBlock::new(i, p, s, device));
        Self {
            conv1: conv3x3(in_channels, width, 1, device),
            layer1,
            layer2,
            layer3,
            layer4,
            bn: (head == PreActHead::Halo).then(|| BatchNorm2d::new(8 * width, device)),
            linear: LinearConfig::new(8 * width, num_classes).init(device),
            head,
        }
    }

    /// Logits for a batch `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        self.linear.forward(self.features(x, bn))
    }

    /// Every BatchNorm layer in PyTorch's `named_modules()` order (`layer1.0.bn1`,
    /// `layer1.0.bn2`, ..., then the HALO head's `bn`).
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        let mut out = Vec::new();
        for block in [
            &mut self.layer1,
            &mut self.layer2,
            &mut self.layer3,
            &mut self.layer4,
        ]
        .into_iter()
        .flatten()
        {
            out.push(&mut block.bn1);
            out.push(&mut block.bn2);
        }
        out.extend(self.bn.as_mut());
        out
    }

    /// The pooled penultimate representation (`8 width` values), the input of `linear`.
    pub fn features(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        let (last_conv, rest) = self.split_at_last_conv(x, bn);
        rest(last_conv)
    }

    /// The last block's `conv2` output (BackdoorBench's Grad-CAM layer `layer4.1.conv2`) and
    /// the rest of the network from it to the penultimate features, the block's shortcut held
    /// fixed; [`PreActResNet18::features`] is the two composed.
    pub fn split_at_last_conv(
        &self,
        x: Tensor<4>,
        bn: BnMode,
    ) -> (Tensor<4>, impl Fn(Tensor<4>) -> Tensor<2> + '_) {
        let mut out = conv2d_layer(&self.conv1, x);
        let blocks: Vec<&PreActBlock> = [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .collect();
        // Without blocks (never built so) the stem is the last convolution.
        let (last_conv, skip) = match blocks.split_last() {
            Some((last, earlier)) => {
                for block in earlier {
                    out = block.forward(out, bn);
                }
                let (conv, skip) = last.forward_parts(out, bn);
                (conv, Some(skip))
            }
            None => (out, None),
        };
        let rest = move |last_conv: Tensor<4>| {
            let out = match &skip {
                Some(skip) => last_conv + skip.clone(),
                None => last_conv,
            };
            let pooled = match &self.bn {
                Some(norm) => avg_pool4(norm.forward_relu(out, bn)),
                None => adaptive_avg_pool2d(out, [1, 1]),
            };
            pooled.flatten(1, 3)
        };
        (last_conv, rest)
    }
}
