//! OOD detection under attack (`docs/halo.md`, "Benchmark"): every model x OOD score, on ID
//! test data against each test OOD set, in six settings.
//!
//! - **clean**;
//! - **ID attacked**: ID inputs pushed towards a uniform prediction (PGD minimising
//!   `CE_to_uniform`, so they look OOD);
//! - **OOD attacked**: OOD inputs made confident (PGD maximising it, so they look ID);
//! - **both attacked**;
//! - **adaptive**: both sides attacked through the score itself (ID inputs pushed up the score,
//!   OOD inputs down), one attack per score;
//! - **transfer**: both sides attacked on a separately trained source model, then shown to every
//!   model.
//!
//! The attacks on the uniform objective are crafted once per model and shared by every score.
//! Metrics are AUROC, FPR at 95% TPR, AUPR-in and AUPR-out with **OOD the positive class**, per
//! OOD set and averaged (over all sets, near ones, far ones); beside them clean accuracy and
//! accuracy under PGD on the cross-entropy (robust accuracy).
//!
//! Each model's stages are saved as they finish (`parts/<model>/<stage>.json`), so an
//! interrupted run continues where it stopped; saved parts of other settings, data or weights are
//! refused, never mixed in.

use std::cell::RefCell;
use std::path::Path;
use std::time::Instant;

use burn::tensor::{Device, Int, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use super::BenchmarkError;
use super::parts::PartStore;
use crate::attack::pgd::{Pgd, frozen, objective};
use crate::data::ood_sets::OodGroup;
use crate::data::{ImageSet, batch};
use crate::detect::madfa::FittedMadfa;
use crate::identity::{self, RunIdentity};
use crate::inference::evaluate as classify;
use crate::metrics::OodMetrics;
use crate::models::{BnMode, Classifier};
use crate::ood::{OodError, OodScore, ScoreKind, evaluate, score_set};
use crate::progress;
use crate::train::mix;

pub use madfa::{MadfaAdaptiveRow, MadfaInOod};

/// What the benchmark measures and how hard it attacks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodBenchmarkConfig {
    /// The attack of every attacked setting (and of robust accuracy, on the cross-entropy).
    pub attack: Pgd,
    /// The scores evaluated in every setting.
    pub scores: Vec<ScoreKind>,
    /// The scores also attacked adaptively (each costs one attack of every set per model).
    pub adaptive: Vec<ScoreKind>,
    /// Attack and scoring batch size.
    pub batch_size: usize,
    /// Seed of the attacks' random starts.
    pub seed: u64,
    /// MAD-FA beside the OOD scores ([`madfa`]); it needs [`OodBenchmarkData::madfa_pool`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub madfa: Option<MadfaInOod>,
}

impl OodBenchmarkConfig {
    /// The HALO reference's evaluation: L-inf eps 8/255, 40 PGD steps of 2.5 eps / 40 from a
    /// random start (best iterate per sample), attack batch 200; every score, each also
    /// attacked adaptively.
    pub fn reference_defaults() -> Self {
        Self {
            attack: Pgd::linf(8.0 / 255.0, 40),
            scores: ScoreKind::ALL.to_vec(),
            adaptive: ScoreKind::ALL.to_vec(),
            batch_size: 200,
            seed: 0,
            madfa: None,
        }
    }

    fn validate(&self) -> Result<(), BenchmarkError> {
        self.attack.validate()?;
        if self.scores.is_empty() {
            return Err(BenchmarkError::Invalid("no OOD score to evaluate".into()));
        }
        if let Some(s) = self.adaptive.iter().find(|s| !self.scores.contains(s)) {
            return Err(BenchmarkError::Invalid(format!(
                "the adaptive attack on {s} needs {s} among the scores"
            )));
        }
        if self.batch_size == 0 {
            return Err(BenchmarkError::Invalid("the batch size must be > 0".into()));
        }
        if let Some(madfa) = &self.madfa {
            madfa.validate()?;
        }
        Ok(())
    }
}

/// A test OOD set, already in the ID images' shape.
#[derive(Debug, Clone)]
pub struct OodSet {
    /// Its name in reports.
    pub name: String,
    /// Near or far, for the group averages.
    pub group: OodGroup,
    /// The images.
    pub images: ImageSet,
}

