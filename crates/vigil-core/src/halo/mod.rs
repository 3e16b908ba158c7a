//! Adversarially robust out-of-distribution training: HALO and the ladder of objectives it is
//! compared with (`docs/halo.md`).
//!
//! Each batch joins `B` labelled in-distribution (ID) images and, for the objectives with outlier
//! exposure, `B` unlabelled outliers. With `f` the model being trained and `g` a frozen helper
//! trained with plain cross-entropy:
//!
//! ```text
//! L_std  = CE(f(X_id), y) + eta * CE_to_uniform(f(X_oe))
//! X_adv  = PGD maximising KL(f(X) || f(X_adv)) over the joined batch
//! L_adv  = KL(f(X_id) || f(X_adv_id)) + eta * KL(f(X_oe) || f(X_adv_oe))
//! L_help = CE(f(clip(X_id + 2 (X_adv_id - X_id))), argmax g(X_adv_id))
//! HALO   = L_std + beta * L_adv + gamma * L_help
//! ```
//!
//! STD is the first CE term alone, OE adds the outlier term, TRADES adds `beta * L_adv` to STD,
//! TRADES+OE is HALO without the helper term ([`Objective`]).
//!
//! The reference code (hugo0076/HALO) differs in four places that `docs/halo.md` lists ("Where
//! vigil differs from the reference, and why"); vigil fixes them and keeps each behind a flag of [`ReferenceRules`]:
//! - its PGD starts unclipped and keeps the iterate with the best batch-summed objective, never
//!   the final one (vigil: clipped start, best iterate per sample, final included);
//! - its attack runs the model in train mode, so each of the ten attack steps uses batch
//!   statistics and moves BatchNorm's running statistics (vigil: eval mode);
//! - its helper runs in train mode on the joined ID + outlier batch, so outliers shape the
//!   statistics behind the helper's ID labels (vigil: eval mode, ID images only);
//! - its helper input `X_id + 2 (X_adv_id - X_id)` is not clipped to `[0, 1]` (vigil: clipped).

pub mod ladder;
pub mod run;
pub mod weight_average;

use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use crate::attack::pgd::{Pgd, PgdError, frozen, objective};
use crate::data::sampler::CycledShuffle;
use crate::data::{ImageSet, augmented_batch, batch};
use crate::loss::{
    cross_entropy, cross_entropy_to_uniform_per_sample, kl_divergence_batchmean, predictions,
};
use crate::models::{BnMode, Classifier};
use crate::optim::ParamSlots;
use crate::train::{
    StepAt, StepRule, StepStats, TrainConfig, TrainError, count_correct, files as train_files,
    finite_loss, mix, sgd_step,
};
use std::path::Path;
use weight_average::WeightAverage;

pub use crate::train::robust::{HaloConfig, Objective, ReferenceRules, RobustSettings};

impl HaloConfig {
    /// The training (and validation) attack.
    pub fn pgd(&self) -> Pgd {
        let pgd = Pgd::linf(self.eps, self.steps);
        if self.reference.pgd {
            pgd.reference()
        } else {
            pgd
        }
    }

    /// Checks the settings can work.
    pub fn validate(&self) -> Result<(), HaloError> {
        for (name, v) in [
            ("beta", self.beta),
            ("gamma", self.gamma),
            ("eta", self.eta),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(HaloError::InvalidConfig(format!(
                    "{name} must be finite and >= 0, got {v}"
                )));
            }
        }
        if self.objective.is_adversarial() && self.steps == 0 {
            return Err(HaloError::InvalidConfig(format!(
                "{} needs at least one PGD step",
                self.objective.name()
            )));
        }
        self.pgd().validate()?;
        Ok(())
    }
}

/// Errors of robust training.
#[derive(Debug, thiserror::Error)]
pub enum HaloError {
    /// The settings cannot work.
    #[error("invalid robust-training settings: {0}")]
    InvalidConfig(String),
    /// The attack's settings cannot work.
    #[error(transparent)]
    Pgd(#[from] PgdError),
    /// The saved weight average cannot be written or read back.
    #[error("weight average {}: {reason}", .path.display())]
    AverageFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        reason: String,
    },
    /// The objective needs something the caller did not give.
    #[error("{objective} needs {what}")]
    Missing {
        /// The objective's name.
        objective: &'static str,
        /// What is missing.
        what: &'static str,
    },
}

