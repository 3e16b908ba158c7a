//! SSBA-style sample-specific invisible trigger (Li et al. 2021, "Invisible backdoor attack
//! with sample-specific triggers"; BackdoorBench `ssba`).
//!
//! The reference trains a StegaStamp encoder-decoder (a U-Net that hides a 100-bit string in an
//! image, a decoder that reads it back) on ImageNet-scale data, then encodes one fixed string
//! into every poisoned image: each image gets its own small residual, invisible to the eye.
//!
//! vigil's version, documented where it differs: a small convolutional encoder (three 3x3
//! convolutions, the code given as `bits` constant input planes, `tanh`-bounded residual of at
//! most `eps`) and decoder (two stride-2 convolutions and a linear layer) trained jointly with
//! Adam on the attacked training set itself, with random codes per image, for `iterations`
//! steps (bit cross-entropy plus `residual_weight` times the mean squared residual). The
//! attack then encodes one fixed code (from `seed`). The trained encoder runs on the host
//! (plain loops over its exported weights), so the trigger is a pure function of the image,
//! like every other trigger. Poison-label.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Linear, LinearConfig, PaddingConfig2d};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{AttackError, BackdoorAttack, fits};
use crate::data::{ImageSet, ImageShape, images_tensor};
use crate::models::host_init::fan_in_uniform;
use crate::optim::adam::Adam;
use crate::optim::{ParamSlots, apply_update};
use crate::train::mix;

use super::host_net::HostConvStack;

/// Registry name.
pub const NAME: &str = "ssba";

/// How the encoder is trained.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SsbaTraining {
    /// Code length (default 8).
    pub bits: usize,
    /// Largest residual per pixel (default 0.05, about 13/255).
    pub eps: f64,
    /// Adam steps (default 400).
    pub iterations: usize,
    /// Images per step (default 64).
    pub batch: usize,
    /// Adam learning rate (default 1e-3).
    pub lr: f64,
    /// Weight of the mean squared residual in the loss (default 1).
    pub residual_weight: f64,
    /// Seed of initialisation, batches, training codes and the attack's code.
    pub seed: u64,
}

impl Default for SsbaTraining {
    fn default() -> Self {
        Self {
            bits: 8,
            eps: 0.05,
            iterations: 400,
            batch: 64,
            lr: 1e-3,
            residual_weight: 1.0,
            seed: 0,
        }
    }
}

const HIDDEN: usize = 16;

/// Stream of [`mix`] for the encoder's and decoder's initial weights.
const INIT_STREAM: u64 = 0x55ba_1417;

/// Residual generator: `[image; code planes] -> eps * tanh(conv(relu(conv(relu(conv)))))`.
#[derive(Module, Debug)]
pub struct SsbaEncoder {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

/// Code reader: two stride-2 convolutions and a linear layer to `bits` logits.
#[derive(Module, Debug)]
pub struct SsbaDecoder {
    conv1: Conv2d,
    conv2: Conv2d,
    fc: Linear,
}

fn conv(i: usize, o: usize, stride: usize, device: &Device) -> Conv2d {
    Conv2dConfig::new([i, o], [3, 3])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .init(device)
}

impl SsbaEncoder {
    fn new(channels: usize, bits: usize, device: &Device) -> Self {
        Self {
            conv1: conv(channels + bits, HIDDEN, 1, device),
            conv2: conv(HIDDEN, HIDDEN, 1, device),
            conv3: conv(HIDDEN, channels, 1, device),
        }
    }