/// The data of a benchmark.
#[derive(Debug, Clone)]
pub struct OodBenchmarkData {
    /// ID training images the scores are fitted on (Mahalanobis, k-NN, ReAct).
    pub id_fit: ImageSet,
    /// ID test images (labelled, for accuracy).
    pub id_test: ImageSet,
    /// The test OOD sets.
    pub ood: Vec<OodSet>,
    /// Clean labelled ID images disjoint from `id_test` (held-out test images): MAD-FA's
    /// trusted and sampling sets are drawn from them. Needed with [`OodBenchmarkConfig::madfa`].
    pub madfa_pool: Option<ImageSet>,
}

/// A model under test, by name.
#[derive(Debug, Clone)]
pub struct Contender {
    /// Its name in reports (also its folder of saved parts).
    pub name: String,
    /// The model.
    pub model: Classifier,
}

/// The six evaluation settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Setting {
    /// Nothing attacked.
    Clean,
    /// ID inputs pushed towards a uniform prediction.
    IdAttacked,
    /// OOD inputs made confident.
    OodAttacked,
    /// Both.
    BothAttacked,
    /// Both, through the score itself.
    Adaptive,
    /// Both, crafted on another model.
    Transfer,
}

impl Setting {
    /// Report order.
    pub const ALL: [Setting; 6] = [
        Setting::Clean,
        Setting::IdAttacked,
        Setting::OodAttacked,
        Setting::BothAttacked,
        Setting::Adaptive,
        Setting::Transfer,
    ];

    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Setting::Clean => "clean",
            Setting::IdAttacked => "id-attacked",
            Setting::OodAttacked => "ood-attacked",
            Setting::BothAttacked => "both-attacked",
            Setting::Adaptive => "adaptive",
            Setting::Transfer => "transfer",
        }
    }
}

/// One measurement: a model's score in a setting against one OOD set (or an average over sets:
/// `mean`, `near`, `far`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodRow {
    /// The model.
    pub model: String,
    /// The score: an OOD score's name ([`ScoreKind`]) or a MAD-FA column's
    /// ([`madfa::score_name`]).
    pub score: String,
    /// The setting.
    pub setting: Setting,
    /// The OOD set, or `mean`, `near`, `far`.
    pub ood_set: String,
    /// The metrics (OOD positive).
    #[serde(flatten)]
    pub metrics: OodMetrics,
}

/// A model's classification accuracy on the ID test set, clean and under PGD on the
/// cross-entropy of the true labels.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelAccuracy {
    /// The model.
    pub model: String,
    /// Clean accuracy.
    pub clean: f64,
    /// Robust accuracy.
    pub robust: f64,
}

/// Name, group and size of a test OOD set, for the report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OodSetSummary {
    /// Name.
    pub name: String,
    /// Group.
    pub group: OodGroup,
    /// Images.
    pub size: usize,
}

/// Everything a benchmark measured.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OodBenchmarkReport {
    /// vigil's version.
    pub vigil_version: String,
    /// The settings.
    pub config: OodBenchmarkConfig,
    /// Which class is positive in FPR@95TPR and AUPR-out.
    pub positive_class: String,
    /// ID images the scores were fitted on.
    pub id_fit_size: usize,
    /// ID test images.
    pub id_test_size: usize,
    /// The test OOD sets.
    pub ood_sets: Vec<OodSetSummary>,
    /// The model the transfer attack was crafted on, if any.
    pub transfer_source: Option<String>,
    /// Accuracy of every model.
    pub accuracy: Vec<ModelAccuracy>,
    /// Every measurement per OOD set.
    pub rows: Vec<OodRow>,
    /// Averages over OOD sets (`mean`, `near`, `far`).
    pub averages: Vec<OodRow>,
    /// The adaptive attack on MAD-FA, on its subsets, before and after (empty without it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub madfa_adaptive: Vec<MadfaAdaptiveRow>,
    /// Wall-clock seconds of this invocation (parts loaded from disk cost nothing).
    pub seconds: f64,
}

/// What the benchmark is doing, for a progress display ([`progress::Progress`]).
#[derive(Debug, Clone, Copy)]
pub enum Progress<'a> {
    /// A stage of a model starts; `images` attacked or scored images are ahead.
    Stage {
        /// The model.
        model: &'a str,
        /// The stage (`accuracy`, `uniform`, `adaptive-msp`, `transfer`, ...).
        stage: &'a str,
        /// Images the stage attacks.
        images: usize,
    },
    /// A stage was found on disk and skipped.
    Loaded {
        /// The model.
        model: &'a str,
        /// The stage.
        stage: &'a str,
    },
    /// `n` more images attacked.
    Images(usize),
}

