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
//! (the reference: Adam for M, SGD for G). The joint training resumes mid-epoch like any vigil
//! run: the generators and their Adam state are checkpointed beside the classifier.
//! Defaults are BackdoorBench's: `p_attack` 0.1, `p_cross` 0.1, `lambda_div` 1,
//! `lambda_norm` 100, `mask_density` 0.032.

use std::path::Path;

use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::tensor::activation::{relu, tanh};
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::host_net::HostConvStack;
use super::{AttackError, BackdoorAttack, TargetRule, fits};
use crate::checkpoint::{self, TensorFile};
use crate::data::sampler::CycledShuffle;
use crate::data::{ImageSet, ImageShape, Label, images_tensor};
use crate::loss::cross_entropy;
use crate::models::{BnMode, Classifier};
use crate::optim::adam::{self, Adam};
use crate::optim::{ParamSlots, apply_update};
use crate::progress::Progress;
use crate::train::{
    STEP_KEY, StepAt, StepRule, StepStats, TrainConfig, TrainError, TrainEvent, TrainOutcome,
    TrainState, count_correct, files as train_files, finite_loss, metadata_step, sgd_step,
    tensor_file_step,
};

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
    /// Weights drawn from `rng` (PyTorch's default conv initialisation: uniform in
    /// `+-1/sqrt(fan_in)` for weights and biases), so the generators do not depend on burn's
    /// process-wide device RNG.
    fn new(c_in: usize, c_out: usize, device: &Device, rng: &mut StdRng) -> Self {
        let mut conv = |i: usize, o: usize| {
            let bound = 1.0 / ((i * 9) as f32).sqrt();
            let mut draw = |n: usize| -> Vec<f32> {
                (0..n).map(|_| rng.random_range(-bound..bound)).collect()
            };
            let mut conv = Conv2dConfig::new([i, o], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device);
            conv.weight = Param::from_tensor(Tensor::from_data(
                TensorData::new(draw(o * i * 9), [o, i, 3, 3]),
                device,
            ));
            conv.bias = Some(Param::from_tensor(Tensor::from_data(
                TensorData::new(draw(o), [o]),
                device,
            )));
            conv
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
    /// Trained: the trigger (the per-epoch records are in the run's [`TrainState`]).
    Finished(InputAware),
    /// Stopped by its [`Progress`] after checkpointing; calling again with the loaded state resumes.
    Interrupted,
}

/// The two generators, saved together in the resume folder.
#[derive(Module, Debug)]
struct TriggerNets {
    pattern: TriggerNet,
    mask: TriggerNet,
}

/// Resume files of the generators, beside the classifier's in `resume/`.
const NETS_FILE: &str = "trigger_nets.safetensors";
const NETS_OPTIMIZER_FILE: &str = "trigger_optimizer.safetensors";

/// How many images of a batch of `n` get their own trigger, and how many another image's.
fn batch_split(n: usize, config: &InputAwareConfig) -> (usize, usize) {
    (
        (n as f64 * config.p_attack) as usize,
        (n as f64 * config.p_cross) as usize,
    )
}

/// Size of the batch of other images a joint step of `n` images draws.
fn extra_draw(n: usize, config: &InputAwareConfig) -> usize {
    let (n_bd, n_cross) = batch_split(n, config);
    n_cross.max(n_bd).max(1)
}

/// Trains `classifier` with the Input-Aware poisoning (both stages) under `state`'s optimiser and
/// schedule, evaluating clean accuracy on `eval_set` after every epoch, and keeps the run folder
/// `run_dir` as [`train::train`](crate::train::train) does (model, metrics, `resume/`), plus the
/// generators and their Adam state in `resume/`. A resumed state (`state.step > 0`, with the
/// classifier and `slots` from [`load_resume`](crate::train::load_resume)) continues exactly: the
/// generators are reloaded and the extra-batch sampler is replayed to where it stood.
// The same inputs as `train::train` plus the attack's rule and configuration.
#[allow(clippy::too_many_arguments)]
pub fn train_input_aware(
    classifier: &mut Classifier,
    slots: &mut ParamSlots,
    state: &mut TrainState,
    train: &ImageSet,
    eval_set: &ImageSet,
    rule: TargetRule,
    config: InputAwareConfig,
    run_dir: &Path,
    device: &Device,
    progress: &mut impl for<'e> Progress<TrainEvent<'e>>,
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
    let train_config = state.config.clone();
    train_config
        .validate()
        .map_err(|e| invalid(e.to_string()))?;
    let shape = train.shape();
    let device = device.clone().autodiff();
    let c = shape.channels;
    let mut init = StdRng::seed_from_u64(config.seed);
    let mut generator = TriggerNet::new(c, c, &device, &mut init);
    let mut mask_net = TriggerNet::new(c, 1, &device, &mut init);
    let mut extra = CycledShuffle::new((0..train.len()).collect(), config.seed);
    let batch = train_config.batch_size;
    let steps_per_epoch = train.len().div_ceil(batch);
    let mut gen_slots = ParamSlots::new();

    if state.step > 0 {
        (generator, mask_net) =
            load_generators(run_dir, generator, mask_net, &mut gen_slots, state.step)?;
        // Replay the extra batches drawn so far: stage 1's, then one per joint step.
        for _ in 0..2 * config.mask_iterations {
            extra.next_batch(batch);
        }
        for s in 0..state.step {
            let b = s % steps_per_epoch;
            extra.next_batch(extra_draw(batch.min(train.len() - b * batch), &config));
        }
    } else {
        // Stage 1: sparse, diverse masks.
        let mut mask_slots = ParamSlots::new();
        for t in 1..=config.mask_iterations {
            let x1 = images_tensor(train, extra.next_batch(batch), &device);
            let x2 = images_tensor(train, extra.next_batch(batch), &device);
            let m1 = mask_net.forward(x1.clone());
            let m2 = mask_net.forward(x2.clone());
            let density = relu(m1.clone().mean().sub_scalar(config.mask_density))
                .mul_scalar(config.lambda_norm);
            let loss = density + diversity(x1, x2, m1, m2).mul_scalar(config.lambda_div);
            let grads = loss.backward();
            mask_net = apply_update(
                mask_net,
                &grads,
                &mut Adam::new(config.generator_lr, t as i32),
                &mut mask_slots,
            );
        }
    }
    let mut joint = JointStep {
        train,
        rule,
        config,
        train_config: &train_config,
        generator,
        mask_net: mask_net.no_grad(),
        gen_slots,
        extra,
    };
    // Stage 2: classifier and pattern generator together, under the one training loop.
    let outcome = crate::train::run(
        classifier,
        slots,
        state,
        train.len(),
        eval_set,
        run_dir,
        &device,
        progress,
        &mut joint,
    )?;
    Ok(match outcome {
        TrainOutcome::Interrupted => InputAwareOutcome::Interrupted,
        TrainOutcome::Finished => InputAwareOutcome::Finished(InputAware {
            pattern: joint.generator.valid().host(),
            mask: joint.mask_net.valid().host(),
            shape,
        }),
    })
}

/// Stage 2's step: a batch partly carrying its own triggers (target label), partly another
/// image's (own label), the rest clean; one SGD step of the classifier and one Adam step of the
/// pattern generator on the cross-entropy plus the diversity loss.
struct JointStep<'a> {
    train: &'a ImageSet,
    rule: TargetRule,
    config: InputAwareConfig,
    train_config: &'a TrainConfig,
    generator: TriggerNet,
    mask_net: TriggerNet,
    gen_slots: ParamSlots,
    extra: CycledShuffle,
}

