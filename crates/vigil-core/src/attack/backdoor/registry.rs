//! Attacks by name with their parameters: what `vigil attack` builds and what an attack
//! record stores, so a record says exactly which trigger its model learnt.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::badnets::DEFAULT_PATCH_SIZE;
use super::blended::{DEFAULT_ALPHA, DEFAULT_PATTERN_SEED};
use super::sig::{DEFAULT_DELTA, DEFAULT_FREQUENCY};
use super::{
    AttackError, BackdoorAttack, BadNets, Blended, PatchMask, PatchPattern, PatchPosition, Sig,
    WaNet, WaNetConfig,
};
use burn::tensor::Device;

use super::TargetRule;
use super::input_aware::InputAwareConfig;
use super::label_consistent::{LabelConsistent, LcPerturbation};
use super::low_frequency::{LfSearch, LowFrequency};
use super::ssba::{Ssba, SsbaTraining};
use super::trojannn::{TrojanNn, TrojanSearch};
use crate::checkpoint;
use crate::data::ImageSet;

/// Names of the attacks vigil can mount today.
pub const ATTACK_NAMES: &[&str] = &[
    "badnets", "blended", "sig", "wanet", "lc", "lf", "trojannn", "ssba",
];

/// What building an attack may need beyond its parameters: attacks computed against a model or
/// the training data (label-consistent) use them.
pub struct BuildContext<'a> {
    /// The clean training set.
    pub train: &'a ImageSet,
    /// The target rule.
    pub rule: TargetRule,
    /// Device for model-based preparation.
    pub device: &'a Device,
}

/// An attack and its parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "attack", rename_all = "kebab-case")]
pub enum AttackParams {
    /// A patch stamped on the image.
    Badnets {
        /// Side of the built-in square patch.
        patch_size: usize,
        /// Built-in pattern (ignored with `patch_png`).
        pattern: PatchPattern,
        /// Where the patch goes.
        position: PatchPosition,
        /// A user image as the patch (its alpha channel is the mask).
        patch_png: Option<PathBuf>,
    },
    /// A fixed pattern alpha-blended over the image.
    Blended {
        /// Blend weight of the pattern.
        alpha: f64,
        /// Seed of the default noise pattern (ignored with `pattern_png`).
        pattern_seed: u64,
        /// A user image as the pattern.
        pattern_png: Option<PathBuf>,
    },
    /// A horizontal sinusoid added to target-class images (clean-label).
    Sig {
        /// Amplitude on the 0..255 scale.
        delta: f64,
        /// Periods across the image width.
        frequency: f64,
        /// Amplitude of the test-time trigger, if stronger or weaker than the training one
        /// (absent: the same, as in BackdoorBench).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        test_delta: Option<f64>,
    },
    /// A smooth warping field, with noise-mode samples.
    Wanet(WaNetConfig),
    /// Label-consistent: adversarially perturbed target-class images plus a four-corner
    /// trigger (clean-label).
    Lc {
        /// Trigger contrast in (0, 1].
        amplitude: f32,
        /// The PGD perturbation.
        perturbation: LcPerturbation,
        /// The clean model the perturbation is computed against.
        clean_model: Option<PathBuf>,
    },
    /// A patch generated to excite chosen neurons of a clean model.
    Trojannn {
        /// The search.
        search: TrojanSearch,
        /// The clean model the trigger is generated against.
        clean_model: Option<PathBuf>,
    },
    /// Sample-specific invisible residual from a trained encoder (SSBA-style).
    Ssba(SsbaTraining),
    /// Input-Aware: generators trained jointly with the classifier (see
    /// [`train_input_aware`](super::train_input_aware); [`AttackParams::build`] refuses it).
    InputAware(InputAwareConfig),
    /// Low-frequency universal perturbation searched against a clean model.
    Lf {
        /// The search.
        search: LfSearch,
        /// The clean model the perturbation is searched against.
        clean_model: Option<PathBuf>,
    },
}

impl AttackParams {
    /// The parameters of `name` at BackdoorBench's defaults (`seed` seeds the trigger where it
    /// is random).
    pub fn defaults(name: &str, seed: u64) -> Result<Self, AttackError> {
        Ok(match name {
            "badnets" => AttackParams::Badnets {
                patch_size: DEFAULT_PATCH_SIZE,
                pattern: PatchPattern::WhiteSquare,
                position: PatchPosition::default(),
                patch_png: None,
            },
            "blended" => AttackParams::Blended {
                alpha: DEFAULT_ALPHA,
                pattern_seed: DEFAULT_PATTERN_SEED,
                pattern_png: None,
            },
            "sig" => AttackParams::Sig {
                delta: DEFAULT_DELTA,
                frequency: DEFAULT_FREQUENCY,
                test_delta: None,
            },
            "wanet" => AttackParams::Wanet(WaNetConfig {
                seed,
                ..WaNetConfig::default()
            }),
            "lc" => AttackParams::Lc {
                amplitude: 1.0,
                perturbation: LcPerturbation::default(),
                clean_model: None,
            },
            "trojannn" => AttackParams::Trojannn {
                search: TrojanSearch {
                    seed,
                    ..TrojanSearch::default()
                },
                clean_model: None,
            },
            "ssba" => AttackParams::Ssba(SsbaTraining {
                seed,
                ..SsbaTraining::default()
            }),
            "input-aware" => AttackParams::InputAware(InputAwareConfig {
                seed,
                ..InputAwareConfig::default()
            }),
            "lf" => AttackParams::Lf {
                search: LfSearch {
                    seed,
                    ..LfSearch::default()
                },
                clean_model: None,
            },
            other => {
                return Err(AttackError::InvalidConfig {
                    attack: other.to_string(),
                    reason: format!("unknown attack (known: {})", ATTACK_NAMES.join(", ")),
                });
            }
        })
    }

