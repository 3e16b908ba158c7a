//! Input-Aware dynamic backdoor (Nguyen and Tran 2020; BackdoorBench `inputaware`).
//!
//! The trigger is a function of the image: a pattern generator G and a mask generator M give
//! `x' = x + m(x) (p(x) - x)`, different for every image. Training has two stages:
//! 1. the mask generator alone, so masks are sparse (`relu(mean(m) - density)`, weight
//!    `lambda_norm`) and diverse (`|x1 - x2| / |m1 - m2|`);
//! 2. the classifier and the pattern generator jointly, the mask generator frozen: in each batch
//!    a fraction `p_attack` gets its own trigger and the target label, a fraction `p_cross` gets
//!    the trigger of *another* image and keeps its label (so a trigger only works on the image it
//!    was made for), the rest stays clean; the generator also minimises the diversity loss.
//!
//! vigil's version, documented where it differs: G and M are three-layer 3x3 convolutional
//! networks (the reference uses U-Net-like encoder-decoders), the mask is the soft
//! `(tanh + 1) / 2` without the reference's hard threshold, the generator uses Adam
//! (the reference: Adam for M, SGD for G), and the joint training has no mid-run resume.
//! Defaults are BackdoorBench's: `p_attack` 0.1, `p_cross` 0.1, `lambda_div` 1,
//! `lambda_norm` 100, `mask_density` 0.032.

use burn::module::Module;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};

use super::host_net::HostConvStack;
use super::{AttackError, BackdoorAttack, TargetRule, fits};
use crate::data::sampler::CycledShuffle;
use crate::data::{ImageSet, ImageShape, Label, images_tensor};
use crate::inference::evaluate;
use crate::loss::{cross_entropy, predictions};
use crate::models::{BnMode, Classifier};
use crate::optim::adam::Adam;
use crate::optim::sgd::Sgd;
use crate::optim::{ParamSlots, apply_update};
use crate::train::{EpochRecord, TrainConfig, TrainObserver, epoch_order};

/// Registry name.
pub const NAME: &str = "input-aware";

/// Hyper-parameters of the Input-Aware attack.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct InputAwareConfig {
    /// Fraction of each batch given its own trigger and the target label.
    pub p_attack: f64,
    /// Fraction of each batch given another image's trigger, label kept.
    pub p_cross: f64,
    /// Weight of the diversity loss.
    pub lambda_div: f64,
    /// Weight of the mask-density loss.
    pub lambda_norm: f64,
    /// Target mean of the mask.
    pub mask_density: f64,
    /// Steps of mask-generator pre-training.
    pub mask_iterations: usize,
    /// Adam learning rate of both generators.
    pub generator_lr: f64,
    /// Seed of the generators' initialisation and of the extra batches.
    pub seed: u64,
}

impl Default for InputAwareConfig {
    fn default() -> Self {
        Self {
            p_attack: 0.1,
            p_cross: 0.1,
            lambda_div: 1.0,
            lambda_norm: 100.0,
            mask_density: 0.032,
            mask_iterations: 300,
            generator_lr: 0.01,
            seed: 0,
        }
    }
}

const HIDDEN: usize = 16;
const EPS: f64 = 1e-7;

/// Three 3x3 convolutions with ReLU between them: a trigger generator.
#[derive(Module, Debug)]
pub struct TriggerNet {
    conv1: Conv2d,
    conv2: Conv2d,
    conv3: Conv2d,
}

impl TriggerNet {
    fn new(c_in: usize, c_out: usize, device: &Device) -> Self {
        let conv = |i, o| {
            Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        };
        Self {
            conv1: conv(c_in, HIDDEN),
            conv2: conv(HIDDEN, HIDDEN),
            conv3: conv(HIDDEN, c_out),
        }
    }

    /// `(tanh(net(x)) + 1) / 2`, in `[0, 1]`.
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = relu(self.conv2.forward(relu(self.conv1.forward(x))));
        tanh(self.conv3.forward(h)).add_scalar(1.0).div_scalar(2.0)
    }

    fn host(&self) -> HostConvStack {
        HostConvStack::from_convs(&[&self.conv1, &self.conv2, &self.conv3])
    }
}

