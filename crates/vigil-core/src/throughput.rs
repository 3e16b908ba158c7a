//! Throughput of vigil's three inner loops, for `vigil throughput` and the PyTorch comparison in
//! `bench/`: a training step, a batched forward with per-sample losses (MAD-FA's hot path), and
//! a PGD step (input gradient through frozen parameters). Same model, sizes and data as
//! `bench/peer/bench_torch.py`. For language models ([`run_lm`]): a forward with per-sample
//! mean next-token loss (MAD-FA's traces on text) and a localized SGLD step over every weight,
//! as `bench/peer/bench_lm_torch.py` measures them with `transformers`.

use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::attack::pgd::{frozen, input_gradient, linf_step};
use crate::halo::{HaloConfig, Objective, objective_loss};
use crate::loss::{cross_entropy, cross_entropy_per_sample};
use crate::models::flops::forward_flops;
use crate::models::{Architecture, BnMode, Classifier, ModelError, ModelSpec};
use crate::optim::sgd::{Sgd, SgdConfig};
use crate::optim::{ParamSlots, apply_update};

/// Errors of a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The settings cannot be measured.
    #[error("invalid benchmark settings: {0}")]
    InvalidConfig(String),
    /// The architecture cannot be built for 1x28x28 inputs.
    #[error(transparent)]
    Model(#[from] ModelError),
}

/// Largest batch measured: 65,536 images of 1x28x28 are 205 MB before any activation, far
/// beyond any batch the loops run at, and a larger one would exhaust memory rather than measure.
pub const MAX_BATCH: usize = 1 << 16;

/// Largest image measured, in values (`c * h * w`): 3x224x224, ImageNet's shape.
pub const MAX_IMAGE_VALUES: usize = 3 * 224 * 224;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The model, with 10 classes (the small CNN at its reference size by default).
    pub architecture: Architecture,
    /// Input shape `[channels, height, width]` (1x28x28 by default; 3x32x32 is
    /// BackdoorBench's CIFAR shape).
    pub input_shape: [usize; 3],
    /// Also time the HALO step (the slowest loop by far).
    pub halo: bool,
    /// Images per batch.
    pub batch: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations.
    pub iters: usize,
}

impl Default for BenchConfig {
    fn default() -> Self {
        Self {
            architecture: Architecture::SmallCnn {
                width: 32,
                hidden: 128,
            },
            input_shape: [1, 28, 28],
            halo: true,
            batch: 128,
            warmup: 3,
            iters: 20,
        }
    }
}

impl BenchConfig {
    /// Checks the sizes: a batch of 1 to [`MAX_BATCH`] images and at least one timed iteration
    /// (none would report a rate of 0 images per second).
    pub fn validate(&self) -> Result<(), BenchError> {
        if !(1..=MAX_BATCH).contains(&self.batch) {
            return Err(BenchError::InvalidConfig(format!(
                "the batch must hold 1 to {MAX_BATCH} images, got {}",
                self.batch
            )));
        }
        if self.iters == 0 {
            return Err(BenchError::InvalidConfig(
                "at least one timed iteration is needed".into(),
            ));
        }
        let values = self.input_shape.iter().product::<usize>();
        if !(1..=MAX_IMAGE_VALUES).contains(&values) || self.input_shape.contains(&0) {
            return Err(BenchError::InvalidConfig(format!(
                "the input shape {:?} must have no zero side and at most {MAX_IMAGE_VALUES} values",
                self.input_shape
            )));
        }
        Ok(())
    }
}

/// Images per second of each loop.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// Backend name.
    pub backend: String,
    /// The model measured.
    pub architecture: Architecture,
    /// Images per batch.
    pub batch: usize,
    /// Timed iterations per measurement.
    pub iters: usize,
    /// Input shape `[channels, height, width]`.
    pub input_shape: [usize; 3],
    /// Forward, mean CE, backward, SGD (momentum, Nesterov, weight decay) update.
    pub train_step_img_per_s: f64,
    /// Eval-mode forward, per-sample CE, losses copied to the host.
    pub forward_loss_img_per_s: f64,
    /// Input gradient through frozen parameters plus the projected sign step.
    pub pgd_step_img_per_s: f64,
    /// One HALO training step (`batch` ID images and as many outliers, PGD-10 on the KL, the
    /// helper term with a frozen copy of the model as helper, SGD update), ID images per second;
    /// absent when not asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub halo_step_img_per_s: Option<f64>,
    /// Forward flops of one image as the layers define them ([`forward_flops`]; Winograd
    /// kernels do fewer), in GFLOP.
    pub forward_gflop_per_image: f64,
    /// The training step's rate in GFLOP/s, counted as three forward passes per image
    /// (forward, input gradients, weight gradients: the usual convention; the input's own
    /// gradient is not computed, so slightly less is done).
    pub train_step_gflop_per_s: f64,
    /// The forward pass's rate in GFLOP/s.
    pub forward_loss_gflop_per_s: f64,
    /// The PGD step's rate in GFLOP/s, counted as two forward passes per image (forward and
    /// input gradients).
    pub pgd_step_gflop_per_s: f64,
}

