//! An attacker who knows a latent-space detector (Mahalanobis on penultimate features, or any
//! other differentiable OOD score of [`crate::ood`]): the same budget as against MAD-FA, on the
//! detector's own score.
//!
//! **The attacker's knowledge** (white box): the model, the trusted set the score is fitted on,
//! the score and its threshold rule. Projected sign-gradient descent on `score(x) / sd +
//! keep * CE(x, target)` (`sd` the score's spread over the trusted set) in the ball
//! `|x - x0|_inf <= eps` around the triggered input (clipped to `[0, 1]`, step
//! `2.5 eps / steps`, no random start), through [`Pgd`]; the kept iterate is the one of least
//! objective among those the model still sends to the target (the start if none), as against
//! MAD-FA. This is the obfuscation the seed names: inputs whose activations look
//! normal to a latent detector while the backdoor works.

use std::time::Instant;

use burn::tensor::{Device, Tensor};
use rand::SeedableRng;
use rand::rngs::StdRng;

use super::{DetectionShift, EvasionConfig, EvasionEvent, shift};
use crate::attack::pgd::{Keep, Pgd, RandomStart, frozen};
use crate::data::{ImageSet, images_tensor, labels_tensor};
use crate::loss::cross_entropy_per_sample;
use crate::madfa::scores::Standardisation;
use crate::madfa::task::MadTask;
use crate::models::{BnMode, Classifier};
use crate::ood::{OodError, ScoreKind, score_set};
use crate::progress::Progress;

/// Inputs attacked at once.
const BATCH: usize = 32;

/// Subtracted from the objective of an iterate that leaves the target class, so it is never
/// kept.
const OFF_TARGET: f64 = 1e6;

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

    let spread = Standardisation::of(&trusted).sd;
    let attacker = frozen(model, device);
    let pgd = Pgd {
        start: RandomStart::None,
        keep: Keep::BestPerSample,
        ..Pgd::linf(config.eps, config.steps)
    };
    let mut attacked = Vec::with_capacity(originals.pixels().len());
    let mut rng = StdRng::seed_from_u64(0);
    let failure = std::cell::RefCell::new(None);
    let all: Vec<usize> = (0..originals.len()).collect();
    for chunk in all.chunks(BATCH) {
        let x = images_tensor(&originals, chunk, device);
        let targets = labels_tensor(
            &chunk
                .iter()
                .map(|&i| originals.label(i))
                .collect::<Vec<_>>(),
            &device.clone().autodiff(),
        );
        // Ascent on the negated objective: the score (in units of its trusted spread, so that
        // `keep` weighs alike against every detector) and the target's cross-entropy go down.
        // An iterate the model no longer sends to the target loses a constant far below any
        // objective, so the kept iterate is the best one that keeps the backdoor working (the
        // clean start is one); the constant has no gradient.
        let objective = |x: Tensor<4>| {
            let logits = attacker.forward(x.clone(), BnMode::Eval);
            let off_target = logits
                .clone()
                .detach()
                .argmax(1)
                .reshape([chunk.len()])
                .not_equal(targets.clone())
                .float()
                .mul_scalar(OFF_TARGET);
            let keep = cross_entropy_per_sample(logits, targets.clone()).mul_scalar(config.keep);
            match score.score(&attacker, x) {
                Ok(values) => (values.div_scalar(spread) + keep).neg() - off_target,
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
            done: chunk[chunk.len() - 1] + 1,
            total: originals.len(),
        });
    }
    let attacked_set = ImageSet::new(
        attacked.clone(),
        originals.labels().to_vec(),
        originals.shape(),
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