/// A stage's results as saved on disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    /// Content hash of the model's weights and spec ([`identity::hash_classifier`]).
    weights: String,
    accuracy: Option<ModelAccuracy>,
    rows: Vec<OodRow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    madfa_adaptive: Vec<MadfaAdaptiveRow>,
}

/// Runs the benchmark over `contenders`, the transfer attack crafted on `transfer_source` when
/// given (name, model). With `out`, each finished stage is saved under `out/parts` and reused
/// by a later run of the same settings, data and weights. `progress` is asked before each stage
/// that runs whether to stop ([`BenchmarkError::Stopped`]).
pub fn run(
    config: &OodBenchmarkConfig,
    data: &OodBenchmarkData,
    contenders: &[Contender],
    transfer_source: Option<&Contender>,
    out: Option<&Path>,
    device: &Device,
    progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
) -> Result<OodBenchmarkReport, BenchmarkError> {
    config.validate()?;
    check_inputs(data, contenders)?;
    if config.madfa.is_some() && data.madfa_pool.as_ref().is_none_or(ImageSet::is_empty) {
        return Err(BenchmarkError::Invalid(
            "MAD-FA needs clean ID images outside the ID test set for its trusted and sampling sets"
                .into(),
        ));
    }
    let started = Instant::now();
    let parts = match out {
        Some(out) => {
            // Parts are reused only under the same settings, data and transfer source; each
            // part also carries its own model's weights hash, so rungs can be added later.
            let mut identity = RunIdentity::new(
                "ood-benchmark",
                serde_json::to_value(config).map_err(|e| {
                    BenchmarkError::Invalid(format!("cannot record the settings: {e}"))
                })?,
            )
            .with_images("id fit", &data.id_fit)
            .with_images("id test", &data.id_test);
            for set in &data.ood {
                identity = identity.with_images(&format!("ood {}", set.name), &set.images);
            }
            if let (Some(_), Some(pool)) = (&config.madfa, &data.madfa_pool) {
                identity = identity.with_images("madfa pool", pool);
            }
            if let Some(source) = transfer_source {
                identity = identity.with_model("transfer source", &source.model)?;
            }
            let groups: Vec<&str> = contenders.iter().map(|c| c.name.as_str()).collect();
            Some(PartStore::open(out, &identity, &groups)?)
        }
        None => None,
    };
    let mut bench = Bench {
        config,
        data,
        device,
        transfer: None,
        transfer_source,
    };
    let mut accuracy = Vec::new();
    let mut rows = Vec::new();
    let mut madfa_adaptive = Vec::new();
    for contender in contenders {
        let weights = identity::hash_classifier(&contender.model)?;
        let mut model_run = ModelRun {
            contender,
            weights: weights.clone(),
            scores: None,
            uniform: None,
            madfa: None,
        };
        let mut stages = vec![Stage::Accuracy, Stage::Uniform];
        stages.extend(config.adaptive.iter().map(|&s| Stage::Adaptive(s)));
        if transfer_source.is_some() {
            stages.push(Stage::Transfer);
        }
        if let Some(madfa) = &config.madfa {
            stages.push(Stage::Madfa);
            if madfa.adaptive_inputs > 0 {
                stages.push(Stage::MadfaAdaptive);
            }
        }
        for stage in stages {
            let name = stage.name();
            let saved = match &parts {
                Some(store) => store.load::<Part>(&contender.name, &name)?,
                None => None,
            };
            let part = match saved {
                Some(part) if part.weights == weights => {
                    progress.report(Progress::Loaded {
                        model: &contender.name,
                        stage: &name,
                    });
                    part
                }
                Some(_) => {
                    return Err(BenchmarkError::Mismatch {
                        dir: out.map(Path::to_path_buf).unwrap_or_default(),
                        what: format!(
                            "the weights of {} changed since its parts were saved",
                            contender.name
                        ),
                    });
                }
                None => {
                    if progress.should_stop() {
                        return Err(BenchmarkError::Stopped);
                    }
                    progress.report(Progress::Stage {
                        model: &contender.name,
                        stage: &name,
                        images: bench.images_of(stage),
                    });
                    let part = bench.stage(&mut model_run, stage, progress)?;
                    if let Some(store) = &parts {
                        store.save(&contender.name, &name, &part)?;
                    }
                    part
                }
            };
            accuracy.extend(part.accuracy);
            rows.extend(part.rows);
            madfa_adaptive.extend(part.madfa_adaptive);
        }
    }
    let averages = averages(&rows, &data.ood);
    Ok(OodBenchmarkReport {
        vigil_version: env!("CARGO_PKG_VERSION").into(),
        config: config.clone(),
        positive_class:
            "OOD (FPR at 95% TPR: the fraction of ID inputs flagged when 95% of OOD inputs are)"
                .into(),
        id_fit_size: data.id_fit.len(),
        id_test_size: data.id_test.len(),
        ood_sets: data
            .ood
            .iter()
            .map(|s| OodSetSummary {
                name: s.name.clone(),
                group: s.group,
                size: s.images.len(),
            })
            .collect(),
        transfer_source: transfer_source.map(|s| s.name.clone()),
        accuracy,
        rows,
        averages,
        madfa_adaptive,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// One unit of saved work per model.
#[derive(Debug, Clone, Copy)]
enum Stage {
    Accuracy,
    Uniform,
    Adaptive(ScoreKind),
    Transfer,
    /// MAD-FA in the clean, uniform-attacked and transfer settings (one walk).
    Madfa,
    /// MAD-FA attacked through its own score.
    MadfaAdaptive,
}

impl Stage {
    fn name(self) -> String {
        match self {
            Stage::Accuracy => "accuracy".into(),
            Stage::Uniform => "uniform".into(),
            Stage::Adaptive(s) => format!("adaptive-{s}"),
            Stage::Transfer => "transfer".into(),
            Stage::Madfa => "madfa".into(),
            Stage::MadfaAdaptive => "adaptive-madfa".into(),
        }
    }
}

/// The score-agnostic attacks on inputs.
#[derive(Debug, Clone, Copy)]
enum InputAttack {
    /// ID made to look OOD: towards a uniform prediction.
    TowardsOod,
    /// OOD made to look ID: away from a uniform prediction.
    TowardsId,
    /// Misclassification: up the cross-entropy of the labels (robust accuracy).
    Misclassify,
}

impl InputAttack {
    /// Its part of the random-start seed.
    fn stream(self) -> &'static str {
        match self {
            InputAttack::TowardsOod => "id->ood",
            InputAttack::TowardsId => "ood->id",
            InputAttack::Misclassify => "cross-entropy",
        }
    }
}

/// The shared state of one run.
struct Bench<'a> {
    config: &'a OodBenchmarkConfig,
    data: &'a OodBenchmarkData,
    device: &'a Device,
    transfer_source: Option<&'a Contender>,
    /// The transfer attack's ID and OOD sets, crafted once on first use.
    transfer: Option<(ImageSet, Vec<ImageSet>)>,
}

/// The state of one model's stages: its scores are fitted on first use.
struct ModelRun<'a> {
    contender: &'a Contender,
    weights: String,
    scores: Option<Vec<(ScoreKind, Box<dyn OodScore>)>>,
    /// The uniform-attacked ID and OOD sets, once crafted (MAD-FA scores them too).
    uniform: Option<(ImageSet, Vec<ImageSet>)>,
    /// MAD-FA fitted, once a stage needed it.
    madfa: Option<FittedMadfa>,
}

