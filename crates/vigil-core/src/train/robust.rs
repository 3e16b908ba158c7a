//! The settings of a robust (HALO ladder) training run, recorded in its [`super::TrainConfig`]:
//! plain data, kept here so that `train` does not depend on `halo`. The objectives themselves,
//! the attack these settings describe and the checks that need it are in [`crate::halo`].

use serde::{Deserialize, Serialize};

/// The training objectives of the ladder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Cross-entropy on ID data.
    Std,
    /// Cross-entropy plus outlier exposure.
    Oe,
    /// Cross-entropy plus the TRADES KL term.
    Trades,
    /// TRADES with outlier exposure on both terms (HALO without the helper).
    TradesOe,
    /// TRADES+OE plus the helper term.
    Halo,
}

impl Objective {
    /// Every objective, in ladder order.
    pub const ALL: [Objective; 5] = [
        Objective::Std,
        Objective::Oe,
        Objective::Trades,
        Objective::TradesOe,
        Objective::Halo,
    ];

    /// Whether batches carry outliers.
    pub fn uses_outliers(self) -> bool {
        matches!(self, Objective::Oe | Objective::TradesOe | Objective::Halo)
    }

    /// Whether a step runs the PGD attack (the KL term).
    pub fn is_adversarial(self) -> bool {
        matches!(
            self,
            Objective::Trades | Objective::TradesOe | Objective::Halo
        )
    }

    /// Whether a step needs the helper model.
    pub fn uses_helper(self) -> bool {
        self == Objective::Halo
    }

    /// The name the CLI and reports use.
    pub fn name(self) -> &'static str {
        match self {
            Objective::Std => "std",
            Objective::Oe => "oe",
            Objective::Trades => "trades",
            Objective::TradesOe => "trades-oe",
            Objective::Halo => "halo",
        }
    }
}

/// Which of the reference code's behaviours to reproduce instead of vigil's fixes (all `false`
/// by default; [`ReferenceRules::all`] reproduces the reference).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReferenceRules {
    /// PGD: unclipped random start, best iterate by the batch-summed objective, final iterate
    /// not considered.
    pub pgd: bool,
    /// The training attack runs the model in train mode (batch statistics, running statistics
    /// updated at every attack step).
    pub attack_train_mode: bool,
    /// The helper runs in train mode on the joined ID + outlier adversarial batch.
    pub helper_train_mode: bool,
    /// The helper input `X_id + 2 (X_adv_id - X_id)` is not clipped to `[0, 1]`.
    pub helper_unclipped: bool,
}

impl ReferenceRules {
    /// Every reference behaviour.
    pub fn all() -> Self {
        Self {
            pgd: true,
            attack_train_mode: true,
            helper_train_mode: true,
            helper_unclipped: true,
        }
    }
}

/// Weights and attack of the robust objectives.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct HaloConfig {
    /// The objective.
    pub objective: Objective,
    /// Weight of the KL term.
    pub beta: f64,
    /// Weight of the helper term.
    pub gamma: f64,
    /// Weight of the outlier parts (CE to uniform, outlier KL).
    pub eta: f64,
    /// L-infinity radius of the training attack.
    pub eps: f64,
    /// PGD steps of the training attack (step size `2.5 eps / steps`).
    pub steps: usize,
    /// Reference behaviours to reproduce.
    pub reference: ReferenceRules,
    /// Seed of the attacks' random starts and of the outlier order.
    pub seed: u64,
    /// Keep an exponential moving average of the weights ([`crate::halo::weight_average`]) and
    /// evaluate, validate and keep it instead of the live weights.
    #[serde(default)]
    pub weight_average: bool,
}

impl HaloConfig {
    /// The reference defaults for `objective`: beta 3, gamma 0.5, eta 2, eps 8/255, 10 steps.
    pub fn reference_defaults(objective: Objective) -> Self {
        Self {
            objective,
            beta: 3.0,
            gamma: 0.5,
            eta: 2.0,
            eps: 8.0 / 255.0,
            steps: 10,
            reference: ReferenceRules::default(),
            seed: 0,
            weight_average: false,
        }
    }
}

/// What a robust training run records about its setup, so it resumes (and is described) with
/// the same outliers, helper and validation split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobustSettings {
    /// The objective, its weights and its attack.
    pub halo: HaloConfig,
    /// Name of the outlier set (e.g. `letters-train`), if the objective uses one.
    pub outliers: Option<String>,
    /// Images drawn per (font, letter) for a glyph outlier set.
    pub outlier_variants: usize,
    /// The helper checkpoint (HALO).
    pub helper: Option<String>,
    /// Training images held out to pick the checkpoint by validation loss.
    pub validation_size: usize,
}
