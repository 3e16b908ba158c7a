//! MAD-FA as a detector: fit = calibrate the sampler on the trusted and sampling data (or take
//! given settings); score = run the localized SGLD chains around the model, trace the trusted
//! set and the inputs at every draw, and score each input by how weakly its loss co-varies
//! with the trusted set's (the four columns of [`crate::madfa::scores`]).
//!
//! The chain's steps depend only on the model, the sampling set and the seed, never on what is
//! traced, so every call to `score` walks exactly the same draws: thresholds set on held-out
//! trusted samples at fit time apply to inputs scored later (`docs/detectors.md`).

use burn::tensor::Device;
use serde::{Deserialize, Serialize};

use super::{DetectError, Detector, FitData, FittedDetector, ScoreTable, TrustedAttributions};
use crate::data::ImageSet;
use crate::madfa::input_gradient::LinearisedScorer;
use crate::madfa::scores::SCORE_NAMES;
use crate::madfa::{
    AnomalyScores, CALIBRATED_CHAINS, CALIBRATED_MIN_DRAWS, Calibration, CalibrationConfig,
    ChainConfig, DEFAULT_TRACE_LOSS, Quiet, anomaly_scores, bottom_attributions, calibrate,
    coupling, run_chains, top_attributions, user_task,
};
use crate::models::Classifier;

/// MAD-FA's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MadfaSettings {
    /// Calibrate lr, gamma, n_beta and the number of draws from the trusted and sampling data
    /// (`vigil calibrate`); otherwise sample with `chain` as it is.
    pub calibrate: bool,
    /// Chain settings: the sampler, batch sizes, BatchNorm mode, trace loss and seed (kept by
    /// calibration), and lr, gamma, n_beta and draws (replaced by calibration).
    pub chain: ChainConfig,
    /// Independent chains the draws are spread over.
    pub chains: usize,
    /// With `calibrate`: the fewest draws, over all chains, the calibration may recommend
    /// ([`CALIBRATED_MIN_DRAWS`] by default; 50 reproduces runs made before 2026-12-04).
    #[serde(default = "default_min_draws")]
    pub min_draws: usize,
    /// Per input, how many most and least attributed trusted samples to report.
    #[serde(default = "default_attributions")]
    pub attributions: usize,
}

fn default_attributions() -> usize {
    3
}

fn default_min_draws() -> usize {
    CALIBRATED_MIN_DRAWS
}

impl Default for MadfaSettings {
    /// Calibrated, [`CALIBRATED_CHAINS`] chains, the reference sampler, traces of
    /// [`DEFAULT_TRACE_LOSS`] (`vigil sample --calibrate`).
    fn default() -> Self {
        Self {
            calibrate: true,
            chain: ChainConfig {
                loss: DEFAULT_TRACE_LOSS,
                ..ChainConfig::reference()
            },
            chains: CALIBRATED_CHAINS,
            min_draws: CALIBRATED_MIN_DRAWS,
            attributions: default_attributions(),
        }
    }
}

impl MadfaSettings {
    /// The calibration these settings ask for around `base`.
    fn calibration(&self, base: ChainConfig) -> CalibrationConfig {
        CalibrationConfig {
            min_draws: self.min_draws,
            ..CalibrationConfig::defaults(base)
        }
    }
}

/// MAD-FA, with checked settings.
pub struct Madfa {
    settings: MadfaSettings,
}

impl Madfa {
    /// Checks `settings`.
    pub fn new(settings: MadfaSettings) -> Result<Self, DetectError> {
        let bad = |reason: String| DetectError::Settings {
            detector: "madfa".into(),
            reason,
        };
        if settings.chains == 0 {
            return Err(bad("at least one chain is needed".into()));
        }
        if settings.calibrate {
            settings
                .calibration(settings.chain.clone())
                .validate()
                .map_err(|e| bad(e.to_string()))?;
        } else {
            settings.chain.validate().map_err(|e| bad(e.to_string()))?;
        }
        Ok(Self { settings })
    }
}

/// MAD-FA fitted: the chain settings and the data the chains run on.
pub struct FittedMadfa {
    config: ChainConfig,
    chains: Vec<usize>,
    trusted: ImageSet,
    sampling: ImageSet,
    /// The calibration, when the settings asked for one.
    pub calibration: Option<Calibration>,
    attributions: usize,
}

impl FittedMadfa {
    /// The chain settings every `score` samples with.
    pub fn chain_config(&self) -> &ChainConfig {
        &self.config
    }
}

impl Detector for Madfa {
    fn name(&self) -> &str {
        "madfa"
    }

    /// Its trusted traces come with every walk: each trusted sample is scored against the
    /// others ([`crate::madfa::leave_one_out_scores`]).
    fn trusted_dependence(&self) -> super::TrustedDependence {
        super::TrustedDependence::LeaveOneOut
    }

    fn fit(&self, data: &FitData<'_>) -> Result<Box<dyn FittedDetector>, DetectError> {
        Ok(Box::new(self.fit_madfa(data)?))
    }
}

impl Madfa {
    /// [`Detector::fit`], as the concrete fitted MAD-FA (its chain settings and linearised
    /// scorer are then at hand).
    pub fn fit_madfa(&self, data: &FitData<'_>) -> Result<FittedMadfa, DetectError> {
        let mut base = self.settings.chain.clone();
        base.seed = data.seed;
        let (config, calibration) = if self.settings.calibrate {
            let calibration = calibrate(
                data.model,
                data.trusted,
                data.sampling,
                &self.settings.calibration(base),
                data.device,
                &mut Quiet,
            )?;
            (
                calibration.per_chain(self.settings.chains),
                Some(calibration),
            )
        } else {
            (base, None)
        };
        Ok(FittedMadfa {
            attributions: self.settings.attributions,
            config,
            chains: (0..self.settings.chains).collect(),
            trusted: data.trusted.clone(),
            sampling: data.sampling.clone(),
            calibration,
        })
    }
}

