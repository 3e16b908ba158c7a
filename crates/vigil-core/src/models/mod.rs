//! Image classifiers: the architectures vigil trains, attacks and inspects.
//!
//! Every network names its parameters as the PyTorch reference model does
//! (`layer1.0.bn1.running_mean`), so a PyTorch `state_dict` saved as safetensors loads unchanged
//! (see [`crate::checkpoint`]). A [`Classifier`] pairs a [`Network`] with its [`ModelSpec`] and
//! applies the input normalisation inside `forward`, so attacks and triggers always work in
//! `[0, 1]` pixel space.

pub mod batch_norm;
pub mod flops;
pub mod host_init;
mod layers;
pub mod preact_resnet;
pub mod resnet;
pub mod small_cnn;

use burn::module::Module;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

pub use batch_norm::{BatchNorm2d, BnMode};
pub use preact_resnet::{PreActHead, PreActResNet18};
pub use resnet::ResNet18;
pub use small_cnn::SmallCnn;

/// Errors in describing or building a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The input shape does not suit the architecture.
    #[error("{architecture} needs {needs}, got input {c}x{h}x{w}", c = .input[0], h = .input[1], w = .input[2])]
    UnsupportedInput {
        /// Architecture name.
        architecture: String,
        /// What it needs, in words.
        needs: String,
        /// The offending `[channels, height, width]`.
        input: [usize; 3],
    },
    /// A size that must be positive is zero, or a list has the wrong length.
    #[error("invalid model spec: {0}")]
    InvalidSpec(String),
    /// The architecture name is not one vigil knows.
    #[error(
        "unknown architecture `{0}` (known: small-cnn, resnet18, preact-resnet18, preact-resnet18-halo)"
    )]
    UnknownArchitecture(String),
}

/// Which network, with its size knobs. Serialised into every checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "name", rename_all = "kebab-case")]
pub enum Architecture {
    /// [`SmallCnn`]: conv(`width`)-conv(2 `width`)-fc(`hidden`).
    SmallCnn {
        /// Channels of the first convolution (32 in the reference).
        width: usize,
        /// Units of the hidden fully-connected layer (128).
        hidden: usize,
    },
    /// [`ResNet18`], HALO's CIFAR-style ResNet-18.
    #[serde(rename = "resnet18")]
    ResNet18 {
        /// Stem channels (64).
        width: usize,
    },
    /// [`PreActResNet18`] with BackdoorBench's head (used by MAD-FA).
    #[serde(rename = "preact-resnet18")]
    PreActResNet18 {
        /// Stem channels (64).
        width: usize,
    },
    /// [`PreActResNet18`] with HALO's head (final BatchNorm, 4x4 pool).
    #[serde(rename = "preact-resnet18-halo")]
    PreActResNet18Halo {
        /// Stem channels (64).
        width: usize,
    },
}

impl Architecture {
    /// The architecture at the reference size, by registry name.
    pub fn by_name(name: &str) -> Result<Self, ModelError> {
        Ok(match name {
            "small-cnn" => Architecture::SmallCnn {
                width: 32,
                hidden: 128,
            },
            "resnet18" => Architecture::ResNet18 { width: 64 },
            "preact-resnet18" => Architecture::PreActResNet18 { width: 64 },
            "preact-resnet18-halo" => Architecture::PreActResNet18Halo { width: 64 },
            other => return Err(ModelError::UnknownArchitecture(other.to_string())),
        })
    }

    /// The registry name.
    pub fn name(&self) -> &'static str {
        match self {
            Architecture::SmallCnn { .. } => "small-cnn",
            Architecture::ResNet18 { .. } => "resnet18",
            Architecture::PreActResNet18 { .. } => "preact-resnet18",
            Architecture::PreActResNet18Halo { .. } => "preact-resnet18-halo",
        }
    }

    /// Replaces the channel width (keeps `hidden` for the small CNN).
    pub fn with_width(self, width: usize) -> Self {
        match self {
            Architecture::SmallCnn { hidden, .. } => Architecture::SmallCnn { width, hidden },
            Architecture::ResNet18 { .. } => Architecture::ResNet18 { width },
            Architecture::PreActResNet18 { .. } => Architecture::PreActResNet18 { width },
            Architecture::PreActResNet18Halo { .. } => Architecture::PreActResNet18Halo { width },
        }
    }

    /// Whether the network has BatchNorm layers (and so cares about [`BnMode`]).
    pub fn has_batch_norm(&self) -> bool {
        !matches!(self, Architecture::SmallCnn { .. })
    }
}