impl StepRule for JointStep<'_> {
    fn step(
        &mut self,
        classifier: &mut Classifier,
        slots: &mut ParamSlots,
        at: &StepAt,
    ) -> Result<StepStats, TrainError> {
        let (train, config, device) = (self.train, &self.config, at.device);
        let n = at.samples.len();
        let k = train.num_classes();
        let (n_bd, n_cross) = batch_split(n, config);
        // The clean batch with the run's augmentation (none for the default recipes).
        let x = self.train_config.batch(train, at).images;
        let mut labels: Vec<Label> = at.samples.iter().map(|&i| train.label(i)).collect();
        let mut parts = Vec::new();
        let mut div = None;
        let others = images_tensor(train, self.extra.next_batch(extra_draw(n, config)), device);
        if n_bd > 0 {
            let xb = x.clone().narrow(0, 0, n_bd);
            let pb = self.generator.forward(xb.clone());
            parts.push(blend(
                xb.clone(),
                pb.clone(),
                self.mask_net.forward(xb.clone()),
            ));
            for label in labels.iter_mut().take(n_bd) {
                *label = self.rule.target_of(*label, k);
            }
            let m = n_bd.min(others.dims()[0]);
            let x2 = others.clone().narrow(0, 0, m);
            let p2 = self.generator.forward(x2.clone());
            div = Some(diversity(xb.narrow(0, 0, m), x2, pb.narrow(0, 0, m), p2));
        }
        if n_cross > 0 {
            let xc = x.clone().narrow(0, n_bd, n_cross);
            let x2 = others.clone().narrow(0, 0, n_cross);
            let p2 = self.generator.forward(x2.clone());
            parts.push(blend(xc, p2, self.mask_net.forward(x2)));
        }
        if n_bd + n_cross < n {
            parts.push(x.narrow(0, n_bd + n_cross, n - n_bd - n_cross));
        }
        let inputs = Tensor::cat(parts, 0);
        let targets: Vec<i64> = labels.iter().map(|&l| i64::from(l)).collect();
        let targets = Tensor::<1, Int>::from_data(TensorData::new(targets, [n]), device);
        let logits = classifier.forward(inputs, BnMode::Train);
        let correct = count_correct(logits.clone(), targets.clone());
        let ce = cross_entropy(logits, targets);
        let ce_value = finite_loss(
            f64::from(ce.clone().into_scalar::<f32>()),
            at.epoch,
            at.batch,
        )?;
        let loss = match div {
            Some(d) => ce + d.mul_scalar(config.lambda_div),
            None => ce,
        };
        let grads = loss.backward();
        sgd_step(classifier, &grads, slots, self.train_config, at.hyper);
        self.generator = apply_update(
            self.generator.clone(),
            &grads,
            &mut Adam::new(config.generator_lr, at.step as i32 + 1),
            &mut self.gen_slots,
        );
        Ok(StepStats {
            loss: ce_value,
            correct,
            scored: at.samples.len(),
        })
    }

    fn save(&self, run_dir: &Path, step: usize) -> Result<(), TrainError> {
        save_generators(
            run_dir,
            &self.generator,
            &self.mask_net,
            &self.gen_slots,
            step,
        )
    }
}