/// What to measure on a language model.
#[derive(Debug, Clone)]
pub struct LmBenchConfig {
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Untimed iterations first.
    pub warmup: usize,
    /// Timed iterations.
    pub iters: usize,
}

/// Tokens per second of each language-model loop.
#[derive(Debug, Clone, Serialize)]
pub struct LmBenchReport {
    /// Backend name.
    pub backend: String,
    /// The model's sizes.
    pub model: crate::lm::LlamaConfig,
    /// Sequences per batch.
    pub batch: usize,
    /// Tokens per sequence.
    pub seq_len: usize,
    /// Timed iterations per measurement.
    pub iters: usize,
    /// Forward, per-position next-token losses, their per-sequence mean copied to the host.
    pub forward_loss_tokens_per_s: f64,
    /// Forward, mean loss, backward, one localized SGLD step (reference settings, RMSprop
    /// preconditioner) over every weight.
    pub sgld_step_tokens_per_s: f64,
}

/// Measures `model` (built on `device`'s autodiff twin, e.g. by `LanguageModel::load`) on
/// random tokens from a seeded generator.
pub fn run_lm(
    config: &LmBenchConfig,
    model: crate::lm::LlamaForCausalLm,
    device: &Device,
) -> Result<LmBenchReport, BenchError> {
    use crate::lm::loss::{masked_mean, next_token_losses};
    use crate::madfa::sgld::{LocalizedSgld, SgldConfig, W_STAR_SLOT};
    use crate::optim::{snapshot_slots, trainable_values};

    let (batch, seq_len) = (config.batch, config.seq_len);
    if !(1..=MAX_BATCH).contains(&batch) || seq_len < 2 || config.iters == 0 {
        return Err(BenchError::InvalidConfig(format!(
            "need 1 to {MAX_BATCH} sequences of at least 2 tokens and one timed iteration, got \
             {batch} x {seq_len}, {} iterations",
            config.iters
        )));
    }
    if seq_len > model.config.max_position_embeddings {
        return Err(BenchError::InvalidConfig(format!(
            "{seq_len} tokens exceed the model's {} positions",
            model.config.max_position_embeddings
        )));
    }
    let train_device = device.clone().autodiff();
    let mut rng = StdRng::seed_from_u64(0);
    let vocab = model.config.vocab_size as i64;
    let ids: Vec<i64> = (0..batch * seq_len)
        .map(|_| rng.random_range(0..vocab))
        .collect();
    let tokens = Tensor::<2, Int>::from_data(TensorData::new(ids, [batch, seq_len]), device);
    let mask = Tensor::<2>::ones([batch, seq_len - 1], device);
    let timing = BenchConfig {
        warmup: config.warmup,
        iters: config.iters,
        ..BenchConfig::default()
    };
    let tokens_per_batch = batch * seq_len;

    let inference = model.valid();
    let forward_loss_tokens_per_s = time(&timing, tokens_per_batch, || {
        let losses = next_token_losses(inference.forward(tokens.clone()), tokens.clone());
        let host: Vec<f32> = masked_mean(losses, mask.clone())
            .into_data()
            .iter::<f32>()
            .collect();
        std::hint::black_box(host);
    });

    let model = inference.clone().fork(&train_device).train();
    let mut slots = ParamSlots::new();
    snapshot_slots(&model, &mut slots, W_STAR_SLOT);
    let sgld = SgldConfig::reference();
    let train_tokens = tokens.clone().autodiff();
    let mut step = 0u64;
    let sampled_values = trainable_values(&model);
    let mut live = Some(model);
    let sgld_step_tokens_per_s = time(&timing, tokens_per_batch, || {
        // Moved, not cloned, as the text detection's chain does: the update then writes each
        // weight's buffer in place.
        let Some(model) = live.take() else { return };
        let mut rule = LocalizedSgld::prefetched(&sgld, step, sampled_values);
        let losses = next_token_losses(model.forward(train_tokens.clone()), train_tokens.clone());
        let grads = losses.mean().backward();
        live = Some(apply_update(model, &grads, &mut rule, &mut slots));
        step += 1;
    });

    Ok(LmBenchReport {
        backend: crate::device::backend_name().to_string(),
        model: inference.config.clone(),
        batch,
        seq_len,
        iters: config.iters,
        forward_loss_tokens_per_s,
        sgld_step_tokens_per_s,
    })
}