impl Bench<'_> {
    fn ood_images(&self) -> usize {
        self.data.ood.iter().map(|s| s.images.len()).sum()
    }

    /// Images a stage attacks (for progress).
    fn images_of(&self, stage: Stage) -> usize {
        let both = self.data.id_test.len() + self.ood_images();
        match stage {
            Stage::Accuracy => self.data.id_test.len(),
            Stage::Uniform | Stage::Adaptive(_) => both,
            Stage::Transfer if self.transfer.is_none() => both,
            Stage::Transfer => 0,
            // MAD-FA's walk reports no images; its adaptive attack one per attacked input.
            Stage::Madfa => 0,
            Stage::MadfaAdaptive => {
                let n = self.config.madfa.as_ref().map_or(0, |m| m.adaptive_inputs);
                n.min(self.data.id_test.len())
                    + self
                        .data
                        .ood
                        .iter()
                        .map(|s| n.min(s.images.len()))
                        .sum::<usize>()
            }
        }
    }

    fn stage(
        &mut self,
        run: &mut ModelRun,
        stage: Stage,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<Part, BenchmarkError> {
        let model = &run.contender.model;
        let name = run.contender.name.clone();
        let mut part = Part {
            weights: run.weights.clone(),
            accuracy: None,
            rows: Vec::new(),
            madfa_adaptive: Vec::new(),
        };
        if let Stage::Accuracy = stage {
            let clean = classify(
                model,
                &self.data.id_test,
                None,
                256,
                BnMode::Eval,
                self.device,
            );
            let attacked = self.attack_on(
                model,
                &name,
                &self.data.id_test,
                InputAttack::Misclassify,
                progress,
            )?;
            let robust = classify(model, &attacked, None, 256, BnMode::Eval, self.device);
            part.accuracy = Some(ModelAccuracy {
                model: name,
                clean: clean.accuracy(),
                robust: robust.accuracy(),
            });
            return Ok(part);
        }
        if let Stage::Madfa | Stage::MadfaAdaptive = stage {
            self.madfa_stage(run, stage, &mut part, progress)?;
            return Ok(part);
        }
        if run.scores.is_none() {
            let mut fitted = Vec::new();
            for &kind in &self.config.scores {
                let mut score = kind.build(self.config.batch_size);
                score.fit(model, &self.data.id_fit, self.device)?;
                fitted.push((kind, score));
            }
            run.scores = Some(fitted);
        }
        let scores = run.scores.as_deref().unwrap_or_default();
        let id = &self.data.id_test;
        match stage {
            Stage::Accuracy | Stage::Madfa | Stage::MadfaAdaptive => {}
            Stage::Uniform => {
                let (id_adv, ood_adv) = self.uniform_sets(model, &name, progress)?;
                for (kind, score) in scores {
                    let batch = self.config.batch_size;
                    let id_clean = score_set(score.as_ref(), model, id, batch, self.device)?;
                    let id_attacked =
                        score_set(score.as_ref(), model, &id_adv, batch, self.device)?;
                    for (set, adv) in self.data.ood.iter().zip(&ood_adv) {
                        let clean =
                            score_set(score.as_ref(), model, &set.images, batch, self.device)?;
                        let attacked = score_set(score.as_ref(), model, adv, batch, self.device)?;
                        for (setting, i, o) in [
                            (Setting::Clean, &id_clean, &clean),
                            (Setting::IdAttacked, &id_attacked, &clean),
                            (Setting::OodAttacked, &id_clean, &attacked),
                            (Setting::BothAttacked, &id_attacked, &attacked),
                        ] {
                            part.rows
                                .push(row(&name, kind.name(), setting, &set.name, i, o)?);
                        }
                    }
                }
                run.uniform = Some((id_adv, ood_adv));
            }
            Stage::Adaptive(kind) => {
                let score = scores
                    .iter()
                    .find(|(k, _)| *k == kind)
                    .map(|(_, s)| s.as_ref())
                    .ok_or_else(|| {
                        BenchmarkError::Invalid(format!("{kind} is not among the scores"))
                    })?;
                let batch = self.config.batch_size;
                let stream = format!("adaptive-{kind}");
                let id_adv = self.attack_score(model, &name, &stream, id, score, 1.0, progress)?;
                let id_scores = score_set(score, model, &id_adv, batch, self.device)?;
                for set in &self.data.ood {
                    let adv = self.attack_score(
                        model,
                        &name,
                        &stream,
                        &set.images,
                        score,
                        -1.0,
                        progress,
                    )?;
                    let ood_scores = score_set(score, model, &adv, batch, self.device)?;
                    part.rows.push(row(
                        &name,
                        kind.name(),
                        Setting::Adaptive,
                        &set.name,
                        &id_scores,
                        &ood_scores,
                    )?);
                }
            }
            Stage::Transfer => {
                let (data, device, batch) = (self.data, self.device, self.config.batch_size);
                let (id_adv, ood_adv) = self.transfer_sets(progress)?;
                for (kind, score) in scores {
                    let id_scores = score_set(score.as_ref(), model, id_adv, batch, device)?;
                    for (set, adv) in data.ood.iter().zip(ood_adv) {
                        let ood_scores = score_set(score.as_ref(), model, adv, batch, device)?;
                        part.rows.push(row(
                            &name,
                            kind.name(),
                            Setting::Transfer,
                            &set.name,
                            &id_scores,
                            &ood_scores,
                        )?);
                    }
                }
            }
        }
        Ok(part)
    }

    /// The ID test set pushed towards a uniform prediction and each OOD set away from it, on
    /// `model` (seeded by the model's name, so crafting them again gives the same sets).
    fn uniform_sets(
        &self,
        model: &Classifier,
        name: &str,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<(ImageSet, Vec<ImageSet>), BenchmarkError> {
        let id = &self.data.id_test;
        let id_adv = self.attack_on(model, name, id, InputAttack::TowardsOod, progress)?;
        let mut ood_adv = Vec::new();
        for set in &self.data.ood {
            ood_adv.push(self.attack_on(
                model,
                name,
                &set.images,
                InputAttack::TowardsId,
                progress,
            )?);
        }
        Ok((id_adv, ood_adv))
    }

    /// MAD-FA's stages ([`madfa`]): fits it on the held-out pool once per model, then either
    /// walks its chains over every setting's sets or attacks it through its own score.
    fn madfa_stage(
        &mut self,
        run: &mut ModelRun,
        stage: Stage,
        part: &mut Part,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<(), BenchmarkError> {
        let (Some(config), Some(pool)) = (&self.config.madfa, &self.data.madfa_pool) else {
            return Err(BenchmarkError::Invalid(
                "MAD-FA's stages need its settings and a held-out pool".into(),
            ));
        };
        let model = &run.contender.model;
        let name = run.contender.name.clone();
        if run.madfa.is_none() {
            run.madfa = Some(config.fit(
                model,
                pool,
                self.config.batch_size,
                self.config.seed,
                self.device,
            )?);
        }
        let Some(fitted) = run.madfa.as_ref() else {
            return Err(BenchmarkError::Invalid("MAD-FA was not fitted".into()));
        };
        let n_ood = self.data.ood.len();
        if let Stage::MadfaAdaptive = stage {
            let (rows, id_after, ood_after) = madfa::adaptive(
                config,
                fitted,
                (&name, model),
                self.data,
                (self.config.attack.eps, self.config.seed),
                self.device,
                progress,
            )?;
            let score = madfa::score_name(config.adaptive_score.column());
            for (set, after) in self.data.ood.iter().zip(&ood_after) {
                part.rows.push(row(
                    &name,
                    &score,
                    Setting::Adaptive,
                    &set.name,
                    &id_after,
                    after,
                )?);
            }
            part.madfa_adaptive = rows;
            return Ok(());
        }
        if run.uniform.is_none() {
            run.uniform = Some(self.uniform_sets(model, &name, progress)?);
        }
        if self.transfer_source.is_some() {
            self.transfer_sets(progress)?;
        }
        let Some((id_adv, ood_adv)) = run.uniform.as_ref() else {
            return Err(BenchmarkError::Invalid(
                "the uniform attacks are missing".into(),
            ));
        };
        let tables = madfa::exact_tables(
            fitted,
            model,
            self.data,
            (id_adv, ood_adv),
            self.transfer.as_ref().map(|(id, ood)| (id, ood.as_slice())),
            self.device,
        )?;
        for column in crate::madfa::scores::SCORE_NAMES {
            let score = madfa::score_name(column);
            for scores in madfa::settings_of(&tables, column, n_ood)? {
                for (set, ood) in self.data.ood.iter().zip(&scores.ood) {
                    part.rows.push(row(
                        &name,
                        &score,
                        scores.setting,
                        &set.name,
                        scores.id,
                        ood,
                    )?);
                }
            }
        }
        Ok(())
    }

    /// The transfer attack's sets, crafted on the source model once.
    fn transfer_sets(
        &mut self,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<(&ImageSet, &[ImageSet]), BenchmarkError> {
        if self.transfer.is_none() {
            let source = self.transfer_source.ok_or_else(|| {
                BenchmarkError::Invalid("the transfer setting needs a source model".into())
            })?;
            let stream = format!("transfer:{}", source.name);
            let id = self.attack_on(
                &source.model,
                &stream,
                &self.data.id_test,
                InputAttack::TowardsOod,
                progress,
            )?;
            let mut ood = Vec::new();
            for set in &self.data.ood {
                ood.push(self.attack_on(
                    &source.model,
                    &stream,
                    &set.images,
                    InputAttack::TowardsId,
                    progress,
                )?);
            }
            self.transfer = Some((id, ood));
        }
        let (id, ood) = self
            .transfer
            .as_ref()
            .ok_or_else(|| BenchmarkError::Invalid("the transfer sets were not crafted".into()))?;
        Ok((id, ood.as_slice()))
    }

    /// `set` attacked on `model` with one of the score-agnostic objectives.
    fn attack_on(
        &self,
        model: &Classifier,
        stream: &str,
        set: &ImageSet,
        goal: InputAttack,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<ImageSet, BenchmarkError> {
        let attacker = frozen(model, self.device);
        let seed = self.stream_seed(&[stream, goal.stream(), set.source()]);
        let labels_device = self.device.clone().autodiff();
        let pgd = &self.config.attack;
        attack_set(
            set,
            self.config.batch_size,
            self.device,
            seed,
            progress,
            |x, labels, rng| {
                Ok(match goal {
                    InputAttack::TowardsOod => {
                        pgd.attack(x, objective::towards_uniform(&attacker), rng)
                    }
                    InputAttack::TowardsId => {
                        pgd.attack(x, objective::away_from_uniform(&attacker), rng)
                    }
                    InputAttack::Misclassify => {
                        let labels = labels.to_device(&labels_device);
                        pgd.attack(x, objective::cross_entropy(&attacker, labels), rng)
                    }
                }?)
            },
        )
    }

    /// `set` attacked through `score`: `sign` 1 pushes the score up (ID made to look OOD), -1
    /// down.
    #[allow(clippy::too_many_arguments)]
    fn attack_score(
        &self,
        model: &Classifier,
        model_name: &str,
        stream: &str,
        set: &ImageSet,
        score: &dyn OodScore,
        sign: f64,
        progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    ) -> Result<ImageSet, BenchmarkError> {
        let attacker = frozen(model, self.device);
        let direction = if sign > 0.0 { "up" } else { "down" };
        let seed = self.stream_seed(&[model_name, stream, direction, set.source()]);
        let failure: RefCell<Option<OodError>> = RefCell::new(None);
        let attacked = attack_set(
            set,
            self.config.batch_size,
            self.device,
            seed,
            progress,
            |x, _, rng| {
                let objective = |x: Tensor<4>| match score.score(&attacker, x.clone()) {
                    Ok(values) => values.mul_scalar(sign),
                    Err(e) => {
                        failure.borrow_mut().get_or_insert(e);
                        x.sum_dim(1)
                            .sum_dim(2)
                            .sum_dim(3)
                            .flatten(0, 3)
                            .mul_scalar(0.0)
                    }
                };
                Ok(self.config.attack.attack(x, objective, rng)?)
            },
        )?;
        match failure.into_inner() {
            Some(e) => Err(e.into()),
            None => Ok(attacked),
        }
    }

    fn stream_seed(&self, parts: &[&str]) -> u64 {
        parts
            .iter()
            .fold(self.config.seed, |h, p| mix(h, hash_bytes(p.as_bytes()), 7))
    }
}

/// `set` with every image replaced by `attack(images, labels, rng)` of its batch; each batch's
/// random start is seeded by `(seed, batch index)`.
fn attack_set(
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
    seed: u64,
    progress: &mut dyn for<'e> progress::Progress<Progress<'e>>,
    mut attack: impl FnMut(Tensor<4>, Tensor<1, Int>, &mut StdRng) -> Result<Tensor<4>, BenchmarkError>,
) -> Result<ImageSet, BenchmarkError> {
    let plain = device.clone().inner();
    let mut out = set.clone();
    let all: Vec<usize> = (0..set.len()).collect();
    let per_image = set.shape().num_values();
    for (b, chunk) in all.chunks(batch_size.max(1)).enumerate() {
        let inputs = batch(set, chunk, &plain);
        let mut rng = StdRng::seed_from_u64(mix(seed, b as u64, 0));
        let attacked = attack(inputs.images, inputs.labels, &mut rng)?;
        let values: Vec<f32> = attacked.into_data().iter::<f32>().collect();
        for (&i, image) in chunk.iter().zip(values.chunks_exact(per_image)) {
            out.image_mut(i).copy_from_slice(image);
        }
        progress.report(Progress::Images(chunk.len()));
    }
    Ok(out)
}

fn row(
    model: &str,
    score: &str,
    setting: Setting,
    ood_set: &str,
    id_scores: &[f64],
    ood_scores: &[f64],
) -> Result<OodRow, BenchmarkError> {
    Ok(OodRow {
        model: model.into(),
        score: score.into(),
        setting,
        ood_set: ood_set.into(),
        metrics: evaluate(id_scores, ood_scores)?,
    })
}

/// Per model, score and setting: the metrics averaged over all OOD sets (`mean`) and over each
/// group present (`near`, `far`).
pub fn averages(rows: &[OodRow], sets: &[OodSet]) -> Vec<OodRow> {
    let group_of = |name: &str| sets.iter().find(|s| s.name == name).map(|s| s.group);
    let mut keys: Vec<(String, String, Setting)> = Vec::new();
    for r in rows {
        let key = (r.model.clone(), r.score.clone(), r.setting);
        if !keys.contains(&key) {
            keys.push(key);
        }
    }
    let mut out = Vec::new();
    for (model, score, setting) in keys {
        let of_key: Vec<&OodRow> = rows
            .iter()
            .filter(|r| r.model == model && r.score == score && r.setting == setting)
            .collect();
        for (label, group) in [
            ("mean", None),
            ("near", Some(OodGroup::Near)),
            ("far", Some(OodGroup::Far)),
        ] {
            let chosen: Vec<&OodMetrics> = of_key
                .iter()
                .filter(|r| group.is_none() || group_of(&r.ood_set) == group)
                .map(|r| &r.metrics)
                .collect();
            if chosen.is_empty() || (group.is_some() && chosen.len() == of_key.len()) {
                continue;
            }
            let n = chosen.len() as f64;
            let mean = |f: fn(&OodMetrics) -> f64| chosen.iter().map(|m| f(m)).sum::<f64>() / n;
            out.push(OodRow {
                model: model.clone(),
                score: score.clone(),
                setting,
                ood_set: label.into(),
                metrics: OodMetrics {
                    auroc: mean(|m| m.auroc),
                    aupr_in: mean(|m| m.aupr_in),
                    aupr_out: mean(|m| m.aupr_out),
                    fpr_at_95_tpr: mean(|m| m.fpr_at_95_tpr),
                },
            });
        }
    }
    out
}

fn check_inputs(data: &OodBenchmarkData, contenders: &[Contender]) -> Result<(), BenchmarkError> {
    if contenders.is_empty() {
        return Err(BenchmarkError::Invalid("no model to benchmark".into()));
    }
    if data.ood.is_empty() {
        return Err(BenchmarkError::Invalid("no test OOD set".into()));
    }
    if data.id_test.is_empty() || data.id_fit.is_empty() {
        return Err(BenchmarkError::Invalid(
            "the ID test and fitting sets must not be empty".into(),
        ));
    }
    let shape = data.id_test.shape();
    for set in &data.ood {
        if set.images.is_empty() {
            return Err(BenchmarkError::Invalid(format!(
                "the OOD set {} is empty",
                set.name
            )));
        }
        if set.images.shape() != shape {
            return Err(BenchmarkError::Invalid(format!(
                "the OOD set {} has images of {:?}, the ID data {:?}",
                set.name,
                set.images.shape(),
                shape
            )));
        }
    }
    let mut names: Vec<&str> = contenders.iter().map(|c| c.name.as_str()).collect();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        return Err(BenchmarkError::Invalid(format!(
            "two models are named {}",
            w[0]
        )));
    }
    for c in contenders {
        if c.name.is_empty() || c.name.contains(['/', '\\']) || c.name.starts_with('.') {
            return Err(BenchmarkError::Invalid(format!(
                "model name `{}` cannot name a folder",
                c.name
            )));
        }
        if c.model.spec.input_shape != [shape.channels, shape.height, shape.width] {
            return Err(BenchmarkError::Invalid(format!(
                "model {} takes inputs of {:?}, the data are {:?}",
                c.name, c.model.spec.input_shape, shape
            )));
        }
    }
    Ok(())
}

/// A content hash of bytes (the run's seed mixer over 8-byte words).
fn hash_bytes(bytes: &[u8]) -> u64 {
    bytes.chunks(8).fold(bytes.len() as u64, |h, chunk| {
        let mut word = [0u8; 8];
        word[..chunk.len()].copy_from_slice(chunk);
        mix(h, u64::from_le_bytes(word), 3)
    })
}

pub mod madfa;
mod report;

#[cfg(test)]
mod tests;