    /// Residuals for images `x` (`[n, c, h, w]`) and codes as planes (`[n, bits, h, w]`, ±1).
    fn forward(&self, x: Tensor<4>, code_planes: Tensor<4>, eps: f64) -> Tensor<4> {
        let h = relu(self.conv1.forward(Tensor::cat(vec![x, code_planes], 1)));
        let h = relu(self.conv2.forward(h));
        tanh(self.conv3.forward(h)).mul_scalar(eps)
    }
}

impl SsbaDecoder {
    fn new(shape: ImageShape, bits: usize, device: &Device) -> Self {
        let (h, w) = (shape.height.div_ceil(4), shape.width.div_ceil(4));
        Self {
            conv1: conv(shape.channels, HIDDEN, 2, device),
            conv2: conv(HIDDEN, HIDDEN, 2, device),
            fc: LinearConfig::new(HIDDEN * h * w, bits).init(device),
        }
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        let h = relu(self.conv2.forward(relu(self.conv1.forward(x))));
        self.fc.forward(h.flatten(1, 3))
    }
}

/// `mean(BCE-with-logits(z, y))`, written stably: `relu(z) - z y + log(1 + exp(-|z|))`.
fn bce_with_logits(z: Tensor<2>, y: Tensor<2>) -> Tensor<1> {
    let softplus_neg_abs = z.clone().abs().neg().exp().add_scalar(1.0).log();
    (relu(z.clone()) - z * y + softplus_neg_abs).mean()
}

/// A trained encoder's weights, run on the host.
#[derive(Debug, Clone)]
struct HostEncoder {
    stack: HostConvStack,
}

impl HostEncoder {
    fn from(encoder: &SsbaEncoder) -> Self {
        Self {
            stack: HostConvStack::from_convs(&[&encoder.conv1, &encoder.conv2, &encoder.conv3]),
        }
    }