/// The benchmark model: `architecture` on `input_shape` inputs, 10 classes, no normalisation.
pub fn bench_spec(architecture: Architecture, input_shape: [usize; 3]) -> ModelSpec {
    ModelSpec {
        architecture,
        input_shape,
        class_names: (0..10).map(|c| c.to_string()).collect(),
        normalization: None,
    }
}

/// Runs the measurements on `device`.
/// Fails on settings [`BenchConfig::validate`] refuses, or if the architecture cannot be built
/// for the input shape.
pub fn run(config: BenchConfig, device: &Device) -> Result<BenchReport, BenchError> {
    config.validate()?;
    let train_device = device.clone().autodiff();
    let mut classifier = Classifier::new(
        bench_spec(config.architecture.clone(), config.input_shape),
        &train_device,
    )?;
    let n = config.batch;
    let [c, h, w] = config.input_shape;
    // Uniform images from a seeded host generator: burn's device RNG is process-global, and
    // library code does not seed it.
    let mut rng = StdRng::seed_from_u64(0);
    let pixels: Vec<f32> = (0..n * c * h * w).map(|_| rng.random::<f32>()).collect();
    let images = Tensor::<4>::from_data(TensorData::new(pixels, [n, c, h, w]), &train_device);
    let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
    let labels = Tensor::<1, Int>::from_data(TensorData::new(labels, [n]), &train_device);

    let mut slots = ParamSlots::new();
    let mut sgd = Sgd {
        config: SgdConfig::default(),
        lr: 0.01,
        momentum: 0.9,
    };
    let train_step_img_per_s = time(&config, n, || {
        let loss = cross_entropy(
            classifier.forward(images.clone(), BnMode::Train),
            labels.clone(),
        );
        let grads = loss.backward();
        classifier.network = apply_update(classifier.network.clone(), &grads, &mut sgd, &mut slots);
    });

    let inference = classifier.for_inference();
    let plain_images = images.clone().without_autodiff();
    let plain_labels = labels.clone().without_autodiff();
    let forward_loss_img_per_s = time(&config, n, || {
        let logits = inference.forward(plain_images.clone(), BnMode::Eval);
        let losses = cross_entropy_per_sample(logits, plain_labels.clone());
        let host: Vec<f32> = losses.into_data().iter::<f32>().collect();
        std::hint::black_box(host);
    });

    let attacked = frozen(&classifier, &train_device);
    let x0 = plain_images.clone();
    let mut x = plain_images;
    let pgd_step_img_per_s = time(&config, n, || {
        let grad = input_gradient(
            &attacked,
            x.clone().autodiff(),
            labels.clone(),
            BnMode::Eval,
        );
        x = linf_step(x.clone(), x0.clone(), grad, 2.0 / 255.0, 8.0 / 255.0);
    });

    let halo_step_img_per_s = config.halo.then(|| {
        halo_step(
            &config,
            &mut classifier,
            (&images, &labels),
            &mut rng,
            &mut sgd,
            &mut slots,
        )
    });

    let gflop = forward_flops(&classifier.spec) as f64 / 1e9;
    Ok(BenchReport {
        backend: crate::device::backend_name().to_string(),
        architecture: config.architecture,
        batch: n,
        iters: config.iters,
        input_shape: config.input_shape,
        train_step_img_per_s,
        forward_loss_img_per_s,
        pgd_step_img_per_s,
        halo_step_img_per_s,
        forward_gflop_per_image: gflop,
        train_step_gflop_per_s: 3.0 * gflop * train_step_img_per_s,
        forward_loss_gflop_per_s: gflop * forward_loss_img_per_s,
        pgd_step_gflop_per_s: 2.0 * gflop * pgd_step_img_per_s,
    })
}

