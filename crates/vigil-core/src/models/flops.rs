//! Floating-point operations of one forward pass, per image: the convolutions and the
//! fully-connected layers at two flops per multiply-add, as they are defined (not as vigil's
//! Winograd kernels compute them), without BatchNorm, ReLU, pooling or the loss. The same
//! convention as PyTorch's `FlopCounterMode`, against which the test checks every architecture
//! (`tests/fixtures/torch/count_flops.py`). `vigil throughput` divides these by the measured
//! times, so its GFLOP/s can be set against the machine's peak.

use super::{Architecture, ModelSpec};

/// A convolution's flops: `2 c_in c_out k^2` per output position.
fn conv(c_in: usize, c_out: usize, kernel: usize, [oh, ow]: [usize; 2]) -> u64 {
    2 * (c_in * c_out * kernel * kernel * oh * ow) as u64
}

/// A side after a 3x3 convolution with padding 1 (or a 1x1 without padding) at `stride`.
fn strided(side: usize, stride: usize) -> usize {
    (side - 1) / stride + 1
}

/// Forward flops of one image through `spec`'s network.
pub fn forward_flops(spec: &ModelSpec) -> u64 {
    let [c, h, w] = spec.input_shape;
    let classes = spec.num_classes();
    match spec.architecture {
        Architecture::SmallCnn { width, hidden } => {
            let flat = 2 * width * (h / 4) * (w / 4);
            conv(c, width, 3, [h, w])
                + conv(width, 2 * width, 3, [h / 2, w / 2])
                + 2 * (flat * hidden + hidden * classes) as u64
        }
        Architecture::ResNet18 { width }
        | Architecture::PreActResNet18 { width }
        | Architecture::PreActResNet18Halo { width } => {
            // Stem, then four stages of two basic blocks (two 3x3 convolutions each, the first
            // carrying the stage's stride, and a 1x1 shortcut where the shape changes).
            let mut flops = conv(c, width, 3, [h, w]);
            let (mut side, mut channels) = ([h, w], width);
            for (stage, stride) in [1, 2, 2, 2].into_iter().enumerate() {
                let planes = width << stage;
                for block_stride in [stride, 1] {
                    let out = side.map(|s| strided(s, block_stride));
                    flops += conv(channels, planes, 3, out) + conv(planes, planes, 3, out);
                    if block_stride != 1 || channels != planes {
                        flops += conv(channels, planes, 1, out);
                    }
                    (side, channels) = (out, planes);
                }
            }
            // BackdoorBench's head pools adaptively to 1x1; HALO's pool with a fixed 4x4 window.
            let pooled = match spec.architecture {
                Architecture::PreActResNet18 { .. } => 1,
                _ => (side[0] / 4) * (side[1] / 4),
            };
            flops + 2 * (channels * pooled * classes) as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every architecture against PyTorch's `FlopCounterMode` on the reference models
    /// (`python3 tests/fixtures/torch/count_flops.py`, torch 2.15), on both benchmark shapes,
    /// two widths and an odd shape.
    #[test]
    fn forward_flops_equal_pytorchs_count() {
        let small = |width, hidden| Architecture::SmallCnn { width, hidden };
        let cases: Vec<(Architecture, [usize; 3], u64)> = vec![
            (small(32, 128), [1, 28, 28], 8_482_304),
            (small(16, 64), [1, 28, 28], 2_234_112),
            (small(32, 128), [3, 32, 32], 12_257_792),
            (small(16, 64), [3, 32, 32], 3_507_456),
            (
                Architecture::ResNet18 { width: 64 },
                [1, 28, 28],
                911_601_664,
            ),
            (
                Architecture::ResNet18 { width: 16 },
                [1, 28, 28],
                57_146_368,
            ),
            (
                Architecture::ResNet18 { width: 64 },
                [3, 32, 32],
                1_110_845_440,
            ),
            (
                Architecture::ResNet18 { width: 16 },
                [3, 32, 32],
                70_093_312,
            ),
            (
                Architecture::PreActResNet18 { width: 64 },
                [1, 28, 28],
                911_601_664,
            ),
            (
                Architecture::PreActResNet18 { width: 16 },
                [1, 28, 28],
                57_146_368,
            ),
            (
                Architecture::PreActResNet18 { width: 64 },
                [3, 32, 32],
                1_110_845_440,
            ),
            (
                Architecture::PreActResNet18 { width: 16 },
                [3, 32, 32],
                70_093_312,
            ),
            (
                Architecture::PreActResNet18Halo { width: 64 },
                [1, 28, 28],
                911_601_664,
            ),
            (
                Architecture::PreActResNet18Halo { width: 16 },
                [3, 32, 32],
                70_093_312,
            ),
            (Architecture::ResNet18 { width: 8 }, [2, 25, 29], 14_610_080),
            (
                Architecture::PreActResNet18 { width: 8 },
                [2, 25, 29],
                14_610_080,
            ),
        ];
        for (architecture, input_shape, expected) in cases {
            let spec = ModelSpec {
                architecture: architecture.clone(),
                input_shape,
                class_names: (0..10).map(|c| c.to_string()).collect(),
                normalization: None,
            };
            assert_eq!(
                forward_flops(&spec),
                expected,
                "{architecture:?} {input_shape:?}"
            );
        }
    }
}
