//! Small building blocks shared by the ResNets, configured as PyTorch's defaults are.

use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::Device;
use burn::tensor::Tensor;
use burn::tensor::module::avg_pool2d;
use burn::tensor::ops::AvgPoolOptions;

/// 3x3 convolution, padding 1, no bias (every ResNet conv is followed by BatchNorm).
pub fn conv3x3(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([in_planes, planes], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_bias(false)
        .init(device)
}

/// 1x1 projection convolution, no bias.
pub fn conv1x1(in_planes: usize, planes: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([in_planes, planes], [1, 1])
        .with_stride([stride, stride])
        .with_bias(false)
        .init(device)
}

/// The four ResNet-18 stages (`layer1..4`) of two blocks each, for a stem of `width` channels:
/// `planes` width, 2, 4, 8 x width and strides 1, 2, 2, 2. `block(in_planes, planes, stride)`
/// builds one block.
pub fn resnet18_stages<T>(
    width: usize,
    mut block: impl FnMut(usize, usize, usize) -> T,
) -> [Vec<T>; 4] {
    let mut in_planes = width;
    [(width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)].map(|(planes, stride)| {
        let first = block(in_planes, planes, stride);
        in_planes = planes;
        vec![first, block(planes, planes, 1)]
    })
}

/// `F.avg_pool2d(x, 4)`: 4x4 window, stride 4, as the HALO/kuangliu heads do.
pub fn avg_pool4(x: Tensor<4>) -> Tensor<4> {
    avg_pool2d(x, AvgPoolOptions::new([4, 4]).with_stride([4, 4]))
}