/// ID images per second of one HALO step. `objective_loss` fails only on settings `validate`
/// refuses or on a missing helper or outlier batch, none of which can happen here.
fn halo_step(
    config: &BenchConfig,
    classifier: &mut Classifier,
    (images, labels): (&Tensor<4>, &Tensor<1, Int>),
    rng: &mut StdRng,
    sgd: &mut Sgd,
    slots: &mut ParamSlots,
) -> f64 {
    let train_device = images.device();
    let n = config.batch;
    let [c, h, w] = config.input_shape;
    let outliers: Vec<f32> = (0..n * c * h * w).map(|_| rng.random::<f32>()).collect();
    let outliers = Tensor::<4>::from_data(TensorData::new(outliers, [n, c, h, w]), &train_device);
    let helper = frozen(classifier, &train_device);
    let halo = HaloConfig::reference_defaults(Objective::Halo);
    let mut attack_rng = StdRng::seed_from_u64(1);
    let halo_timing = BenchConfig {
        warmup: 1,
        iters: (config.iters / 4).max(2),
        ..config.clone()
    };
    time(&halo_timing, n, || {
        let terms = objective_loss(
            classifier,
            Some(&helper),
            images.clone(),
            labels.clone(),
            Some(outliers.clone()),
            &halo,
            &mut attack_rng,
        );
        if let Ok(terms) = terms {
            let grads = terms.total.backward();
            classifier.network = apply_update(classifier.network.clone(), &grads, sgd, slots);
        }
    })
}

fn time(config: &BenchConfig, batch: usize, mut step: impl FnMut()) -> f64 {
    for _ in 0..config.warmup {
        step();
    }
    let start = Instant::now();
    for _ in 0..config.iters {
        step();
    }
    (config.iters * batch) as f64 / start.elapsed().as_secs_f64()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny run of the three loops: positive rates, and each GFLOP/s figure is the model's
    /// forward count times the loop's passes (3 training, 1 forward, 2 PGD) times its rate.
    #[test]
    fn the_loops_run_and_their_flop_rates_follow_the_image_rates() {
        let config = BenchConfig {
            halo: false,
            batch: 2,
            warmup: 0,
            iters: 1,
            ..BenchConfig::default()
        };
        let report = run(config, &crate::device::default_device()).unwrap();
        assert_eq!(report.forward_gflop_per_image, 8_482_304.0 / 1e9);
        for (passes, img, gflop) in [
            (
                3.0,
                report.train_step_img_per_s,
                report.train_step_gflop_per_s,
            ),
            (
                1.0,
                report.forward_loss_img_per_s,
                report.forward_loss_gflop_per_s,
            ),
            (2.0, report.pgd_step_img_per_s, report.pgd_step_gflop_per_s),
        ] {
            assert!(img > 0.0 && img.is_finite());
            assert_eq!(gflop, passes * report.forward_gflop_per_image * img);
        }
    }

    #[test]
    fn zero_or_huge_batches_and_no_iterations_are_refused_before_any_work() {
        let device = crate::device::default_device();
        for (config, what) in [
            (
                BenchConfig {
                    batch: 0,
                    ..BenchConfig::default()
                },
                "batch",
            ),
            (
                BenchConfig {
                    batch: MAX_BATCH + 1,
                    ..BenchConfig::default()
                },
                "batch",
            ),
            (
                BenchConfig {
                    iters: 0,
                    ..BenchConfig::default()
                },
                "iteration",
            ),
            (
                BenchConfig {
                    input_shape: [3, 0, 32],
                    ..BenchConfig::default()
                },
                "input shape",
            ),
            (
                BenchConfig {
                    input_shape: [3, 1024, 1024],
                    ..BenchConfig::default()
                },
                "input shape",
            ),
        ] {
            let e = run(config, &device).unwrap_err();
            assert!(
                matches!(e, BenchError::InvalidConfig(_)) && e.to_string().contains(what),
                "{e}"
            );
        }
        assert!(BenchConfig::default().validate().is_ok());
    }

    #[test]
    fn the_language_model_loops_run_and_refuse_impossible_sizes() {
        let device = crate::device::default_device();
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/lm/tiny_llama.gguf");
        let lm = crate::lm::LanguageModel::load(&path, &device).unwrap();
        let config = LmBenchConfig {
            batch: 2,
            seq_len: 9,
            warmup: 1,
            iters: 2,
        };
        let report = run_lm(&config, lm.model.clone(), &device).unwrap();
        assert!(report.forward_loss_tokens_per_s > 0.0 && report.sgld_step_tokens_per_s > 0.0);
        assert_eq!((report.batch, report.seq_len), (2, 9));
        for bad in [
            LmBenchConfig {
                seq_len: 1,
                ..config.clone()
            },
            LmBenchConfig {
                batch: 0,
                ..config.clone()
            },
            LmBenchConfig {
                iters: 0,
                ..config.clone()
            },
            LmBenchConfig {
                seq_len: 10_000,
                ..config.clone()
            },
        ] {
            let e = run_lm(&bad, lm.model.clone(), &device).unwrap_err();
            assert!(matches!(e, BenchError::InvalidConfig(_)), "{e}");
        }
    }
}
