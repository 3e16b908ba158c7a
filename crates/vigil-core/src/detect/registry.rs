//! Every detector by name, with its settings: the one place a new detector is registered.

use serde::{Deserialize, Serialize};

use super::ibd_psc::{IbdPsc, IbdPscSettings};
use super::madfa::{Madfa, MadfaSettings};
use super::ood_score::{OodScoreDetector, OodScoreSettings};
use super::que::{Que, QueSettings};
use super::scale_up::{ScaleUp, ScaleUpSettings};
use super::sentinet::{Sentinet, SentinetSettings};
use super::spectral::{Spectral, SpectralSettings};
use super::strip::{Strip, StripSettings};
use super::teco::{Teco, TecoSettings};
use super::{DetectError, Detector};
use crate::ood::ScoreKind;

/// A detector's settings, tagged by its name (`{"detector": "madfa", ...}` in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "detector", rename_all = "kebab-case")]
pub enum DetectorSettings {
    /// MAD-FA ([`super::madfa`]).
    Madfa(MadfaSettings),
    /// A post-hoc OOD score ([`super::ood_score`]).
    OodScore(OodScoreSettings),
    /// STRIP ([`super::strip`]).
    Strip(StripSettings),
    /// SCALE-UP ([`super::scale_up`]).
    ScaleUp(ScaleUpSettings),
    /// IBD-PSC ([`super::ibd_psc`]).
    IbdPsc(IbdPscSettings),
    /// TeCo ([`super::teco`]).
    Teco(TecoSettings),
    /// SentiNet ([`super::sentinet`]).
    Sentinet(SentinetSettings),
    /// Spectral signatures ([`super::spectral`]).
    Spectral(SpectralSettings),
    /// The quantum entropy score ([`super::que`]).
    Que(QueSettings),
}

impl DetectorSettings {
    /// The names [`DetectorSettings::by_name`] knows, in report order.
    pub fn names() -> Vec<&'static str> {
        let mut names = vec!["madfa"];
        names.extend(ScoreKind::ALL.iter().map(|k| k.name()));
        names.extend([super::strip::NAME, super::scale_up::NAME]);
        names.push("ibd-psc");
        names.push("teco");
        names.push(super::sentinet::NAME);
        names.extend(["spectral", "que"]);
        names
    }

    /// The detector called `name`, with its reference settings.
    pub fn by_name(name: &str) -> Result<Self, DetectError> {
        if name == "madfa" {
            return Ok(Self::Madfa(MadfaSettings::default()));
        }
        if name == super::strip::NAME {
            return Ok(Self::Strip(StripSettings::default()));
        }
        if name == super::scale_up::NAME {
            return Ok(Self::ScaleUp(ScaleUpSettings::default()));
        }
        if name == "ibd-psc" {
            return Ok(Self::IbdPsc(IbdPscSettings::default()));
        }
        if name == "teco" {
            return Ok(Self::Teco(TecoSettings::default()));
        }
        if name == super::sentinet::NAME {
            return Ok(Self::Sentinet(SentinetSettings::default()));
        }
        if name == "spectral" {
            return Ok(Self::Spectral(SpectralSettings::default()));
        }
        if name == "que" {
            return Ok(Self::Que(QueSettings::default()));
        }
        if let Ok(score) = name.parse::<ScoreKind>() {
            return Ok(Self::OodScore(OodScoreSettings { score }));
        }
        Err(DetectError::Unknown {
            name: name.into(),
            known: Self::names().join(", "),
        })
    }

    /// The column that stands for the detector in summaries and charts: MAD-FA's recommended
    /// score ([`crate::madfa::RECOMMENDED_SCORE`], chosen on validation models that never
    /// enter a benchmark table; CLC until 2026-12-05), SCALE-UP's SPC (the paper's score), the
    /// only column otherwise.
    pub fn primary_column(&self) -> &'static str {
        match self {
            Self::Madfa(_) => crate::madfa::RECOMMENDED_SCORE,
            Self::Strip(_) => super::strip::COLUMN,
            Self::ScaleUp(_) => super::scale_up::SPC,
            Self::IbdPsc(_) => "psc",
            other => other.name(),
        }
    }

    /// The detector's name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Madfa(_) => "madfa",
            Self::OodScore(s) => s.score.name(),
            Self::Strip(_) => super::strip::NAME,
            Self::ScaleUp(_) => super::scale_up::NAME,
            Self::IbdPsc(_) => "ibd-psc",
            Self::Teco(_) => "teco",
            Self::Sentinet(_) => super::sentinet::NAME,
            Self::Spectral(_) => "spectral",
            Self::Que(_) => "que",
        }
    }

    /// Checks the settings once and builds the detector.
    pub fn build(self) -> Result<Box<dyn Detector>, DetectError> {
        Ok(match self {
            Self::Madfa(s) => Box::new(Madfa::new(s)?),
            Self::OodScore(s) => Box::new(OodScoreDetector::new(s)),
            Self::Strip(s) => Box::new(Strip::new(s)?),
            Self::ScaleUp(s) => Box::new(ScaleUp::new(s)?),
            Self::IbdPsc(s) => Box::new(IbdPsc::new(s)?),
            Self::Teco(s) => Box::new(Teco::new(s)?),
            Self::Sentinet(s) => Box::new(Sentinet::new(s)?),
            Self::Spectral(s) => Box::new(Spectral::new(s)?),
            Self::Que(s) => Box::new(Que::new(s)?),
        })
    }
}