    fn residual(&self, image: &[f32], code: &[f32], shape: ImageShape, eps: f32) -> Vec<f32> {
        let (h, w) = (shape.height, shape.width);
        let mut input = image.to_vec();
        for bit in code {
            input.extend(std::iter::repeat_n(*bit, h * w));
        }
        self.stack
            .forward(input, shape.channels + code.len(), h, w)
            .iter()
            .map(|v| v.tanh() * eps)
            .collect()
    }
}

/// The SSBA-style attack: a trained encoder and the fixed code it hides.
#[derive(Debug, Clone)]
pub struct Ssba {
    encoder: HostEncoder,
    /// The hidden code as ±1 values.
    code: Vec<f32>,
    shape: ImageShape,
    eps: f32,
    /// Bit accuracy of the decoder on encoded training images at the end of training.
    pub final_bit_accuracy: f64,
}

impl Ssba {
    /// Trains the encoder and decoder on `train` and fixes the attack's code.
    pub fn train(
        train: &ImageSet,
        config: SsbaTraining,
        device: &Device,
    ) -> Result<Self, AttackError> {
        let invalid = |reason: &str| AttackError::InvalidConfig {
            attack: NAME.into(),
            reason: reason.into(),
        };
        if config.bits == 0 || config.batch == 0 || !(config.eps > 0.0 && config.eps <= 1.0) {
            return Err(invalid("bits and batch must be positive and eps in (0, 1]"));
        }
        if train.is_empty() {
            return Err(invalid("no training images"));
        }
        let shape = train.shape();
        let device = device.clone().autodiff();
        // Initial weights from a host stream of the seed, not burn's process-wide device RNG.
        let mut init = StdRng::seed_from_u64(mix(config.seed, INIT_STREAM, 0));
        let mut encoder = fan_in_uniform(
            SsbaEncoder::new(shape.channels, config.bits, &device),
            &mut init,
        );
        let mut decoder = fan_in_uniform(SsbaDecoder::new(shape, config.bits, &device), &mut init);
        let (mut enc_slots, mut dec_slots) = (ParamSlots::new(), ParamSlots::new());
        let mut rng = StdRng::seed_from_u64(config.seed);
        let (h, w, bits) = (shape.height, shape.width, config.bits);
        let mut accuracy = 0.0;
        for t in 1..=config.iterations.max(1) {
            let n = config.batch.min(train.len());
            let indices: Vec<usize> = (0..n).map(|_| rng.random_range(0..train.len())).collect();
            let codes: Vec<f32> = (0..n * bits)
                .map(|_| if rng.random::<bool>() { 1.0 } else { 0.0 })
                .collect();
            let x = images_tensor(train, &indices, &device);
            let y = Tensor::<2>::from_data(TensorData::new(codes.clone(), [n, bits]), &device);
            let planes = y
                .clone()
                .mul_scalar(2.0)
                .sub_scalar(1.0)
                .reshape([n, bits, 1, 1])
                .repeat_dim(2, h)
                .repeat_dim(3, w);
            let residual = encoder.forward(x.clone(), planes, config.eps);
            let encoded = (x + residual.clone()).clamp(0.0, 1.0);
            let logits = decoder.forward(encoded);
            let loss = bce_with_logits(logits.clone(), y.clone())
                + (residual.clone() * residual)
                    .mean()
                    .mul_scalar(config.residual_weight);
            if t == config.iterations.max(1) {
                let hits: f32 = logits
                    .detach()
                    .greater_elem(0.0)
                    .float()
                    .equal(y.detach())
                    .float()
                    .mean()
                    .into_scalar::<f32>();
                accuracy = f64::from(hits);
            }
            let grads = loss.backward();
            encoder = apply_update(
                encoder,
                &grads,
                &mut Adam::new(config.lr, t as i32),
                &mut enc_slots,
            );
            decoder = apply_update(
                decoder,
                &grads,
                &mut Adam::new(config.lr, t as i32),
                &mut dec_slots,
            );
        }
        let mut code_rng = StdRng::seed_from_u64(config.seed ^ 0x55ba_c0de);
        let code = (0..bits)
            .map(|_| if code_rng.random::<bool>() { 1.0 } else { -1.0 })
            .collect();
        Ok(Self {
            encoder: HostEncoder::from(&encoder.valid()),
            code,
            shape,
            eps: config.eps as f32,
            final_bit_accuracy: accuracy,
        })
    }
}

impl BackdoorAttack for Ssba {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) || shape != self.shape {
            return;
        }
        let residual = self.encoder.residual(image, &self.code, shape, self.eps);
        for ((o, x), r) in out.iter_mut().zip(image).zip(residual) {
            *o = (x + r).clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::two_class_8x8;
    use crate::device::default_device;

    fn images(n: usize) -> ImageSet {
        two_class_8x8(n, |i| ((i * 53) % 97) as f32 / 96.0)
    }

    #[test]
    fn host_encoder_matches_the_trained_network() {
        let device = default_device();
        let encoder = fan_in_uniform(
            SsbaEncoder::new(1, 3, &device),
            &mut StdRng::seed_from_u64(5),
        );
        let set = images(1);
        let code = [1.0f32, -1.0, 1.0];
        let planes = Tensor::<1>::from_data(TensorData::new(code.to_vec(), [3]), &device)
            .reshape([1, 3, 1, 1])
            .repeat_dim(2, 8)
            .repeat_dim(3, 8);
        let x = images_tensor(&set, &[0], &device);
        let expected: Vec<f32> = encoder
            .forward(x, planes, 0.05)
            .into_data()
            .iter::<f32>()
            .collect();
        let got = HostEncoder::from(&encoder).residual(set.image(0), &code, set.shape(), 0.05);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
    }

    #[test]
    fn trigger_is_sample_specific_bounded_and_learnable() {
        let set = images(32);
        let config = SsbaTraining {
            iterations: 120,
            batch: 16,
            lr: 3e-3,
            bits: 4,
            ..SsbaTraining::default()
        };
        let attack = Ssba::train(&set, config, &default_device()).unwrap();
        // The decoder reads the hidden bits better than chance.
        assert!(
            attack.final_bit_accuracy > 0.6,
            "bit accuracy {}",
            attack.final_bit_accuracy
        );
        let (mut a, mut b) = (vec![0.0; 64], vec![0.0; 64]);
        attack.apply_trigger(set.image(0), set.shape(), 0, &mut a);
        attack.apply_trigger(set.image(1), set.shape(), 1, &mut b);
        let ra: Vec<f32> = a.iter().zip(set.image(0)).map(|(t, x)| t - x).collect();
        let rb: Vec<f32> = b.iter().zip(set.image(1)).map(|(t, x)| t - x).collect();
        assert!(ra.iter().all(|r| r.abs() <= 0.05 + 1e-6));
        assert!(ra.iter().any(|r| r.abs() > 1e-4), "no residual");
        assert_ne!(ra, rb, "residuals should depend on the image");
    }
}
