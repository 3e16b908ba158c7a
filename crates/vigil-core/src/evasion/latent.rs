//! An attacker who knows a latent-space detector (Mahalanobis on penultimate features, or any
//! other differentiable OOD score of [`crate::ood`]): the same budget as against MAD-FA, on the
//! detector's own score.
//!
//! **The attacker's knowledge** (white box): the model, the trusted set the score is fitted on,
//! the score and its threshold rule. Projected sign-gradient descent on `score(x) + keep *
//! CE(x, target)` in the ball `|x - x0|_inf <= eps` around the triggered input (clipped to
//! `[0, 1]`, step `2.5 eps / steps`, no random start, the iterate of least objective kept),
//! through [`Pgd`]. This is the obfuscation the seed names: inputs whose activations look
//! normal to a latent detector while the backdoor works.

use std::time::Instant;

use burn::tensor::{Device, Int, Tensor, TensorData};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{DetectionShift, EvasionConfig, EvasionEvent, shift};
use crate::attack::pgd::{Keep, Pgd, RandomStart, frozen};
use crate::data::ImageSet;
use crate::loss::cross_entropy_per_sample;
use crate::madfa::task::MadTask;
use crate::models::{BnMode, Classifier};
use crate::ood::{OodError, ScoreKind, score_set};
use crate::progress::Progress;

/// Inputs attacked at once.
const BATCH: usize = 32;

/// Fits `kind` on the task's trusted set (as `vigil detect` fits the detector), scores the
/// clean test inputs and the triggered ones `chosen`, attacks those on the score and scores
/// them again. Returns the shift and the attacked images (`[n, c, h, w]` flattened).
pub fn evade(
    model: &Classifier,
    task: &MadTask,
    chosen: &[usize],
    kind: ScoreKind,
    config: &EvasionConfig,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<(DetectionShift, Vec<f32>), OodError> {
    let started = Instant::now();
    let mut score = kind.build(BATCH);
    score.fit(model, &task.trusted, device)?;
    let trusted = score_set(score.as_ref(), model, &task.trusted, BATCH, device)?;
    let clean = super::clean_inputs(task);
    let clean_scores = score_set(
        score.as_ref(),
        model,
        &task.test.subset(&clean),
        BATCH,
        device,
    )?;
    let originals = task.test.subset(chosen);
    let before = score_set(score.as_ref(), model, &originals, BATCH, device)?;

    let attacker = frozen(model, device);
    let pgd = Pgd {
        start: RandomStart::None,
        keep: Keep::BestPerSample,
        ..Pgd::linf(config.eps, config.steps)
    };
    let shape = originals.shape();
    let mut attacked = Vec::with_capacity(originals.pixels().len());
    let mut rng = StdRng::seed_from_u64(0);
    let failure = std::cell::RefCell::new(None);
    for start in (0..originals.len()).step_by(BATCH) {
        let end = (start + BATCH).min(originals.len());
        let pixels =
            originals.pixels()[start * shape.num_values()..end * shape.num_values()].to_vec();
        let x = Tensor::<4>::from_data(
            TensorData::new(
                pixels,
                [end - start, shape.channels, shape.height, shape.width],
            ),
            device,
        );
        let targets = Tensor::<1, Int>::from_data(
            TensorData::new(
                originals.labels()[start..end]
                    .iter()
                    .map(|&l| i64::from(l))
                    .collect::<Vec<_>>(),
                [end - start],
            ),
            &device.clone().autodiff(),
        );
        // Ascent on the negated objective: the score and the target's cross-entropy go down.
        let objective = |x: Tensor<4>| {
            let keep = cross_entropy_per_sample(
                attacker.forward(x.clone(), BnMode::Eval),
                targets.clone(),
            )
            .mul_scalar(config.keep);
            match score.score(&attacker, x) {
                Ok(values) => (values + keep).neg(),
                Err(e) => {
                    failure.borrow_mut().get_or_insert(e);
                    keep.mul_scalar(0.0)
                }
            }
        };
        let result = pgd
            .attack(x, objective, &mut rng)
            .map_err(|e| OodError::Fit {
                score: "adaptive attack",
                reason: e.to_string(),
            })?;
        if let Some(e) = failure.borrow_mut().take() {
            return Err(e);
        }
        attacked.extend(result.into_data().iter::<f32>());
        progress.report(EvasionEvent::Attacked {
            done: end,
            total: originals.len(),
        });
    }
    let attacked_set = ImageSet::new(
        attacked.clone(),
        originals.labels().to_vec(),
        shape,
        originals.class_names().to_vec(),
        "attacked",
    )
    .map_err(|e| OodError::Fit {
        score: "adaptive attack",
        reason: e.to_string(),
    })?;
    let after = score_set(score.as_ref(), model, &attacked_set, BATCH, device)?;
    let predictions =
        crate::inference::evaluate(model, &attacked_set, None, BATCH, BnMode::Eval, device);
    let still_target = predictions
        .predicted
        .iter()
        .zip(&predictions.labels)
        .filter(|(p, l)| p == l)
        .count();
    let measured = shift(
        kind.name(),
        &trusted,
        (&clean_scores, &before, &after),
        still_target,
        (task, chosen, &attacked),
        config.fpr,
        started.elapsed().as_secs_f64(),
    )
    .map_err(|e| OodError::Fit {
        score: "adaptive attack",
        reason: e.to_string(),
    })?;
    Ok((measured, attacked))
}