    /// Registry name.
    pub fn name(&self) -> &'static str {
        match self {
            AttackParams::Badnets { .. } => "badnets",
            AttackParams::Blended { .. } => "blended",
            AttackParams::Sig { .. } => "sig",
            AttackParams::Wanet(_) => "wanet",
            AttackParams::Lc { .. } => "lc",
            AttackParams::Lf { .. } => "lf",
            AttackParams::Trojannn { .. } => "trojannn",
            AttackParams::Ssba(_) => "ssba",
            AttackParams::InputAware(_) => "input-aware",
        }
    }

    /// Builds the attack for `ctx.train`, reading any user image or model from disk.
    pub fn build(&self, ctx: &BuildContext) -> Result<Box<dyn BackdoorAttack>, AttackError> {
        let shape = ctx.train.shape();
        Ok(match self {
            AttackParams::Badnets {
                patch_size,
                pattern,
                position,
                patch_png,
            } => {
                let attack = match patch_png {
                    Some(path) => BadNets::from_png_bytes(
                        &read_pattern(path)?,
                        shape.channels,
                        None,
                        PatchMask::AlphaChannel,
                        *position,
                        path,
                    )?,
                    None => BadNets::square(*pattern, *patch_size, *position)?,
                };
                attack.check_fits(shape)?;
                Box::new(attack)
            }
            AttackParams::Blended {
                alpha,
                pattern_seed,
                pattern_png,
            } => Box::new(match pattern_png {
                Some(path) => Blended::from_png_bytes(&read_pattern(path)?, shape, *alpha, path)?,
                None => Blended::with_noise_pattern(shape, *pattern_seed, *alpha)?,
            }),
            AttackParams::Sig {
                delta,
                frequency,
                test_delta,
            } => {
                let sig = Sig::new(*delta, *frequency)?;
                Box::new(match test_delta {
                    Some(d) => sig.with_test_delta(*d)?,
                    None => sig,
                })
            }
            AttackParams::Wanet(config) => Box::new(WaNet::new(*config, shape)?),
            AttackParams::Lc {
                amplitude,
                perturbation,
                clean_model,
            } => {
                let clean = load_clean_model("lc", clean_model.as_deref(), ctx.device)?;
                Box::new(LabelConsistent::prepare(
                    &clean,
                    ctx.train,
                    ctx.rule,
                    *amplitude,
                    *perturbation,
                    ctx.device,
                )?)
            }
            AttackParams::Ssba(config) => Box::new(Ssba::train(ctx.train, *config, ctx.device)?),
            AttackParams::InputAware(_) => {
                return Err(AttackError::InvalidConfig {
                    attack: "input-aware".into(),
                    reason:
                        "its trigger is trained together with the classifier: use train_input_aware"
                            .into(),
                });
            }
            AttackParams::Trojannn {
                search,
                clean_model,
            } => {
                let clean = load_clean_model("trojannn", clean_model.as_deref(), ctx.device)?;
                Box::new(TrojanNn::generate(&clean, ctx.train, *search, ctx.device)?)
            }
            AttackParams::Lf {
                search,
                clean_model,
            } => {
                let clean = load_clean_model("lf", clean_model.as_deref(), ctx.device)?;
                Box::new(LowFrequency::search(
                    &clean, ctx.train, ctx.rule, *search, ctx.device,
                )?)
            }
        })
    }
}

/// The clean model an attack is computed against.
fn load_clean_model(
    attack: &str,
    path: Option<&Path>,
    device: &Device,
) -> Result<crate::models::Classifier, AttackError> {
    let path = path.ok_or_else(|| AttackError::InvalidConfig {
        attack: attack.into(),
        reason: "needs a clean model to compute its trigger against (--clean-model, e.g. the model.safetensors of `vigil train`)".into(),
    })?;
    checkpoint::load_classifier(path, device).map_err(|e| AttackError::Model {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn read_pattern(path: &Path) -> Result<Vec<u8>, AttackError> {
    std::fs::read(path).map_err(|e| AttackError::Pattern {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_written_before_a_field_existed_read_back_unchanged() {
        // attack.json of a SIG record from before `test_delta`: resuming compares the
        // re-serialised parameters with the saved ones, so they must round-trip exactly.
        let saved = serde_json::json!({ "attack": "sig", "delta": 40.0, "frequency": 6.0 });
        let params: AttackParams = serde_json::from_value(saved.clone()).unwrap();
        assert_eq!(serde_json::to_value(&params).unwrap(), saved);
        let with = serde_json::json!({
            "attack": "sig", "delta": 40.0, "frequency": 6.0, "test_delta": 60.0
        });
        let params: AttackParams = serde_json::from_value(with.clone()).unwrap();
        assert_eq!(serde_json::to_value(&params).unwrap(), with);
    }
}
