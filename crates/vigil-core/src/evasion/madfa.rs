//! An attacker who knows MAD-FA: triggered inputs pushed, within an L-infinity ball, to couple
//! with the trusted samples while the backdoor keeps working (issue 27's adaptive attack).
//!
//! **The attacker's knowledge** (white box, the strongest attacker): the model, the trusted
//! set, the score and its threshold rule, and the defender's chains themselves (their
//! displacements: the same sampler settings and seed). It attacks MAD-FA's score through
//! linearised traces ([`crate::madfa::input_gradient`]): projected sign-gradient descent on
//! `s(x) + keep * l(x)`, where `s` is the anomaly score and `l` the trace loss of the backdoor's
//! target (so the input stays in the target class), in the ball `|x - x0|_inf <= eps` around
//! the triggered input `x0`, clipped to `[0, 1]`, step `2.5 eps / steps`, no random start. The
//! kept iterate is the one of least score among those w* still puts in the target class (the
//! start if none). The defender scores with the same linearised traces, so before and after are
//! measured on one footing.

use std::time::Instant;

use burn::tensor::Device;

use super::{DetectionShift, EvasionConfig, EvasionEvent, shift};
use crate::madfa::MadError;
use crate::madfa::chain::ChainConfig;
use crate::madfa::input_gradient::{InputScore, LinearisedScorer};
use crate::madfa::task::MadTask;
use crate::models::Classifier;
use crate::progress::Progress;

/// Where [`pgd_on_score`] pushes an input's score, and which class it must keep.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScoreGoal {
    /// Raise the score (an ID input made to look anomalous) instead of lowering it.
    pub raise: bool,
    /// The class w* must keep predicting for an iterate to count, and the label of the traces;
    /// `None`: any class counts, and each iterate is traced with w*'s prediction for it (what
    /// the defender would trace it with).
    pub class: Option<i64>,
    /// Weight of the trace loss at w* of `class` in the objective (keeps the class; with
    /// `class` only).
    pub keep: f64,
}

/// Projected sign-gradient steps on MAD-FA's linearised score `which` of one input (`steps`
/// steps of `2.5 eps / steps` in the L-inf ball of radius `eps` around `original`, clipped to
/// `[0, 1]`, no random start). Returns the best iterate that counts (least score, or greatest
/// when raising; the start if none counts), its score, and whether any counted.
pub fn pgd_on_score(
    scorer: &LinearisedScorer,
    original: &[f32],
    (eps, steps): (f64, usize),
    which: InputScore,
    goal: ScoreGoal,
) -> Result<(Vec<f32>, f64, bool), MadError> {
    let alpha = (2.5 * eps / steps as f64) as f32;
    let eps = eps as f32;
    let direction: f32 = if goal.raise { 1.0 } else { -1.0 };
    let mut x = original.to_vec();
    let mut best: Option<(f64, Vec<f32>)> = None;
    for step in 0..=steps {
        let predicted = scorer.predict(&x)?;
        let label = goal.class.unwrap_or(predicted);
        // The last iterate is only scored: no step follows it.
        let (score, gradient) = if step == steps {
            (scorer.score(&x, label, which)?, Vec::new())
        } else {
            let keep = if goal.class.is_some() { goal.keep } else { 0.0 };
            scorer.objective_and_gradient(&x, label, which, keep)?
        };
        let better = |b: f64| if goal.raise { score > b } else { score < b };
        if predicted == label && best.as_ref().is_none_or(|(b, _)| better(*b)) {
            best = Some((score, x.clone()));
        }
        for ((xi, &g), &x0) in x.iter_mut().zip(&gradient).zip(original) {
            let moved = *xi + direction * alpha * g.signum() * f32::from(g != 0.0);
            *xi = moved.clamp(x0 - eps, x0 + eps).clamp(0.0, 1.0);
        }
    }
    Ok(match best {
        Some((score, x)) => (x, score, true),
        None => {
            let label = goal.class.unwrap_or(scorer.predict(original)?);
            let score = scorer.score(original, label, which)?;
            (original.to_vec(), score, false)
        }
    })
}