/// Writes the generators (with `step` in their metadata) and the pattern generator's Adam state.
fn save_generators(
    run_dir: &Path,
    generator: &TriggerNet,
    mask_net: &TriggerNet,
    gen_slots: &ParamSlots,
    step: usize,
) -> Result<(), TrainError> {
    let dir = run_dir.join(train_files::RESUME_DIR);
    std::fs::create_dir_all(&dir).map_err(|e| TrainError::Resume {
        path: run_dir.to_path_buf(),
        reason: format!("creating {}: {e}", dir.display()),
    })?;
    let nets = TriggerNets {
        pattern: generator.clone(),
        mask: mask_net.clone(),
    };
    checkpoint::save_module(
        &dir.join(NETS_FILE),
        &nets,
        &serde_json::json!({ "step": step }),
    )?;
    let mut optimizer = TensorFile::default();
    for slot in [adam::FIRST, adam::SECOND] {
        for (path, values) in gen_slots.export(generator, slot) {
            let n = values.len();
            optimizer
                .tensors
                .push((format!("{slot}/{path}"), vec![n], values));
        }
    }
    optimizer.metadata.insert(STEP_KEY.into(), step.to_string());
    optimizer.save(&dir.join(NETS_OPTIMIZER_FILE))?;
    Ok(())
}