impl From<HaloError> for TrainError {
    fn from(e: HaloError) -> Self {
        TrainError::InvalidConfig(e.to_string())
    }
}

/// The loss of one batch and its parts (the parts as plain numbers, for logs).
pub struct LossTerms {
    /// The objective's total, with autodiff.
    pub total: Tensor<1>,
    /// Logits of the clean ID images (train mode), for accuracy.
    pub id_logits: Tensor<2>,
    /// CE on the clean ID images.
    pub cross_entropy: f64,
    /// Mean CE to uniform of the clean outliers (0 without outliers).
    pub outlier: f64,
    /// The KL term (0 for non-adversarial objectives).
    pub adversarial: f64,
    /// The helper term (0 unless HALO).
    pub helper: f64,
}

/// The helper's input: the adversarial perturbation doubled, `x + 2 (x_adv - x)`, clipped to
/// `[0, 1]` unless `clip` is false (the reference does not clip).
pub fn helper_inputs(x: Tensor<4>, x_adv: Tensor<4>, clip: bool) -> Tensor<4> {
    let doubled = x.clone() + (x_adv - x).mul_scalar(2.0);
    if clip {
        doubled.clamp(0.0, 1.0)
    } else {
        doubled
    }
}

/// The objective's loss on ID images `x_id` (labels `y`) and outliers `x_oe` (ignored by
/// objectives without outlier exposure), with `model` on an autodiff device in train mode and
/// `helper` (HALO only) frozen. The attack's random start draws from `rng`.
pub fn objective_loss(
    model: &Classifier,
    helper: Option<&Classifier>,
    x_id: Tensor<4>,
    y: Tensor<1, Int>,
    x_oe: Option<Tensor<4>>,
    config: &HaloConfig,
    rng: &mut StdRng,
) -> Result<LossTerms, HaloError> {
    let objective = config.objective;
    let missing = |what| HaloError::Missing {
        objective: objective.name(),
        what,
    };
    let x_oe = if objective.uses_outliers() {
        Some(x_oe.ok_or_else(|| missing("outliers"))?)
    } else {
        None
    };
    let helper = if objective.uses_helper() {
        Some(helper.ok_or_else(|| missing("a helper model"))?)
    } else {
        None
    };
    let n_id = x_id.dims()[0];
    let n_oe = x_oe.as_ref().map_or(0, |x| x.dims()[0]);
    let x = match x_oe {
        Some(x_oe) => Tensor::cat(vec![x_id.clone(), x_oe], 0),
        None => x_id.clone(),
    };
    let logits = model.forward(x.clone(), BnMode::Train);
    let id_logits = logits.clone().narrow(0, 0, n_id);
    let ce = cross_entropy(id_logits.clone(), y);
    let mut terms = LossTerms {
        cross_entropy: scalar(&ce),
        total: ce,
        id_logits: id_logits.clone(),
        outlier: 0.0,
        adversarial: 0.0,
        helper: 0.0,
    };
    if n_oe > 0 {
        let oe = cross_entropy_to_uniform_per_sample(logits.clone().narrow(0, n_id, n_oe)).mean();
        terms.outlier = scalar(&oe);
        terms.total = terms.total + oe.mul_scalar(config.eta);
    }
    if !objective.is_adversarial() {
        return Ok(terms);
    }

    // The attack: PGD on the joined batch through a frozen copy, raising KL(f(x) || f(x_adv)).
    let device = x.device();
    let attacked = frozen(model, &device);
    let mode = if config.reference.attack_train_mode {
        BnMode::Train
    } else {
        BnMode::Eval
    };
    let clean = attacked.forward(x.clone(), mode);
    let x_adv = config.pgd().attack(
        x.clone(),
        objective::kl_from_clean(&attacked, clean, mode),
        rng,
    )?;
    let x_adv = x_adv.autodiff();
    let adv_logits = model.forward(x_adv.clone(), BnMode::Train);
    let mut adv = kl_divergence_batchmean(id_logits, adv_logits.clone().narrow(0, 0, n_id));
    if n_oe > 0 {
        let oe = kl_divergence_batchmean(
            logits.narrow(0, n_id, n_oe),
            adv_logits.narrow(0, n_id, n_oe),
        );
        adv = adv + oe.mul_scalar(config.eta);
    }
    terms.adversarial = scalar(&adv);
    terms.total = terms.total + adv.mul_scalar(config.beta);

    if let Some(helper) = helper {
        let x_adv_id = x_adv.clone().narrow(0, 0, n_id);
        let labels = if config.reference.helper_train_mode {
            predictions(helper.forward(x_adv, BnMode::Train)).narrow(0, 0, n_id)
        } else {
            predictions(helper.forward(x_adv_id.clone(), BnMode::Eval))
        };
        let inputs = helper_inputs(x_id, x_adv_id, !config.reference.helper_unclipped);
        let help = cross_entropy(model.forward(inputs, BnMode::Train), labels);
        terms.helper = scalar(&help);
        terms.total = terms.total + help.mul_scalar(config.gamma);
    }
    Ok(terms)
}

