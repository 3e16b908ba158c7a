//! Post-hoc out-of-distribution scores behind one interface: fit on in-distribution training
//! data, then score inputs, **higher = more OOD** (the OpenOOD and pytorch-ood convention).
//!
//! One file per score. Every score maps a batch of `[0, 1]` images to one value per image as a
//! tensor, so when the images live on an autodiff device the score is differentiable and an
//! adaptive attack can aim at it (`attack::pgd`). [`score_set`] scores a whole data set and
//! [`evaluate`] turns ID and OOD scores into the one set of metrics every report uses.

pub mod energy;
pub mod knn;
pub mod mahalanobis;
pub mod max_logit;
pub mod msp;
pub mod odin;
pub mod react;

use std::convert::Infallible;

use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::data::{ImageSet, batch};
use crate::metrics::{MetricsError, OodMetrics, ood_metrics};
use crate::models::Classifier;

pub use energy::Energy;
pub use knn::Knn;
pub use mahalanobis::Mahalanobis;
pub use max_logit::MaxLogit;
pub use msp::Msp;
pub use odin::Odin;
pub use react::React;

/// Errors of fitting or evaluating an OOD score.
#[derive(Debug, thiserror::Error)]
pub enum OodError {
    /// The fitting data cannot support the score.
    #[error("cannot fit {score}: {reason}")]
    Fit {
        /// The score's name.
        score: &'static str,
        /// Why.
        reason: String,
    },
    /// The score was used before [`OodScore::fit`].
    #[error("{0} is not fitted: call fit on in-distribution training data first")]
    NotFitted(&'static str),
    /// The metrics could not be computed (empty or non-finite scores).
    #[error(transparent)]
    Metrics(#[from] MetricsError),
}

/// An OOD score: fitted on ID training data, then applied to inputs (higher = more OOD).
pub trait OodScore {
    /// Short name for reports (`msp`, `energy`, ...).
    fn name(&self) -> &'static str;

    /// Fits what the score needs from the model on ID training data (nothing for scores of the
    /// logits alone).
    fn fit(
        &mut self,
        _model: &Classifier,
        _id_train: &ImageSet,
        _device: &Device,
    ) -> Result<(), OodError> {
        Ok(())
    }

    /// Scores of a batch of `[0, 1]` images, shape `[n]`, differentiable on an autodiff device.
    fn score(&self, model: &Classifier, x: Tensor<4>) -> Result<Tensor<1>, OodError>;
}

/// The scores by name, for settings and reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// [`Msp`].
    Msp,
    /// [`Energy`].
    Energy,
    /// [`MaxLogit`].
    MaxLogit,
    /// [`Odin`].
    Odin,
    /// [`Mahalanobis`].
    Mahalanobis,
    /// [`Knn`] with k = 50.
    Knn,
    /// [`React`] at the 90th percentile.
    React,
}

impl ScoreKind {
    /// Every score, in report order.
    pub const ALL: [ScoreKind; 7] = [
        ScoreKind::Msp,
        ScoreKind::Energy,
        ScoreKind::MaxLogit,
        ScoreKind::Odin,
        ScoreKind::Mahalanobis,
        ScoreKind::Knn,
        ScoreKind::React,
    ];

    /// The name in reports and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ScoreKind::Msp => "msp",
            ScoreKind::Energy => "energy",
            ScoreKind::MaxLogit => "max-logit",
            ScoreKind::Odin => "odin",
            ScoreKind::Mahalanobis => "mahalanobis",
            ScoreKind::Knn => "knn",
            ScoreKind::React => "react",
        }
    }

    /// An unfitted score with the papers' settings; fitting reads features in batches of
    /// `batch_size`.
    pub fn build(self, batch_size: usize) -> Box<dyn OodScore> {
        match self {
            ScoreKind::Msp => Box::new(Msp),
            ScoreKind::Energy => Box::new(Energy::default()),
            ScoreKind::MaxLogit => Box::new(MaxLogit),
            ScoreKind::Odin => Box::new(Odin::default()),
            ScoreKind::Mahalanobis => Box::new(Mahalanobis::new(batch_size)),
            ScoreKind::Knn => Box::new(Knn::new(50, batch_size)),
            ScoreKind::React => Box::new(React::new(0.9, batch_size)),
        }
    }
}

impl std::fmt::Display for ScoreKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for ScoreKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Self::ALL.iter().map(|k| k.name()).collect();
                format!("unknown OOD score `{s}` (one of {})", names.join(", "))
            })
    }
}

/// Scores of every image of `set`, in order, in batches of `batch_size` (eval mode, no autodiff).
pub fn score_set(
    score: &(impl OodScore + ?Sized),
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> Result<Vec<f64>, OodError> {
    let model = model.for_inference();
    let mut out = Vec::with_capacity(set.len());
    for_each_batch::<OodError>(set, batch_size, device, |images| {
        let values = score.score(&model, images)?;
        out.extend(values.into_data().iter::<f32>().map(f64::from));
        Ok(())
    })?;
    Ok(out)
}

/// AUROC, FPR at 95% TPR, AUPR-in and AUPR-out of ID scores against OOD scores, OOD the positive
/// class.
pub fn evaluate(id_scores: &[f64], ood_scores: &[f64]) -> Result<OodMetrics, OodError> {
    Ok(ood_metrics(id_scores, ood_scores)?)
}

/// Features of `set` under `model` (eval mode), `[n, d]` row-major in f64, with the labels.
pub(crate) fn features_of(
    model: &Classifier,
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
) -> (Vec<f64>, usize, Vec<usize>) {
    let model = model.for_inference();
    let mut features = Vec::new();
    let mut dim = 0;
    let Ok(()) = for_each_batch::<Infallible>(set, batch_size, device, |images| {
        let f = model.features(images, crate::models::BnMode::Eval);
        dim = f.dims()[1];
        features.extend(f.into_data().iter::<f32>().map(f64::from));
        Ok(())
    });
    let labels = (0..set.len()).map(|i| usize::from(set.label(i))).collect();
    (features, dim, labels)
}

/// `t` on the device kind of `like`: wrapped for autodiff when `like` is tracked, so a score's
/// fitted tensors (kept on the plain device) combine with differentiable inputs.
pub(crate) fn on_device_of<const D: usize, const E: usize>(
    t: Tensor<D>,
    like: &Tensor<E>,
) -> Tensor<D> {
    if like.is_autodiff() { t.autodiff() } else { t }
}

/// Calls `f` on the images of `set`, in order, in batches of `batch_size` on the plain device.
fn for_each_batch<E>(
    set: &ImageSet,
    batch_size: usize,
    device: &Device,
    mut f: impl FnMut(Tensor<4>) -> Result<(), E>,
) -> Result<(), E> {
    let device = device.clone().inner();
    let all: Vec<usize> = (0..set.len()).collect();
    for chunk in all.chunks(batch_size.max(1)) {
        f(batch(set, chunk, &device).images)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests;
