//! MAD-FA beside the OOD scores (`vigil benchmark ood --madfa`, issue 27).
//!
//! MAD-FA is not a function of a batch of images the way the seven OOD scores are: it samples
//! weights around the model and scores an input by how its loss moves with a trusted set's.
//! So it needs clean ID images of its own, disjoint from the ID test set (held-out test
//! images, [`super::OodBenchmarkData::madfa_pool`]): a stratified trusted and sampling set, as
//! in every MAD-FA run. Trusted samples must not be training images: the model fits those, so
//! their losses move unlike any unseen input's.
//!
//! - **clean, attacked and transfer settings**: the chains are walked once per model with exact
//!   traces of every set (clean, uniform-attacked, transfer) joined, so all settings share
//!   one set of draws; a row per MAD-FA score column.
//! - **adaptive**: the attacker pushes an input's MAD-FA score itself (ID inputs up, OOD inputs
//!   down) through linearised traces ([`crate::madfa::input_gradient`]) of the defender's own
//!   chains (white box), with the benchmark's eps; see [`adaptive`]. Each input costs
//!   `steps` single-input weight-space differences, so it runs on a seeded subset of each set
//!   (`adaptive_inputs` per set), and its AUROC before and after is measured on that subset
//!   with the same linearised score ([`MadfaAdaptiveRow`]).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{BenchmarkError, OodBenchmarkData, Progress, Setting};
use crate::data::ImageSet;
use crate::detect::madfa::{FittedMadfa, Madfa, MadfaSettings};
use crate::detect::{FitData, FittedDetector, ScoreTable};
use crate::evasion::madfa::{ScoreGoal, pgd_on_scores};
use crate::madfa::input_gradient::{InputScore, LinearisedScorer};
use crate::madfa::scores::SCORE_NAMES;
use crate::models::Classifier;
use crate::ood::evaluate;
use crate::progress;

/// MAD-FA's part of an OOD benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadfaInOod {
    /// The detector's settings (`vigil detect`'s defaults: calibrated, four chains).
    pub settings: MadfaSettings,
    /// Trusted images per class, from the held-out pool.
    pub trusted_per_class: usize,
    /// Sampling images per class, from the held-out pool.
    pub sampling_per_class: usize,
    /// Inputs of the ID test set and of each OOD set attacked adaptively through MAD-FA's
    /// score (a seeded subset; 0 skips the adaptive setting for MAD-FA).
    pub adaptive_inputs: usize,
    /// Steps of that attack (step `2.5 eps / steps`, the benchmark's eps).
    pub adaptive_steps: usize,
    /// The score that attack pushes and its rows measure (the recommended one by default;
    /// absent from settings saved before it was a setting, which attacked that one).
    #[serde(default = "recommended_score")]
    pub adaptive_score: InputScore,
}

/// The recommended score, the adaptive attack's default target.
fn recommended_score() -> InputScore {
    InputScore::ClcPlusClassCcc
}

impl MadfaInOod {
    /// The reference split (250 trusted and 250 sampling images per class), the default
    /// detector, 50 inputs per set attacked adaptively in 20 steps (the adaptive attack on
    /// triggered inputs uses 20 too, `vigil evade`) on the recommended score.
    pub fn defaults() -> Self {
        Self {
            settings: MadfaSettings::default(),
            trusted_per_class: 250,
            sampling_per_class: 250,
            adaptive_inputs: 50,
            adaptive_steps: 20,
            adaptive_score: recommended_score(),
        }
    }

    pub(super) fn validate(&self) -> Result<(), BenchmarkError> {
        Madfa::new(self.settings.clone())?;
        if self.trusted_per_class == 0 || self.sampling_per_class == 0 {
            return Err(BenchmarkError::Invalid(
                "MAD-FA needs at least one trusted and one sampling image per class".into(),
            ));
        }
        if self.adaptive_inputs > 0 && self.adaptive_steps == 0 {
            return Err(BenchmarkError::Invalid(
                "the adaptive attack on MAD-FA needs at least one step".into(),
            ));
        }
        Ok(())
    }