fn scalar(t: &Tensor<1>) -> f64 {
    f64::from(t.clone().into_scalar::<f32>())
}

/// A training step of the robust ladder for [`crate::train::run`]: an augmented ID batch, as
/// many outliers from a seeded cycle over the outlier set, the objective's loss, one SGD step.
pub struct RobustStep<'a> {
    /// ID training data.
    pub train_set: &'a ImageSet,
    /// The run's configuration (batch size, augmentation, optimiser, seed).
    pub train_config: &'a TrainConfig,
    /// The objective and its attack.
    pub config: HaloConfig,
    /// The helper, frozen on the training device (HALO only).
    pub helper: Option<Classifier>,
    /// Held-out ID data scored with the robust loss after every epoch, if any.
    pub validation: Option<&'a ImageSet>,
    outliers: Option<(&'a ImageSet, CycledShuffle)>,
    /// The average of the weights, when the config asks for one.
    average: Option<WeightAverage>,
}

/// File of the weight average inside the run's resume folder.
const AVERAGE_FILE: &str = "average.safetensors";

/// Stream of the outlier order, apart from the ID order's.
const OUTLIER_STREAM: u64 = 0x6f75_746c_6965_7273;
/// Stream of the attacks' random starts.
const ATTACK_STREAM: u64 = 0x6174_7461_636b;

impl<'a> RobustStep<'a> {
    /// The step for a run at `steps_done` optimiser steps (0 for a fresh run): the outlier cycle
    /// is replayed to where it stood, so a resumed run draws the same outliers.
    pub fn new(
        train_set: &'a ImageSet,
        outliers: Option<&'a ImageSet>,
        helper: Option<Classifier>,
        validation: Option<&'a ImageSet>,
        train_config: &'a TrainConfig,
        config: HaloConfig,
        steps_done: usize,
    ) -> Result<Self, HaloError> {
        config.validate()?;
        let objective = config.objective;
        let outliers = match (objective.uses_outliers(), outliers) {
            (false, _) => None,
            (true, None) => {
                return Err(HaloError::Missing {
                    objective: objective.name(),
                    what: "an outlier set",
                });
            }
            (true, Some(set)) if set.is_empty() => {
                return Err(HaloError::InvalidConfig("the outlier set is empty".into()));
            }
            (true, Some(set)) => {
                if set.shape() != train_set.shape() {
                    return Err(HaloError::InvalidConfig(format!(
                        "outliers are {:?}, ID images {:?}",
                        set.shape(),
                        train_set.shape()
                    )));
                }
                let mut cycle = CycledShuffle::new(
                    (0..set.len()).collect(),
                    mix(config.seed, OUTLIER_STREAM, 0),
                );
                for _ in 0..steps_done {
                    cycle.next_batch(train_config.batch_size);
                }
                Some((set, cycle))
            }
        };
        if objective.uses_helper() && helper.is_none() {
            return Err(HaloError::Missing {
                objective: objective.name(),
                what: "a helper model (a STD checkpoint)",
            });
        }
        // The reference's warm-up: a plain copy for the first 2.5% of all steps.
        let total_steps =
            train_set.len().div_ceil(train_config.batch_size.max(1)) * train_config.epochs;
        let warmup = (0.025 * total_steps as f64).ceil() as usize;
        Ok(Self {
            train_set,
            train_config,
            config,
            helper,
            validation,
            outliers,
            average: config.weight_average.then(|| WeightAverage::new(warmup)),
        })
    }