/// Attacks one triggered input (see the module): returns the kept iterate and whether w* puts
/// it in `target`.
pub fn evade_one(
    scorer: &LinearisedScorer,
    original: &[f32],
    target: i64,
    config: &EvasionConfig,
) -> Result<(Vec<f32>, bool), MadError> {
    let goal = ScoreGoal {
        raise: false,
        class: Some(target),
        keep: config.keep,
    };
    let (x, _, in_target) = pgd_on_score(
        scorer,
        original,
        (config.eps, config.steps),
        config.score,
        goal,
    )?;
    Ok((x, in_target))
}

/// Runs the chains `chains` (indices) of `chain`, linearised, around `w_star` on `task`, then
/// scores the clean test inputs and the triggered ones `chosen` (test indices), attacks those
/// (see the module) and scores them again. Returns the shift and the attacked images
/// (`[n, c, h, w]` flattened).
#[allow(clippy::too_many_arguments)]
pub fn evade(
    w_star: &Classifier,
    task: &MadTask,
    chosen: &[usize],
    chain: &ChainConfig,
    chains: &[usize],
    config: &EvasionConfig,
    device: &Device,
    progress: &mut impl Progress<EvasionEvent>,
) -> Result<(DetectionShift, Vec<f32>), MadError> {
    let started = Instant::now();
    let (scorer, test_labels) =
        LinearisedScorer::from_chains(w_star, task, chain, chains, device, |done| {
            progress.report(EvasionEvent::Sampled {
                chain: done,
                chains: chains.len(),
            })
        })?;
    let test_labels = &test_labels;

    let clean = super::clean_inputs(task);
    let total = clean.len() + chosen.len();
    let mut scores = Vec::with_capacity(total);
    for (done, &i) in clean.iter().chain(chosen).enumerate() {
        progress.report(EvasionEvent::Scored { done, total });
        scores.push(scorer.score(task.test.image(i), test_labels[i], config.score)?);
    }
    let before = scores.split_off(clean.len());

    let mut attacked = Vec::new();
    let mut after = Vec::with_capacity(chosen.len());
    let mut still_target = 0;
    for (done, &i) in chosen.iter().enumerate() {
        let (x, in_target) = evade_one(&scorer, task.test.image(i), test_labels[i], config)?;
        still_target += usize::from(in_target);
        after.push(scorer.score(&x, test_labels[i], config.score)?);
        attacked.extend(x);
        progress.report(EvasionEvent::Attacked {
            done: done + 1,
            total: chosen.len(),
        });
    }
    let measured = shift(
        "madfa",
        scorer.trusted_scores(config.score),
        (&scores, &before, &after),
        still_target,
        (task, chosen, &attacked),
        config.fpr,
        started.elapsed().as_secs_f64(),
    )
    .map_err(|e| MadError::Data(e.to_string()))?;
    Ok((measured, attacked))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::madfa::input_gradient::tests::fixture;

    #[test]
    fn an_attacked_input_scores_lower_stays_in_the_ball_and_in_the_target_class() {
        let (scorer, x, _) = fixture();
        let target = scorer.predict(&x).unwrap();
        let config = EvasionConfig {
            eps: 0.05,
            steps: 10,
            ..EvasionConfig::defaults()
        };
        let before = scorer.score(&x, target, config.score).unwrap();
        let (attacked, in_target) = evade_one(&scorer, &x, target, &config).unwrap();
        assert!(in_target);
        assert_eq!(scorer.predict(&attacked).unwrap(), target);
        let after = scorer.score(&attacked, target, config.score).unwrap();
        assert!(after < before, "score {before} -> {after}");
        for (a, b) in attacked.iter().zip(&x) {
            assert!((a - b).abs() <= 0.05 + 1e-6 && (0.0..=1.0).contains(a));
        }
        // Settings out of range are refused.
        for bad in [
            EvasionConfig { eps: 0.0, ..config },
            EvasionConfig { steps: 0, ..config },
            EvasionConfig {
                keep: f64::NAN,
                ..config
            },
            EvasionConfig { fpr: 1.0, ..config },
        ] {
            assert!(bad.validate().is_err(), "{bad:?}");
        }
    }
}