/// Per-channel input normalisation `(x - mean) / std`, applied inside the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Normalization {
    /// Channel means.
    pub mean: Vec<f32>,
    /// Channel standard deviations.
    pub std: Vec<f32>,
}

/// Everything needed to rebuild a classifier before its weights are loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelSpec {
    /// Network and size.
    pub architecture: Architecture,
    /// `[channels, height, width]` of one input.
    pub input_shape: [usize; 3],
    /// Class names; their count is the number of logits.
    pub class_names: Vec<String>,
    /// Input normalisation, if the model expects normalised inputs.
    pub normalization: Option<Normalization>,
}

impl ModelSpec {
    /// Number of output classes.
    pub fn num_classes(&self) -> usize {
        self.class_names.len()
    }

    /// Checks that the network can be built for this input and class count.
    pub fn validate(&self) -> Result<(), ModelError> {
        let [c, h, w] = self.input_shape;
        let unsupported = |needs: &str| ModelError::UnsupportedInput {
            architecture: self.architecture.name().to_string(),
            needs: needs.to_string(),
            input: self.input_shape,
        };
        if c == 0 || h == 0 || w == 0 {
            return Err(unsupported("a non-empty input"));
        }
        if self.class_names.len() < 2 {
            return Err(ModelError::InvalidSpec(format!(
                "need at least 2 classes, got {}",
                self.class_names.len()
            )));
        }
        match self.architecture {
            Architecture::SmallCnn { width, hidden } => {
                if width == 0 || hidden == 0 {
                    return Err(ModelError::InvalidSpec(
                        "width and hidden must be > 0".into(),
                    ));
                }
                if h % 4 != 0 || w % 4 != 0 || h < 4 || w < 4 {
                    return Err(unsupported("height and width divisible by 4"));
                }
            }
            Architecture::ResNet18 { width }
            | Architecture::PreActResNet18 { width }
            | Architecture::PreActResNet18Halo { width } => {
                if width == 0 {
                    return Err(ModelError::InvalidSpec("width must be > 0".into()));
                }
                let halo_pool = !matches!(self.architecture, Architecture::PreActResNet18 { .. });
                // Three stride-2 stages: side s -> ceil(s / 8); the 4x4 pool needs exactly 4.
                if halo_pool && (h.div_ceil(8) != 4 || w.div_ceil(8) != 4) {
                    return Err(unsupported(
                        "a side of 25..32 pixels (the 4x4 average pool)",
                    ));
                }
            }
        }
        if let Some(norm) = &self.normalization
            && (norm.mean.len() != c || norm.std.len() != c || norm.std.iter().any(|s| *s <= 0.0))
        {
            return Err(ModelError::InvalidSpec(format!(
                "normalisation needs {c} means and {c} positive stds"
            )));
        }
        Ok(())
    }
}

/// The rest of a network after its last convolution: that convolution's output to the logits
/// ([`Network::split_at_last_conv`]).
pub type AfterLastConv<'a> = Box<dyn Fn(Tensor<4>) -> Tensor<2> + 'a>;

/// The networks vigil knows, as one module type so code can hold any of them.
#[derive(Module, Debug)]
pub enum Network {
    /// See [`SmallCnn`].
    SmallCnn(SmallCnn),
    /// See [`ResNet18`].
    ResNet18(ResNet18),
    /// See [`PreActResNet18`] (either head).
    PreActResNet18(PreActResNet18),
}