/// Reads what [`save_generators`] wrote into fresh networks, checking it was written at `step`.
fn load_generators(
    run_dir: &Path,
    generator: TriggerNet,
    mask_net: TriggerNet,
    gen_slots: &mut ParamSlots,
    step: usize,
) -> Result<(TriggerNet, TriggerNet), TrainError> {
    let dir = run_dir.join(train_files::RESUME_DIR);
    let fail = |reason: String| TrainError::Resume {
        path: run_dir.to_path_buf(),
        reason,
    };
    let nets = TriggerNets {
        pattern: generator,
        mask: mask_net,
    };
    let (nets, training) =
        checkpoint::load_module(&dir.join(NETS_FILE), nets, "input-aware generators")?;
    let nets_step = metadata_step(training.as_ref());
    let optimizer = TensorFile::load(&dir.join(NETS_OPTIMIZER_FILE))?;
    let optimizer_step = tensor_file_step(&optimizer);
    if nets_step != Some(step as u64) || optimizer_step != Some(step as u64) {
        return Err(fail(format!(
            "generator files disagree with the run (run at step {step}, generators at {nets_step:?}, their optimizer at {optimizer_step:?}): start the attack again in a fresh folder"
        )));
    }
    for slot in [adam::FIRST, adam::SECOND] {
        let prefix = format!("{slot}/");
        let entries = optimizer
            .tensors
            .iter()
            .filter_map(|(name, _, values)| {
                Some((name.strip_prefix(&prefix)?.to_string(), values.clone()))
            })
            .collect();
        let rejected = gen_slots.import(&nets.pattern, slot, entries);
        if !rejected.is_empty() {
            return Err(fail(format!(
                "generator optimizer state does not fit: {}",
                rejected.join(", ")
            )));
        }
    }
    Ok((nets.pattern, nets.mask))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attack::test_data::{tiny_cnn_spec, two_class_8x8};
    use crate::device::default_device;
    use crate::train::test_util::{StopAfter, Tensors, model_tensors, scratch, tiny_config};

    fn images(n: usize) -> ImageSet {
        two_class_8x8(n, |i| ((i * 29 + i / 64 * 7) % 89) as f32 / 88.0)
    }

    #[test]
    fn host_trigger_matches_the_networks() {
        let device = default_device();
        let mut rng = StdRng::seed_from_u64(3);
        let (pattern, mask) = (
            TriggerNet::new(1, 1, &device, &mut rng),
            TriggerNet::new(1, 1, &device, &mut rng),
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

    fn attack_config() -> InputAwareConfig {
        InputAwareConfig {
            mask_iterations: 20,
            p_attack: 0.25,
            p_cross: 0.25,
            ..InputAwareConfig::default()
        }
    }

    /// The same starting classifier every time: weights from a host RNG, not burn's
    /// process-wide device RNG (which tests running in parallel reseed).
    fn initial_classifier(device: &Device) -> Classifier {
        let mut rng = StdRng::seed_from_u64(1);
        crate::models::test_util::host_seeded(tiny_cnn_spec(), &mut rng, &device.clone().autodiff())
    }

    /// Runs the attack to the end in `dir`, stopping once after `stop_after` batches and resuming
    /// from the files when that is given; returns the classifier's values and two triggered images.
    fn run(dir: &Path, stop_after: Option<usize>) -> (Tensors, Vec<f32>) {
        let device = default_device();
        let train = images(40);
        let mut classifier = initial_classifier(&device);
        let mut slots = ParamSlots::new();
        let mut state = TrainState::new(tiny_config(2, 16));
        let rule = TargetRule::AllToOne { target: 1 };
        let mut observer = StopAfter::new(stop_after);
        // At most one stop: the second call resumes from the files and runs to the end.
        let mut outcome;
        loop {
            outcome = train_input_aware(
                &mut classifier,
                &mut slots,
                &mut state,
                &train,
                &train,
                rule,
                attack_config(),
                dir,
                &device,
                &mut observer,
            )
            .unwrap();
            if matches!(outcome, InputAwareOutcome::Finished(_)) {
                break;
            }
            assert!(stop_after.is_some() && observer.seen == observer.after);
            (classifier, slots, state) = crate::train::load_resume(dir, &device).unwrap();
        }
        let InputAwareOutcome::Finished(attack) = outcome else {
            panic!("the resumed run should finish")
        };
        assert_eq!(state.history.len(), 2);
        let weights = model_tensors(&classifier);
        let mut triggered = vec![0.0; 128];
        let (a, b) = triggered.split_at_mut(64);
        attack.apply_trigger(train.image(0), train.shape(), 0, a);
        attack.apply_trigger(train.image(1), train.shape(), 1, b);
        (weights, triggered)
    }

    #[test]
    fn trains_and_gives_image_specific_triggers_in_range() {
        let dir = scratch("ia", "fresh");
        let (_, triggered) = run(&dir, None);
        let train = images(40);
        let (a, b) = triggered.split_at(64);
        assert!(triggered.iter().all(|v| (0.0..=1.0).contains(v)));
        let da: Vec<f32> = a.iter().zip(train.image(0)).map(|(t, x)| t - x).collect();
        let db: Vec<f32> = b.iter().zip(train.image(1)).map(|(t, x)| t - x).collect();
        assert!(da.iter().any(|d| d.abs() > 1e-4), "trigger changes nothing");
        assert_ne!(da, db, "triggers should differ between images");
        assert!(dir.join("model.safetensors").exists());
        assert_eq!(
            std::fs::read_to_string(dir.join("metrics.jsonl"))
                .unwrap()
                .lines()
                .count(),
            2
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn an_interrupted_run_resumes_to_the_same_model_and_trigger() {
        // 40 images in batches of 16: 3 batches per epoch; stop mid-epoch 0 (after batch 2),
        // and separately at the end of epoch 0 (after batch 3).
        let straight = scratch("ia", "straight");
        let expected = run(&straight, None);
        for stop in [2, 3] {
            let dir = scratch("ia", &format!("stop{stop}"));
            let got = run(&dir, Some(stop));
            assert_eq!(
                got.0, expected.0,
                "classifier differs after stopping at {stop}"
            );
            assert_eq!(
                got.1, expected.1,
                "trigger differs after stopping at {stop}"
            );
            std::fs::remove_dir_all(&dir).unwrap();
        }
        std::fs::remove_dir_all(&straight).unwrap();
    }

    #[test]
    fn resume_refuses_generators_from_another_step() {
        let dir = scratch("ia", "mismatch");
        let device = default_device().autodiff();
        let mut rng = StdRng::seed_from_u64(2);
        let (g, m) = (
            TriggerNet::new(1, 1, &device, &mut rng),
            TriggerNet::new(1, 1, &device, &mut rng),
        );
        save_generators(&dir, &g, &m, &ParamSlots::new(), 5).unwrap();
        let err = load_generators(&dir, g, m, &mut ParamSlots::new(), 6).unwrap_err();
        assert!(err.to_string().contains("step 6"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