    /// Reads the weight average a run saved at optimiser step `step` (nothing to do without
    /// averaging or at step 0), so a resumed run continues it.
    pub fn resume_weight_average(&mut self, run_dir: &Path, step: usize) -> Result<(), HaloError> {
        if let Some(average) = &mut self.average {
            let path = run_dir.join(train_files::RESUME_DIR).join(AVERAGE_FILE);
            *average = WeightAverage::load(&path, average.warmup_steps, step)?;
        }
        Ok(())
    }

    /// Mean cross-entropy on the validation set after a CE PGD attack with the training attack's
    /// settings (model in eval mode), or the clean cross-entropy for non-adversarial objectives:
    /// what the reference minimises to pick the checkpoint it keeps.
    pub fn validation_loss(
        &self,
        classifier: &Classifier,
        device: &Device,
    ) -> Result<Option<f64>, HaloError> {
        let Some(set) = self.validation else {
            return Ok(None);
        };
        let device = device.clone().autodiff();
        let model = frozen(classifier, &device);
        let pgd = self.config.pgd();
        let mut rng = StdRng::seed_from_u64(mix(self.config.seed, ATTACK_STREAM, u64::MAX));
        let (mut sum, mut n) = (0.0, 0usize);
        let all: Vec<usize> = (0..set.len()).collect();
        for chunk in all.chunks(self.train_config.eval_batch_size.max(1)) {
            let b = batch(set, chunk, &device);
            let x = if self.config.objective.is_adversarial() {
                pgd.attack(
                    b.images,
                    objective::cross_entropy(&model, b.labels.clone()),
                    &mut rng,
                )?
                .autodiff()
            } else {
                b.images
            };
            let loss = cross_entropy(model.forward(x, BnMode::Eval), b.labels);
            sum += scalar(&loss) * chunk.len() as f64;
            n += chunk.len();
        }
        Ok(Some(sum / n.max(1) as f64))
    }
}

impl StepRule for RobustStep<'_> {
    fn step(
        &mut self,
        classifier: &mut Classifier,
        slots: &mut ParamSlots,
        at: &StepAt,
    ) -> Result<StepStats, TrainError> {
        let id = self.train_config.batch(self.train_set, at);
        let x_oe = match &mut self.outliers {
            Some((set, cycle)) => {
                let indices = cycle.next_batch(self.train_config.batch_size).to_vec();
                let mut rng = StdRng::seed_from_u64(mix(
                    self.train_config.seed,
                    OUTLIER_STREAM,
                    at.step as u64,
                ));
                let augmentation = self.train_config.augmentation();
                Some(augmented_batch(set, &indices, &augmentation, &mut rng, at.device).images)
            }
            None => None,
        };
        let mut rng = StdRng::seed_from_u64(mix(self.config.seed, ATTACK_STREAM, at.step as u64));
        let terms = objective_loss(
            classifier,
            self.helper.as_ref(),
            id.images,
            id.labels.clone(),
            x_oe,
            &self.config,
            &mut rng,
        )?;
        let loss = finite_loss(scalar(&terms.total), at.epoch, at.batch)?;
        let correct = count_correct(terms.id_logits.clone(), id.labels);
        sgd_step(
            classifier,
            &terms.total.backward(),
            slots,
            self.train_config,
            at.hyper,
        );
        if let Some(average) = &mut self.average {
            average.update(classifier, at.step)?;
        }
        Ok(StepStats {
            loss,
            correct,
            scored: at.samples.len(),
        })
    }

    fn save(&self, run_dir: &Path, step: usize) -> Result<(), TrainError> {
        if let Some(average) = &self.average {
            let dir = run_dir.join(train_files::RESUME_DIR);
            std::fs::create_dir_all(&dir).map_err(|e| TrainError::Resume {
                path: run_dir.to_path_buf(),
                reason: format!("creating {}: {e}", dir.display()),
            })?;
            average.save(&dir.join(AVERAGE_FILE), step)?;
        }
        Ok(())
    }

    fn evaluated_model(
        &self,
        live: &Classifier,
        device: &Device,
    ) -> Result<Option<Classifier>, TrainError> {
        match &self.average {
            Some(average) if !average.is_empty() => Ok(Some(average.model(live, device)?)),
            _ => Ok(None),
        }
    }

    fn validation_loss(
        &mut self,
        classifier: &Classifier,
        device: &Device,
    ) -> Result<Option<f64>, TrainError> {
        Ok(RobustStep::validation_loss(self, classifier, device)?)
    }
}

#[cfg(test)]
mod tests;