impl Network {
    /// Logits for a batch of (already normalised) inputs.
    pub fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        match self {
            Network::SmallCnn(net) => net.forward(x),
            Network::ResNet18(net) => net.forward(x, bn),
            Network::PreActResNet18(net) => net.forward(x, bn),
        }
    }

    /// The penultimate representation (the classifier head's input), `[n, features]`.
    pub fn features(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        match self {
            Network::SmallCnn(net) => net.features(x),
            Network::ResNet18(net) => net.features(x, bn),
            Network::PreActResNet18(net) => net.features(x, bn),
        }
    }

    /// The last convolution's output for (normalised) inputs and the rest of the network from
    /// it to the logits, skip connections held fixed: the rest applied to the first is
    /// [`Network::forward`]. Grad-CAM differentiates the logits with respect to the first.
    pub fn split_at_last_conv(&self, x: Tensor<4>, bn: BnMode) -> (Tensor<4>, AfterLastConv<'_>) {
        match self {
            Network::SmallCnn(net) => {
                let (last_conv, rest) = net.split_at_last_conv(x);
                (last_conv, Box::new(move |a| net.fc2.forward(rest(a))))
            }
            Network::ResNet18(net) => {
                let (last_conv, rest) = net.split_at_last_conv(x, bn);
                (last_conv, Box::new(move |a| net.linear.forward(rest(a))))
            }
            Network::PreActResNet18(net) => {
                let (last_conv, rest) = net.split_at_last_conv(x, bn);
                (last_conv, Box::new(move |a| net.linear.forward(rest(a))))
            }
        }
    }

    /// Every BatchNorm layer in PyTorch's `named_modules()` order; empty for the small CNN.
    pub fn batch_norms_mut(&mut self) -> Vec<&mut BatchNorm2d> {
        match self {
            Network::SmallCnn(_) => Vec::new(),
            Network::ResNet18(net) => net.batch_norms_mut(),
            Network::PreActResNet18(net) => net.batch_norms_mut(),
        }
    }

    /// The classifier head's weight as `[features, classes]` (burn's Linear layout).
    pub fn head_weight(&self) -> Tensor<2> {
        match self {
            Network::SmallCnn(net) => net.fc2.weight.val(),
            Network::ResNet18(net) => net.linear.weight.val(),
            Network::PreActResNet18(net) => net.linear.weight.val(),
        }
    }

    /// The classifier head's bias, `[classes]`, if it has one.
    pub fn head_bias(&self) -> Option<Tensor<1>> {
        let bias = match self {
            Network::SmallCnn(net) => &net.fc2.bias,
            Network::ResNet18(net) => &net.linear.bias,
            Network::PreActResNet18(net) => &net.linear.bias,
        };
        bias.as_ref().map(|b| b.val())
    }
}

/// A network, its spec, and its input normalisation: what vigil trains and inspects.
#[derive(Debug, Clone)]
pub struct Classifier {
    /// The parameters live here; optimisers and samplers map over this module.
    pub network: Network,
    /// How to rebuild it.
    pub spec: ModelSpec,
}

impl Classifier {
    /// A freshly initialised classifier. Seed the device first for a reproducible draw.
    pub fn new(spec: ModelSpec, device: &Device) -> Result<Self, ModelError> {
        spec.validate()?;
        let [c, _, _] = spec.input_shape;
        let k = spec.num_classes();
        let network =
            match spec.architecture {
                Architecture::SmallCnn { width, hidden } => {
                    Network::SmallCnn(SmallCnn::new(spec.input_shape, k, width, hidden, device))
                }
                Architecture::ResNet18 { width } => {
                    Network::ResNet18(ResNet18::new(c, k, width, device))
                }
                Architecture::PreActResNet18 { width } => Network::PreActResNet18(
                    PreActResNet18::new(c, k, width, PreActHead::BackdoorBench, device),
                ),
                Architecture::PreActResNet18Halo { width } => Network::PreActResNet18(
                    PreActResNet18::new(c, k, width, PreActHead::Halo, device),
                ),
            };
        Ok(Self { network, spec })
    }

    /// Logits for a batch of `[0, 1]` images; normalisation is applied here.
    pub fn forward(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        self.network.forward(self.normalize(x), bn)
    }

    /// Penultimate features of a batch of `[0, 1]` images.
    pub fn features(&self, x: Tensor<4>, bn: BnMode) -> Tensor<2> {
        self.network.features(self.normalize(x), bn)
    }

    /// [`Network::split_at_last_conv`] for a batch of `[0, 1]` images (normalised here).
    pub fn split_at_last_conv(&self, x: Tensor<4>, bn: BnMode) -> (Tensor<4>, AfterLastConv<'_>) {
        self.network.split_at_last_conv(self.normalize(x), bn)
    }

