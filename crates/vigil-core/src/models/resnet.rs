//! CIFAR-style ResNet-18 as HALO's `architectures/resnet.py` (the kuangliu layout).
//!
//! conv1 3x3/`width` + bn1, four stages of two `BasicBlock`s (strides 1, 2, 2, 2), a 4x4 average
//! pool and `linear`. 32x32 inputs reach the pool at 4x4, and so do 28x28 ones
//! (28 -> 14 -> 7 -> 4), so the same network serves Fashion-MNIST.

use crate::kernels::conv2d_layer;
use burn::module::Module;
use burn::nn::conv::Conv2d;
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};

use super::batch_norm::{BatchNorm2d, BnMode};
use super::layers::{avg_pool4, conv1x1, conv3x3, resnet18_stages};

/// conv-bn-relu-conv-bn plus the identity or a projection, then ReLU.
#[derive(Module, Debug)]
pub struct BasicBlock {
    /// First 3x3 convolution (carries the stride).
    pub conv1: Conv2d,
    /// BatchNorm after `conv1`.
    pub bn1: BatchNorm2d,
    /// Second 3x3 convolution.
    pub conv2: Conv2d,
    /// BatchNorm after `conv2`.
    pub bn2: BatchNorm2d,
    /// Projection where the shape changes; PyTorch names it `shortcut.0` / `shortcut.1`.
    pub shortcut: Vec<ShortcutPart>,
}

/// One entry of the PyTorch `nn.Sequential` shortcut, so state-dict indices line up.
#[derive(Module, Debug)]
pub enum ShortcutPart {
    /// `shortcut.0`, the 1x1 convolution.
    Conv(Conv2d),
    /// `shortcut.1`, its BatchNorm.
    Bn(BatchNorm2d),
}

impl BasicBlock {
    fn new(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Self {
        let shortcut = if stride != 1 || in_planes != planes {
            vec![
                ShortcutPart::Conv(conv1x1(in_planes, planes, stride, device)),
                ShortcutPart::Bn(BatchNorm2d::new(planes, device)),
            ]
        } else {
            Vec::new()
        };
        Self {
            conv1: conv3x3(in_planes, planes, stride, device),
            bn1: BatchNorm2d::new(planes, device),
            conv2: conv3x3(planes, planes, 1, device),
            bn2: BatchNorm2d::new(planes, device),
            shortcut,
        }
    }

    fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<4> {
        let (conv2, skip) = self.forward_parts(x, bn);
        self.finish(conv2, skip, bn)
    }

    /// `conv2`'s output (before `bn2`) and the shortcut's output.
    fn forward_parts(&self, x: Tensor<4>, bn: BnMode) -> (Tensor<4>, Tensor<4>) {
        let out = self
            .bn1
            .forward_relu(conv2d_layer(&self.conv1, x.clone()), bn);
        let mut skip = x;
        for part in &self.shortcut {
            skip = match part {
                ShortcutPart::Conv(conv) => conv2d_layer(conv, skip),
                ShortcutPart::Bn(norm) => norm.forward(skip, bn),
            };
        }
        (conv2d_layer(&self.conv2, out), skip)
    }

    /// The block's output from `conv2`'s output and the shortcut's.
    fn finish(&self, conv2: Tensor<4>, skip: Tensor<4>, bn: BnMode) -> Tensor<4> {
        relu(self.bn2.forward(conv2, bn) + skip)
    }
}

/// ResNet-18 (HALO, CIFAR-style). Registry name `resnet18`.
#[derive(Module, Debug)]
pub struct ResNet18 {
    /// Stem convolution, 3x3, stride 1, no bias.
    pub conv1: Conv2d,
    /// Stem BatchNorm.
    pub bn1: BatchNorm2d,
    /// Stage 1 (stride 1).
    pub layer1: Vec<BasicBlock>,
    /// Stage 2 (stride 2).
    pub layer2: Vec<BasicBlock>,
    /// Stage 3 (stride 2).
    pub layer3: Vec<BasicBlock>,
    /// Stage 4 (stride 2).
    pub layer4: Vec<BasicBlock>,
    /// Classifier head.
    pub linear: Linear,
}

impl ResNet18 {
    /// `width` is the stem's channel count (64 in the reference).
    pub fn new(in_channels: usize, num_classes: usize, width: usize, device: &Device) -> Self {
        let [layer1, layer2, layer3, layer4] =
            resnet18_stages(width, |i, p, s| BasicBlock::new(i, p, s, device));
        Self {
            conv1: conv3x3(in_channels, width, 1, device),
            bn1: BatchNorm2d::new(width, device),
            layer1,
            layer2,
            layer3,
            layer4,
            linear: LinearConfig::new(8 * width, num_classes).init(device),
        }
    }

    /// Logits for a batch `[n, c, h, w]`.
    pub fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        self.linear.forward(self.features(x, bn))
    }

    /// Every BatchNorm layer in PyTorch's `named_modules()` order (`bn1`, `layer1.0.bn1`,
    /// `layer1.0.bn2`, `layer2.0.shortcut.1`, ...).
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        let mut out = vec![&mut self.bn1];
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
            out.extend(block.shortcut.iter_mut().filter_map(|part| match part {
                ShortcutPart::Bn(norm) => Some(norm),
                ShortcutPart::Conv(_) => None,
            }));
        }
        out
    }

    /// The pooled penultimate representation (`8 width` values), the input of `linear`.
    pub fn features(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        let (last_conv, rest) = self.split_at_last_conv(x, bn);
        rest(last_conv)
    }

    /// The last block's `conv2` output (before its BatchNorm: the layer `layer4.1.conv2`) and
    /// the rest of the network from it to the penultimate features, the block's shortcut held
    /// fixed; [`ResNet18::features`] is the two composed.
    pub fn split_at_last_conv(
        &self,
        x: Tensor<4>,
        bn: BnMode,
    ) -> (Tensor<4>, impl Fn(Tensor<4>) -> Tensor<2> + '_) {
        let stem = conv2d_layer(&self.conv1, x);
        let blocks: Vec<&BasicBlock> = [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .flatten()
            .collect();
        // Without blocks (never built so) the stem is the last convolution.
        let (last_conv, last) = match blocks.split_last() {
            Some((last, earlier)) => {
                let mut out = self.bn1.forward_relu(stem, bn);
                for block in earlier {
                    out = block.forward(out, bn);
                }
                let (conv, skip) = last.forward_parts(out, bn);
                (conv, Some((*last, skip)))
            }
            None => (stem, None),
        };
        let rest = move |last_conv: Tensor<4>| {
            let out = match &last {
                Some((block, skip)) => block.finish(last_conv, skip.clone(), bn),
                None => self.bn1.forward_relu(last_conv, bn),
            };
            avg_pool4(out).flatten(1, 3)
        };
        (last_conv, rest)
    }
}