/// `x + m (p - x)`.
fn blend(x: Tensor<4>, pattern: Tensor<4>, mask: Tensor<4>) -> Tensor<4> {
    x.clone() + mask * (pattern - x)
}

/// Mean over samples of `mean|a1 - a2| / (mean|b1 - b2| + eps)`: small when different images
/// get different triggers.
fn diversity(a1: Tensor<4>, a2: Tensor<4>, b1: Tensor<4>, b2: Tensor<4>) -> Tensor<1> {
    let [n, _, _, _] = a1.dims();
    let da: Tensor<2> = (a1 - a2).abs().flatten(1, 3);
    let db: Tensor<2> = (b1 - b2).abs().flatten(1, 3);
    (da.mean_dim(1) / db.mean_dim(1).add_scalar(EPS))
        .reshape([n])
        .mean()
}

/// The trained Input-Aware trigger, run on the host.
#[derive(Debug, Clone)]
pub struct InputAware {
    pattern: HostConvStack,
    mask: HostConvStack,
    shape: ImageShape,
}

impl BackdoorAttack for InputAware {
    fn name(&self) -> &'static str {
        NAME
    }

    fn apply_trigger(&self, image: &[f32], shape: ImageShape, _sample: usize, out: &mut [f32]) {
        if !fits(image, shape, out) || shape != self.shape {
            return;
        }
        let (c, h, w) = (shape.channels, shape.height, shape.width);
        let squash = |v: f32| (v.tanh() + 1.0) / 2.0;
        let pattern = self.pattern.forward(image.to_vec(), c, h, w);
        let mask = self.mask.forward(image.to_vec(), c, h, w);
        for (i, o) in out.iter_mut().enumerate() {
            let m = squash(mask[i % (h * w)]);
            let x = image[i];
            *o = (x + m * (squash(pattern[i]) - x)).clamp(0.0, 1.0);
        }
    }
}

/// How a joint training run ended.
pub enum InputAwareOutcome {
    /// Trained: the trigger and the per-epoch records.
    Finished(InputAware, Vec<EpochRecord>),
    /// Stopped by the observer; this attack cannot resume mid-run yet.
    Interrupted,
}