impl FittedDetector for FittedMadfa {
    fn name(&self) -> &str {
        "madfa"
    }

    fn columns(&self) -> Vec<String> {
        SCORE_NAMES.iter().map(|s| s.to_string()).collect()
    }

    fn score(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<ScoreTable, DetectError> {
        let mut tables = self.score_sets(model, &[inputs], device)?;
        Ok(tables.remove(0))
    }

    /// Traces all sets along one walk of the chains: the draws depend only on the model, the
    /// sampling set and the seed, and an input's scores only on its own traces and the trusted
    /// set's, so each set's scores equal those of a separate call, at the cost of one.
    fn score_sets(
        &self,
        model: &Classifier,
        sets: &[&ImageSet],
        device: &Device,
    ) -> Result<Vec<ScoreTable>, DetectError> {
        Ok(self.score_sets_and_trusted(model, sets, device)?.0)
    }

    /// The trusted traces come with every walk, so the trusted samples' leave-one-out scores
    /// ([`crate::madfa::leave_one_out_scores`]) cost no extra draw.
    fn score_sets_and_trusted(
        &self,
        model: &Classifier,
        sets: &[&ImageSet],
        device: &Device,
    ) -> Result<(Vec<ScoreTable>, Option<ScoreTable>), DetectError> {
        // Inputs' labels are never read (traces use w*'s predictions), so sets of another
        // label space (OOD images) join the trusted set's under placeholder labels.
        let conformed: Vec<std::borrow::Cow<'_, ImageSet>> = sets
            .iter()
            .map(|&set| {
                if set.class_names() == self.trusted.class_names() {
                    Ok(std::borrow::Cow::Borrowed(set))
                } else {
                    set.with_placeholder_labels(self.trusted.class_names())
                        .map(std::borrow::Cow::Owned)
                }
            })
            .collect::<Result<_, _>>()?;
        let sets: Vec<&ImageSet> = conformed.iter().map(|s| s.as_ref()).collect();
        // With nothing to score, one trusted image is traced: the walk needs a test set.
        let Some((first, rest)) = sets.split_first() else {
            let (_, own) = self.score_joined(model, &self.trusted.subset(&[0]), device)?;
            return Ok((Vec::new(), Some(own)));
        };
        let joined = rest.iter().try_fold((*first).clone(), |mut joined, set| {
            joined.append(set).map(|()| joined)
        });
        let Ok(joined) = joined else {
            // Sets that cannot be joined (other class names) are traced one walk each.
            let mut own = None;
            let mut tables = Vec::with_capacity(sets.len());
            for set in sets {
                let (table, trusted) = self.score_joined(model, set, device)?;
                tables.push(table);
                own = Some(trusted);
            }
            return Ok((tables, own));
        };
        let (all, own) = self.score_joined(model, &joined, device)?;
        let mut tables = Vec::with_capacity(sets.len());
        let mut start = 0;
        for set in sets {
            let end = start + set.len();
            let mut table = ScoreTable::new(
                all.columns
                    .iter()
                    .map(|(name, values)| (name.clone(), values[start..end].to_vec()))
                    .collect(),
            )?;
            if let Some(a) = &all.attributions {
                table = table.with_attributions(a.slice(start..end))?;
            }
            tables.push(table);
            start = end;
        }
        Ok((tables, Some(own)))
    }
}

impl FittedMadfa {
    /// MAD-FA's score as a differentiable function of single inputs
    /// ([`LinearisedScorer`]), over the draws every [`FittedDetector::score`] walks: the same
    /// chains, traced linearised.
    pub fn linearised_scorer(
        &self,
        model: &Classifier,
        device: &Device,
    ) -> Result<LinearisedScorer, DetectError> {
        // The walk needs a test set; one trusted image stands in (its traces are not used).
        let task = user_task(
            self.trusted.clone(),
            self.sampling.clone(),
            self.trusted.subset(&[0]),
            None,
        )?;
        let (scorer, _) = LinearisedScorer::from_chains(
            model,
            &task,
            &self.config,
            &self.chains,
            device,
            |_| {},
        )?;
        Ok(scorer)
    }

    /// Runs the chains once with `inputs` as the traced test set; scores every input, and every
    /// trusted sample against the others.
    fn score_joined(
        &self,
        model: &Classifier,
        inputs: &ImageSet,
        device: &Device,
    ) -> Result<(ScoreTable, ScoreTable), DetectError> {
        let task = user_task(
            self.trusted.clone(),
            self.sampling.clone(),
            inputs.clone(),
            None,
        )?;
        let outcome = run_chains(
            model,
            &task,
            &self.config,
            &self.chains,
            serde_json::json!({ "detector": "madfa" }),
            None,
            device,
            &mut Quiet,
            None,
        )?;
        let Some((traces, _)) = outcome else {
            return Err(DetectError::Stopped);
        };
        let coupling = coupling(&traces, 0)?;
        let inputs_table = table_of(&anomaly_scores(&coupling, &traces.trusted_labels))?
            .with_attributions(TrustedAttributions {
                most: top_attributions(&coupling, self.attributions),
                least: bottom_attributions(&coupling, self.attributions),
            })?;
        Ok((inputs_table, table_of(&coupling.trusted_leave_one_out)?))
    }
}

fn table_of(scores: &AnomalyScores) -> Result<ScoreTable, DetectError> {
    ScoreTable::new(
        scores
            .named()
            .into_iter()
            .map(|(name, values)| (name.to_string(), values.to_vec()))
            .collect(),
    )
}