    /// MAD-FA fitted on its trusted and sampling sets, drawn from `pool` by `seed`.
    pub(super) fn fit(
        &self,
        model: &Classifier,
        pool: &ImageSet,
        batch_size: usize,
        seed: u64,
        device: &Device,
    ) -> Result<FittedMadfa, BenchmarkError> {
        let parts = pool
            .stratified_split(&[self.trusted_per_class, self.sampling_per_class], seed)
            .map_err(|e| {
                BenchmarkError::Invalid(format!(
                    "MAD-FA's trusted and sampling sets come from ID test images outside the ID \
                     test set: {e} (lower --id-limit or the per-class sizes)"
                ))
            })?;
        let (trusted, sampling) = (pool.subset(&parts[0]), pool.subset(&parts[1]));
        let detector = Madfa::new(self.settings.clone())?;
        Ok(detector.fit_madfa(&FitData {
            model,
            trusted: &trusted,
            sampling: &sampling,
            batch_size,
            seed,
            device,
        })?)
    }
}

/// The score a row of MAD-FA's column `column` is named by in reports (`madfa-clc`, ...).
pub fn score_name(column: &str) -> String {
    format!("madfa-{}", column.replace('_', "-"))
}

/// Names of MAD-FA's score columns in reports, recommended one last.
pub fn score_names() -> Vec<String> {
    SCORE_NAMES.iter().map(|c| score_name(c)).collect()
}

/// Per setting, the ID scores and each OOD set's scores of one column.
pub(super) struct SettingScores<'a> {
    /// The setting.
    pub setting: Setting,
    /// Scores of the ID inputs.
    pub id: &'a [f64],
    /// Scores of each OOD set's inputs, in set order.
    pub ood: Vec<&'a [f64]>,
}

/// MAD-FA's tables of the sets one walk traces, in order: ID test, OOD sets, then the
/// uniform-attacked ID and OOD sets, then the transfer sets if any.
pub(super) fn exact_tables(
    fitted: &FittedMadfa,
    model: &Classifier,
    data: &OodBenchmarkData,
    uniform: (&ImageSet, &[ImageSet]),
    transfer: Option<(&ImageSet, &[ImageSet])>,
    device: &Device,
) -> Result<Vec<ScoreTable>, BenchmarkError> {
    let mut sets: Vec<&ImageSet> = vec![&data.id_test];
    sets.extend(data.ood.iter().map(|s| &s.images));
    sets.push(uniform.0);
    sets.extend(uniform.1);
    if let Some((id, ood)) = transfer {
        sets.push(id);
        sets.extend(ood);
    }
    Ok(fitted.score_sets(model, &sets, device)?)
}

/// The scores of column `column` per setting, from [`exact_tables`]' tables.
pub(super) fn settings_of<'a>(
    tables: &'a [ScoreTable],
    column: &str,
    n_ood: usize,
) -> Result<Vec<SettingScores<'a>>, BenchmarkError> {
    let col = |t: &'a ScoreTable| -> Result<&'a [f64], BenchmarkError> {
        t.column(column)
            .ok_or_else(|| BenchmarkError::Invalid(format!("MAD-FA gave no column {column}")))
    };
    let group = |start: usize| -> Result<(&'a [f64], Vec<&'a [f64]>), BenchmarkError> {
        let id = col(&tables[start])?;
        let ood = tables[start + 1..start + 1 + n_ood]
            .iter()
            .map(col)
            .collect::<Result<_, _>>()?;
        Ok((id, ood))
    };
    let (id_clean, ood_clean) = group(0)?;
    let (id_adv, ood_adv) = group(1 + n_ood)?;
    let mut out = vec![
        SettingScores {
            setting: Setting::Clean,
            id: id_clean,
            ood: ood_clean.clone(),
        },
        SettingScores {
            setting: Setting::IdAttacked,
            id: id_adv,
            ood: ood_clean,
        },
        SettingScores {
            setting: Setting::OodAttacked,
            id: id_clean,
            ood: ood_adv.clone(),
        },
        SettingScores {
            setting: Setting::BothAttacked,
            id: id_adv,
            ood: ood_adv,
        },
    ];
    if tables.len() == 3 * (1 + n_ood) {
        let (id, ood) = group(2 * (1 + n_ood))?;
        out.push(SettingScores {
            setting: Setting::Transfer,
            id,
            ood,
        });
    }
    Ok(out)
}