/// Trains `classifier` with the Input-Aware poisoning (both stages) under `train_config`'s
/// optimiser and schedule, evaluating clean accuracy on `eval_set` after every epoch.
// The same inputs as `train::train` plus the attack's rule and configuration.
#[allow(clippy::too_many_arguments)]
pub fn train_input_aware(
    classifier: &mut Classifier,
    train: &ImageSet,
    eval_set: &ImageSet,
    rule: TargetRule,
    config: InputAwareConfig,
    train_config: &TrainConfig,
    device: &Device,
    observer: &mut impl TrainObserver,
) -> Result<InputAwareOutcome, AttackError> {
    let invalid = |reason: String| AttackError::InvalidConfig {
        attack: NAME.into(),
        reason,
    };
    if !(0.0..=1.0).contains(&config.p_attack)
        || !(0.0..=1.0).contains(&config.p_cross)
        || config.p_attack + config.p_cross > 1.0
    {
        return Err(invalid(
            "p_attack and p_cross must lie in [0, 1] and sum to at most 1".into(),
        ));
    }
    train_config
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    let shape = train.shape();
    let k = train.num_classes();
    let device = device.clone().autodiff();
    device.seed(config.seed);
    let c = shape.channels;
    let mut generator = TriggerNet::new(c, c, &device);
    let mut mask_net = TriggerNet::new(c, 1, &device);
    let mut extra = CycledShuffle::new((0..train.len()).collect(), config.seed);

    // Stage 1: sparse, diverse masks.
    let mut mask_slots = ParamSlots::new();
    let batch = train_config.batch_size;
    for t in 1..=config.mask_iterations {
        let x1 = images_tensor(train, extra.next_batch(batch), &device);
        let x2 = images_tensor(train, extra.next_batch(batch), &device);
        let m1 = mask_net.forward(x1.clone());
        let m2 = mask_net.forward(x2.clone());
        let density =
            relu(m1.clone().mean().sub_scalar(config.mask_density)).mul_scalar(config.lambda_norm);
        let loss = density + diversity(x1, x2, m1, m2).mul_scalar(config.lambda_div);
        let grads = loss.backward();
        mask_net = apply_update(
            mask_net,
            &grads,
            &mut Adam::new(config.generator_lr, t as i32),
            &mut mask_slots,
        );
    }
    let mask_net = mask_net.no_grad();

    // Stage 2: classifier and pattern generator together.
    let steps_per_epoch = train.len().div_ceil(batch);
    let total = steps_per_epoch * train_config.epochs;
    let (mut slots, mut gen_slots) = (ParamSlots::new(), ParamSlots::new());
    let mut history = Vec::new();
    let mut step = 0;
    for epoch in 0..train_config.epochs {
        let started = std::time::Instant::now();
        observer.epoch_started(epoch, steps_per_epoch, 0);
        let order = epoch_order(train.len(), train_config.seed, epoch);
        let (mut loss_sum, mut correct_sum, mut seen) = (0.0, 0usize, 0usize);
        let mut lr = 0.0;
        for (b, chunk) in order.chunks(batch).enumerate() {
            let n = chunk.len();
            let n_bd = (n as f64 * config.p_attack) as usize;
            let n_cross = (n as f64 * config.p_cross) as usize;
            let x = images_tensor(train, chunk, &device);
            let mut labels: Vec<Label> = chunk.iter().map(|&i| train.label(i)).collect();
            let mut parts = Vec::new();
            let mut div = None;
            let others = images_tensor(train, extra.next_batch(n_cross.max(n_bd).max(1)), &device);
            if n_bd > 0 {
                let xb = x.clone().narrow(0, 0, n_bd);
                let pb = generator.forward(xb.clone());
                parts.push(blend(xb.clone(), pb.clone(), mask_net.forward(xb.clone())));
                for label in labels.iter_mut().take(n_bd) {
                    *label = rule.target_of(*label, k);
                }
                let m = n_bd.min(others.dims()[0]);
                let x2 = others.clone().narrow(0, 0, m);
                let p2 = generator.forward(x2.clone());
                div = Some(diversity(xb.narrow(0, 0, m), x2, pb.narrow(0, 0, m), p2));
            }
            if n_cross > 0 {
                let xc = x.clone().narrow(0, n_bd, n_cross);
                let x2 = others.clone().narrow(0, 0, n_cross);
                let p2 = generator.forward(x2.clone());
                parts.push(blend(xc, p2, mask_net.forward(x2)));
            }
            if n_bd + n_cross < n {
                parts.push(x.narrow(0, n_bd + n_cross, n - n_bd - n_cross));
            }
            let inputs = Tensor::cat(parts, 0);
            let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
            let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), &device);
            let logits = classifier.forward(inputs, BnMode::Train);
            let correct: i64 = predictions(logits.clone().detach())
                .equal(targets.clone())
                .int()
                .sum()
                .into_scalar::<i64>();
            let ce = cross_entropy(logits, targets);
            let ce_value = f64::from(ce.clone().into_scalar::<f32>());
            let loss = match div {
                Some(d) => ce + d.mul_scalar(config.lambda_div),
                None => ce,
            };
            let grads = loss.backward();
            let hyper = train_config.schedule.at(step, total, steps_per_epoch);
            lr = hyper.lr;
            let mut sgd = Sgd {
                config: train_config.sgd,
                lr: hyper.lr,
                momentum: hyper.momentum.unwrap_or(train_config.sgd.momentum),
            };
            classifier.network =
                apply_update(classifier.network.clone(), &grads, &mut sgd, &mut slots);
            generator = apply_update(
                generator,
                &grads,
                &mut Adam::new(config.generator_lr, step as i32 + 1),
                &mut gen_slots,
            );
            step += 1;
            loss_sum += ce_value * n as f64;
            correct_sum += correct as usize;
            seen += n;
            observer.batch_finished(
                b,
                loss_sum / seen as f64,
                correct_sum as f64 / seen as f64,
                lr,
            );
            if observer.should_stop() {
                return Ok(InputAwareOutcome::Interrupted);
            }
        }
        observer.evaluating();
        let eval = evaluate(
            classifier,
            eval_set,
            None,
            train_config.eval_batch_size,
            BnMode::Eval,
            &device,
        );
        let record = EpochRecord {
            epoch: epoch + 1,
            train_loss: loss_sum / seen.max(1) as f64,
            train_accuracy: correct_sum as f64 / seen.max(1) as f64,
            test_loss: eval.mean_loss(),
            test_accuracy: eval.accuracy(),
            lr,
            seconds: started.elapsed().as_secs_f64(),
        };
        observer.epoch_finished(&record);
        history.push(record);
    }
    let generator = generator.valid();
    let mask_net = mask_net.valid();
    Ok(InputAwareOutcome::Finished(
        InputAware {
            pattern: generator.host(),
            mask: mask_net.host(),
            shape,
        },
        history,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::default_device;
    use crate::models::{Architecture, ModelSpec};
    use crate::optim::schedule::Schedule;
    use crate::optim::sgd::SgdConfig;
    use crate::train::Silent;

    fn images(n: usize) -> ImageSet {
        let pixels: Vec<f32> = (0..n * 64)
            .map(|i| ((i * 29 + i / 64 * 7) % 89) as f32 / 88.0)
            .collect();
        let labels = (0..n).map(|i| (i % 2) as u16).collect();
        ImageSet::new(
            pixels,
            labels,
            ImageShape::new(1, 8, 8),
            vec!["a".into(), "b".into()],
            "t",
        )
        .unwrap()
    }

    #[test]
    fn host_trigger_matches_the_networks() {
        let device = default_device();
        device.seed(3);
        let (pattern, mask) = (
            TriggerNet::new(1, 1, &device),
            TriggerNet::new(1, 1, &device),
        );
        let set = images(1);
        let attack = InputAware {
            pattern: pattern.host(),
            mask: mask.host(),
            shape: set.shape(),
        };
        let x = images_tensor(&set, &[0], &device);
        let expected: Vec<f32> = blend(x.clone(), pattern.forward(x.clone()), mask.forward(x))
            .into_data()
            .iter::<f32>()
            .collect();
        let mut got = vec![0.0; 64];
        attack.apply_trigger(set.image(0), set.shape(), 0, &mut got);
        for (g, e) in got.iter().zip(&expected) {
            assert!((g - e).abs() < 1e-5, "{g} vs {e}");
        }
    }

    #[test]
    fn trains_and_gives_image_specific_triggers_in_range() {
        let device = default_device();
        let train = images(48);
        let spec = ModelSpec {
            architecture: Architecture::SmallCnn {
                width: 4,
                hidden: 8,
            },
            input_shape: [1, 8, 8],
            class_names: vec!["a".into(), "b".into()],
            normalization: None,
        };
        let train_device = device.clone().autodiff();
        train_device.seed(1);
        let mut classifier = Classifier::new(spec, &train_device).unwrap();
        let train_config = TrainConfig {
            dataset: "t".into(),
            epochs: 2,
            batch_size: 16,
            eval_batch_size: 16,
            schedule: Schedule::Constant { lr: 0.05 },
            sgd: SgdConfig::default(),
            crop_padding: 0,
            horizontal_flip: false,
            seed: 0,
            train_limit: None,
            test_limit: None,
        };
        let config = InputAwareConfig {
            mask_iterations: 20,
            p_attack: 0.25,
            p_cross: 0.25,
            ..InputAwareConfig::default()
        };
        let rule = TargetRule::AllToOne { target: 1 };
        let outcome = train_input_aware(
            &mut classifier,
            &train,
            &train,
            rule,
            config,
            &train_config,
            &device,
            &mut Silent,
        )
        .unwrap();
        let InputAwareOutcome::Finished(attack, history) = outcome else {
            panic!("not interrupted")
        };
        assert_eq!(history.len(), 2);
        let (mut a, mut b) = (vec![0.0; 64], vec![0.0; 64]);
        attack.apply_trigger(train.image(0), train.shape(), 0, &mut a);
        attack.apply_trigger(train.image(1), train.shape(), 1, &mut b);
        assert!(a.iter().chain(&b).all(|v| (0.0..=1.0).contains(v)));
        let da: Vec<f32> = a.iter().zip(train.image(0)).map(|(t, x)| t - x).collect();
        let db: Vec<f32> = b.iter().zip(train.image(1)).map(|(t, x)| t - x).collect();
        assert!(da.iter().any(|d| d.abs() > 1e-4), "trigger changes nothing");
        assert_ne!(da, db, "triggers should differ between images");
    }
}