    /// Applies the spec's normalisation (identity without one).
    pub fn normalize(&self, x: Tensor<4>) -> Tensor<4> {
        let Some(norm) = &self.spec.normalization else {
            return x;
        };
        let device = x.device();
        let c = norm.mean.len();
        let stat = |v: &[f32]| {
            Tensor::<1>::from_data(TensorData::new(v.to_vec(), [c]), &device).reshape([1, c, 1, 1])
        };
        (x - stat(&norm.mean)) / stat(&norm.std)
    }

    /// Number of scalar parameters (buffers included).
    pub fn num_params(&self) -> usize {
        self.network.num_params()
    }

    /// An independent copy: same values, own BatchNorm running statistics.
    ///
    /// `clone()` is not one: burn's `RunningState` keeps its value behind an `Arc`, so a clone
    /// shares the running mean and variance with the original, and stepping the clone in
    /// [`BnMode::Train`] moves the original's statistics too. A sampler's w* and a saved "best"
    /// model need this instead. Parameters keep their ids and whether they track gradients.
    pub fn deep_copy(&self) -> Classifier {
        // `valid()` rebuilds every RunningState around a fresh Arc; `train()` restores each
        // parameter's gradient flag and forking moves it back to the original autodiff device.
        let device = self.network.devices().into_iter().next();
        let mut network = self.network.valid();
        if let Some(device) = device
            && device.is_autodiff()
        {
            network = network.train().fork(&device);
        }
        Classifier {
            network,
            spec: self.spec.clone(),
        }
    }
}

/// Test models whose weights come from a host RNG, not burn's process-wide device RNG (which
/// tests running in parallel would reseed under each other).
#[cfg(test)]
pub(crate) mod test_util {
    use burn::module::{Module, ModuleMapper, Param};
    use burn::tensor::{Device, Tensor};
    use rand::Rng;

    use super::host_init::redraw;
    use super::{Classifier, ModelSpec};

    /// A classifier for `spec` with every float tensor uniform in `[-0.3, 0.3)` from `rng`. For
    /// models without BatchNorm (its running variance would be drawn negative too).
    pub(crate) fn host_seeded(spec: ModelSpec, rng: &mut impl Rng, device: &Device) -> Classifier {
        struct Uniform<'a, R>(&'a mut R);
        impl<R: Rng> ModuleMapper for Uniform<'_, R> {
            fn map_float<const D: usize>(&mut self, param: Param<Tensor<D>>) -> Param<Tensor<D>> {
                redraw(param, |dims| {
                    let n = dims.iter().product::<usize>();
                    (0..n).map(|_| self.0.random_range(-0.3..0.3)).collect()
                })
            }
        }
        let mut classifier = Classifier::new(spec, device).expect("a valid test spec");
        classifier.network = classifier.network.map(&mut Uniform(rng));
        classifier
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::autodiff_device;
    use burn::tensor::Distribution;

    fn running_means(classifier: &Classifier) -> Vec<f32> {
        let Network::ResNet18(net) = &classifier.network else {
            unreachable!("the test builds a ResNet");
        };
        net.bn1
            .running_mean
            .value_sync()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap()
    }

    #[test]
    fn deep_copy_has_its_own_batch_norm_statistics() {
        let device = autodiff_device();
        let spec = ModelSpec {
            architecture: Architecture::ResNet18 { width: 4 },
            input_shape: [1, 28, 28],
            class_names: vec!["a".into(), "b".into()],
            normalization: None,
        };
        let original = Classifier::new(spec, &device).unwrap();
        let before = running_means(&original);
        let x = Tensor::<4>::random([4, 1, 28, 28], Distribution::Default, &device);

        // The hazard this guards against: a plain clone shares the statistics.
        let shallow = original.clone();
        let _ = shallow.forward(x.clone(), BnMode::Train);
        let moved = running_means(&original);
        assert_ne!(
            before, moved,
            "clone() no longer shares running stats; revisit deep_copy"
        );

        let copy = original.deep_copy();
        let _ = copy.forward(x, BnMode::Train);
        assert_eq!(
            running_means(&original),
            moved,
            "stepping the copy moved the original"
        );
        assert_ne!(
            running_means(&copy),
            moved,
            "the copy's own statistics did not move"
        );
        assert!(copy.network.devices()[0].is_autodiff());
        let Network::ResNet18(net) = &copy.network else {
            unreachable!()
        };
        assert!(net.conv1.weight.val().is_require_grad());
    }
}