/// The adaptive attack on MAD-FA against one OOD set, measured on subsets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadfaAdaptiveRow {
    /// The model.
    pub model: String,
    /// The OOD set.
    pub ood_set: String,
    /// ID inputs attacked (the same for every set).
    pub id_inputs: usize,
    /// OOD inputs attacked.
    pub ood_inputs: usize,
    /// The score attacked and measured (its column name; absent from reports made before the
    /// adaptive score was a setting, which attacked the recommended one).
    #[serde(default = "recommended_column")]
    pub score: String,
    /// AUROC (OOD positive) of the linearised score on these inputs, unattacked.
    pub auroc_before: f64,
    /// The same after the attack.
    pub auroc_after: f64,
}

fn recommended_column() -> String {
    crate::madfa::scores::RECOMMENDED_SCORE.to_string()
}

/// Inputs attacked in lockstep: each step streams the chains' displacements once for them all.
const ATTACK_CHUNK: usize = 16;

/// Pushes each input of `set` (`chosen` indices) through [`pgd_on_scores`] on `score`, up when
/// `raise`; returns the scores before and after.
fn attack_subset(
    scorer: &LinearisedScorer,
    score: InputScore,
    set: &ImageSet,
    chosen: &[usize],
    budget: (f64, usize),
    raise: bool,
    progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
) -> Result<(Vec<f64>, Vec<f64>), BenchmarkError> {
    let goal = ScoreGoal {
        raise,
        class: None,
        keep: 0.0,
    };
    let mut before = Vec::with_capacity(chosen.len());
    let mut after = Vec::with_capacity(chosen.len());
    for chunk in chosen.chunks(ATTACK_CHUNK) {
        let images: Vec<&[f32]> = chunk.iter().map(|&i| set.image(i)).collect();
        let labelled: Vec<(&[f32], i64)> = images
            .iter()
            .map(|&x| Ok((x, scorer.predict(x)?)))
            .collect::<Result<_, crate::madfa::MadError>>()?;
        before.extend(scorer.scores(&labelled, score)?);
        let goals = vec![goal; chunk.len()];
        let attacked = pgd_on_scores(scorer, &images, budget, score, &goals)?;
        after.extend(attacked.into_iter().map(|(_, score, _)| score));
        progress.report(Progress::Images(chunk.len()));
    }
    Ok((before, after))
}

/// MAD-FA's adaptive setting for one model: `adaptive_inputs` ID test inputs pushed up the
/// configured score and as many of each OOD set pushed down it, through the linearised traces
/// of the fitted detector's chains; one [`MadfaAdaptiveRow`] per OOD set, and the after-attack
/// scores per set (ID, then each OOD set) for the benchmark's adaptive rows.
#[allow(clippy::type_complexity)]
pub(super) fn adaptive(
    config: &MadfaInOod,
    fitted: &FittedMadfa,
    model: (&str, &Classifier),
    data: &OodBenchmarkData,
    (eps, seed): (f64, u64),
    device: &Device,
    progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
) -> Result<(Vec<MadfaAdaptiveRow>, Vec<f64>, Vec<Vec<f64>>), BenchmarkError> {
    let scorer = fitted.linearised_scorer(model.1, device)?;
    let budget = (eps, config.adaptive_steps);
    let score = config.adaptive_score;
    let n = config.adaptive_inputs;
    // The first `n` of a seeded shuffle (all when fewer), ascending.
    let subset = |set: &ImageSet, seed: u64| set.random_split(n.min(set.len()), seed);
    let id_chosen = subset(&data.id_test, seed)?.0;
    let (id_before, id_after) = attack_subset(
        &scorer,
        score,
        &data.id_test,
        &id_chosen,
        budget,
        true,
        progress,
    )?;
    let mut rows = Vec::new();
    let mut ood_after = Vec::new();
    for (k, set) in data.ood.iter().enumerate() {
        let chosen = subset(&set.images, seed.wrapping_add(1 + k as u64))?.0;
        let (before, after) = attack_subset(
            &scorer,
            score,
            &set.images,
            &chosen,
            budget,
            false,
            progress,
        )?;
        rows.push(MadfaAdaptiveRow {
            model: model.0.to_string(),
            ood_set: set.name.clone(),
            id_inputs: id_chosen.len(),
            ood_inputs: chosen.len(),
            score: score.column().to_string(),
            auroc_before: evaluate(&id_before, &before)?.auroc,
            auroc_after: evaluate(&id_after, &after)?.auroc,
        });
        ood_after.push(after);
    }
    Ok((rows, id_after, ood_after))
}
